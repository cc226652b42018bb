"""Load on ``jfdeploy serve``: N clients at once, each streaming a generated clip at a fixed rate.

    python benchmarks/serve_load.py --tiny --clients 1,2,4,8 --frames 30 --fps 10 --height 48 --width 64
    python benchmarks/serve_load.py --checkpoint ckpt.pth --size 480 --height 480 --width 854 --device cuda
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --api-key KEY --clients 4

Without ``--url`` the script starts the server itself (``python -m jfdeploy.cli serve --port 0`` on 127.0.0.1,
stopped with SIGTERM at the end): ``--tiny`` serves ModelConfig.tiny(topk=5) with random weights (a CPU check),
``--checkpoint`` a real model, neither the published architecture with random weights (speed does not depend on
the weights). For each client count N (one after the other, on the same server), N sessions are opened and each
sends ``--frames`` frames of its own generated clip (the first with its mask) at ``--fps`` frames/s, over the
WebSocket stream (default: a sender and a receiver thread, at most ``--window`` frames in flight) or over HTTP
(``--transport http``: one POST per frame, so a frame is sent when both its time has come and the previous
answer is back).

Reported per N: per-session frames/s (frames over the time from its first send to its last answer; the mean and
the slowest session), the latency of each frame from send to answer (p50 / p99 over all sessions, the first
``--warmup`` frames of each left out), the mean batch size of the server's scheduler (from the /metrics histogram
``jfdeploy_batch_size`` over the run), the server's memory (``jfdeploy_memory_bytes``: process RSS, and CUDA
allocated where the model runs on CUDA) before the sessions open, after the run with them still open, and after
they are closed, and the frames that failed. Prints a Markdown table; ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from jfdeploy.client import Session, encode_image, encode_mask
from jfdeploy.io import make_clip

LISTENING = re.compile(r"listening on (http://\S+?:\d+)")


def scrape(url: str, headers: dict[str, str]) -> dict[str, float]:
    """The samples of /metrics, ``name{labels}`` -> value."""
    text = requests.get(f"{url}/metrics", headers=headers, timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def memory_mb(samples: dict[str, float]) -> dict[str, float]:
    out = {}
    for kind in ("process_rss", "cuda_allocated", "cuda_reserved"):
        value = samples.get(f'jfdeploy_memory_bytes{{kind="{kind}"}}')
        if value is not None:
            out[kind] = value / 2**20
    if "process_rss" not in out and "process_resident_memory_bytes" in samples:
        out["process_rss"] = samples["process_resident_memory_bytes"] / 2**20
    return out


class Server:
    """``jfdeploy serve`` started by this script (stderr kept for the log; the URL parsed from it)."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        model: list[str]
        if args.tiny:
            import jfdeploy
            from jfdeploy.model import ModelConfig
            from jfdeploy.model.checkpoint import random_model

            checkpoint = workdir / "tiny.pth"
            jfdeploy.save_checkpoint(random_model(ModelConfig.tiny(topk=5)), checkpoint)
            model = ["--checkpoint", str(checkpoint), "--topk", "5"]
        elif args.checkpoint:
            model = ["--checkpoint", args.checkpoint]
        else:
            model = []
        command = [sys.executable, "-m", "jfdeploy.cli", "serve", "--host", "127.0.0.1", "--port", "0", *model,
                   "--size", str(args.size), "--max-batch", str(args.max_batch), "--max-wait-ms",
                   str(args.max_wait_ms), "--max-sessions", str(max(16, max(args.clients)))]  # fmt: skip
        if args.device:
            command += ["--device", args.device]
        if args.threads:
            command += ["--threads", str(args.threads)]
        command += args.server_arg
        self.command = command
        self.lines: list[str] = []
        self.url = ""
        listening = threading.Event()
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)  # fmt: skip

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.lines.append(line)
                match = LISTENING.search(line)
                if match and not self.url:
                    self.url = match.group(1)
                    listening.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + args.start_timeout
        while not listening.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("the server did not start:\n" + "".join(self.lines))

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the drain: exits 0 when idle
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.reader.join(5)
        return self.process.returncode


def stream_client(session: Session, frames: np.ndarray, mask: np.ndarray, args: argparse.Namespace,
                  start: float) -> dict:  # fmt: skip
    """Send the frames over the WebSocket at ``args.fps`` (at most ``args.window`` in flight), timing each answer."""
    from websockets.sync.client import connect

    url = "ws" + session.url[len("http") :] + f"/sessions/{session.id}/stream"
    headers = {"Authorization": f"Bearer {session.api_key}"} if session.api_key else None
    sent: list[float] = []
    answered: list[float] = []
    errors = 0
    window = threading.Semaphore(args.window)
    with connect(url, additional_headers=headers, open_timeout=60, max_size=None) as ws:

        def receive() -> None:
            nonlocal errors
            for _ in range(len(frames)):
                reply = ws.recv(timeout=300)
                answered.append(time.perf_counter())
                errors += isinstance(reply, str)
                window.release()

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        for index, rgb in enumerate(frames):
            body = encode_image(rgb)
            delay = start + index / args.fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            window.acquire()
            if index == 0:
                ws.send(json.dumps({"mask": base64.b64encode(encode_mask(mask)).decode("ascii")}))
            sent.append(time.perf_counter())
            ws.send(body)
        receiver.join(600)
    return {"sent": sent, "answered": answered, "errors": errors}


def http_client(session: Session, frames: np.ndarray, mask: np.ndarray, args: argparse.Namespace,
                start: float) -> dict:  # fmt: skip
    sent: list[float] = []
    answered: list[float] = []
    errors = 0
    for index, rgb in enumerate(frames):
        delay = start + index / args.fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent.append(time.perf_counter())
        try:
            session.step(rgb, mask=mask if index == 0 else None)
        except Exception:
            errors += 1
        answered.append(time.perf_counter())
    return {"sent": sent, "answered": answered, "errors": errors}


def run_load(url: str, clients: int, args: argparse.Namespace, headers: dict[str, str]) -> dict:
    clips = [make_clip(num_frames=args.frames, height=args.height, width=args.width, num_objects=args.objects,
                       seed=100 + i) for i in range(clients)]  # fmt: skip
    before = scrape(url, headers)
    sessions = [Session.create(url, args.api_key, **json.loads(args.options)) for _ in range(clients)]
    results: list[dict] = [{} for _ in range(clients)]
    client = stream_client if args.transport == "stream" else http_client
    start = time.perf_counter() + 0.2

    def work(i: int) -> None:
        try:
            results[i] = client(sessions[i], clips[i][0], clips[i][1][0], args, start)
        except Exception as error:  # reported in the row
            results[i] = {"sent": [], "answered": [], "errors": args.frames, "failure": repr(error)}

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = scrape(url, headers)
    for session in sessions:
        session.close()
    time.sleep(1.0)  # the predictors are dropped when their last frame is done
    closed = scrape(url, headers)

    rates, latencies = [], []
    for result in results:
        sent, answered = result["sent"], result["answered"]
        if answered:
            rates.append((len(answered) - 1) / max(answered[-1] - answered[0], 1e-9))
            latencies += [a - s for s, a in list(zip(sent, answered, strict=False))[args.warmup :]]
    count = after.get("jfdeploy_batch_size_count", 0) - before.get("jfdeploy_batch_size_count", 0)
    total = after.get("jfdeploy_batch_size_sum", 0) - before.get("jfdeploy_batch_size_sum", 0)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "clients": clients,
        "transport": args.transport,
        "frames_per_session": args.frames,
        "target_fps": args.fps,
        "session_fps_mean": float(np.mean(rates)) if rates else 0.0,
        "session_fps_min": float(np.min(rates)) if rates else 0.0,
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
        "mean_batch": total / count if count else 0.0,
        "batches": int(count),
        "memory_mb_before": memory_mb(before),
        "memory_mb_after": memory_mb(after),
        "memory_mb_closed": memory_mb(closed),
        "errors": int(sum(r["errors"] for r in results)),
        "failures": [r["failure"] for r in results if "failure" in r],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one)")
    parser.add_argument("--api-key", default=os.environ.get("JFDEPLOY_API_KEY"), help="the server's key, if any")
    parser.add_argument("--clients", default="1,2,4,8", help="client counts, one run each (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=30, help="frames per session (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=10.0, help="frames/s each client sends (default: %(default)s)")
    parser.add_argument("--transport", choices=["stream", "http"], default="stream")
    parser.add_argument("--window", type=int, default=4, help="stream: frames in flight at most (<= --max-queue)")
    parser.add_argument("--warmup", type=int, default=1, help="frames per session left out of the latencies")
    parser.add_argument("--height", type=int, default=48, help="clip height (default: %(default)s)")
    parser.add_argument("--width", type=int, default=64, help="clip width (default: %(default)s)")
    parser.add_argument("--objects", type=int, default=2, help="objects per clip (default: %(default)s)")
    parser.add_argument("--options", default="{}", help='session options as JSON, e.g. \'{"preset": "ytvos"}\'')
    model = parser.add_argument_group("the server this script starts (without --url)")
    model.add_argument("--tiny", action="store_true", help="ModelConfig.tiny(topk=5), random weights")
    model.add_argument("--checkpoint", default=None, help="a checkpoint (default: published shapes, random)")
    model.add_argument("--size", type=int, default=0, help="shorter side fed to the model, 0 = the frame's own")
    model.add_argument("--device", default=None, help="cpu, cuda (default: the server's)")
    model.add_argument("--threads", type=int, default=None, help="the server's --threads")
    model.add_argument("--max-batch", type=int, default=8)
    model.add_argument("--max-wait-ms", type=float, default=5.0)
    model.add_argument("--server-arg", action="append", default=[], help="one more argument of jfdeploy serve")
    model.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the server")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    args.clients = [int(n) for n in str(args.clients).split(",") if n.strip()]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    server = None
    with tempfile.TemporaryDirectory(prefix="jf-serve-load-") as workdir:
        if args.url is None:
            server = Server(args, Path(workdir))
            url = server.url
            print(f"started: {' '.join(server.command)}", flush=True)
            print("".join(server.lines).strip(), flush=True)
        else:
            url = args.url.rstrip("/")
        rows = []
        try:
            for clients in args.clients:
                row = run_load(url, clients, args, headers)
                rows.append(row)
                print(f"{clients} client(s): {row['session_fps_mean']:.2f} frames/s per session, p50 "
                      f"{row['latency_p50_ms']:.1f} ms, p99 {row['latency_p99_ms']:.1f} ms", flush=True)  # fmt: skip
        finally:
            exit_code = server.stop() if server is not None else None
    if exit_code is not None:
        print(f"server stopped (SIGTERM), exit {exit_code}")

    print(f"\n{args.transport}, {args.height}x{args.width} frames (--size {args.size}), {args.frames} frames per "
          f"session at {args.fps:g} frames/s, {args.objects} objects; {os.cpu_count()} CPUs\n")  # fmt: skip
    print("| clients | frames/s per session (mean / min) | p50 ms | p99 ms | mean batch | RSS MB before / after / "
          "closed | errors |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        rss = [row[k].get("process_rss", float("nan")) for k in ("memory_mb_before", "memory_mb_after",
                                                                    "memory_mb_closed")]  # fmt: skip
        print(f"| {row['clients']} | {row['session_fps_mean']:.2f} / {row['session_fps_min']:.2f} | "
              f"{row['latency_p50_ms']:.1f} | {row['latency_p99_ms']:.1f} | {row['mean_batch']:.2f} | "
              f"{rss[0]:.0f} / {rss[1]:.0f} / {rss[2]:.0f} | {row['errors']} |")  # fmt: skip
        cuda = [row[k].get("cuda_allocated") for k in ("memory_mb_before", "memory_mb_after", "memory_mb_closed")]
        if cuda[0] is not None:
            print(f"|   (CUDA allocated MB) | | | | | {' / '.join(f'{v:.0f}' for v in cuda)} | |")
    if args.json:
        payload = {"args": {k: v for k, v in vars(args).items() if k != "api_key"}, "rows": rows,
                   "host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(row["errors"] or row["failures"] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
