"""``jfdeploy serve``: the model behind HTTP and WebSockets for many clients at once (``jfdeploy.serve``)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from jfdeploy.cli.common import (
    announce,
    inference_arguments,
    int_at_least,
    load_model,
    model_arguments,
    positive_float,
    precision_note,
    run_options,
)
from jfdeploy.errors import InputError

API_KEY_ENV = "JFDEPLOY_API_KEY"


def add_serve_parser(sub) -> None:
    serve = sub.add_parser(
        "serve",
        help="serve the model over HTTP and WebSockets: many clients stream frames at once",
        description="Serve JointFormer to many clients at once (labelling tools, robots): each client opens a "
        "session (POST /sessions, one VideoPredictor each: its masks equal `jfdeploy run` on the same frames and "
        "options) and sends frames (POST /sessions/ID/frames, or the WebSocket /sessions/ID/stream); GET / is a "
        "page that streams a video file, GET /openapi.json the API, GET /metrics Prometheus metrics. The model "
        "(or engine directory) is loaded once; one worker thread runs it, taking frames of several sessions per "
        "batch. The inference options below are the defaults of a session, which may override them. SIGTERM "
        "drains: requests in flight complete, new ones get 503, then the server exits 0. Needs: pip install "
        "'jfdeploy[serve]'.",
    )
    serve.add_argument(
        "--engines",
        type=Path,
        default=None,
        help="engine directory from `jfdeploy export`, run with onnxruntime (or TensorRT if it holds plans): one "
        "runner per session; --checkpoint, --topk*, --precision and --attention do not apply",
    )
    net = serve.add_argument_group("server")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int_at_least(0), default=8000,
                     help="port (default 8000; 0 picks a free one, printed on stderr)")  # fmt: skip
    net.add_argument("--api-key", default=None, metavar="KEY",
                     help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} if set, else no key); "
                     "/, /healthz and /openapi.json stay open; the stream also takes ?access_token=KEY")  # fmt: skip
    net.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="warning",
                     help="uvicorn's log level (default warning)")  # fmt: skip
    net.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-sessions", type=int_at_least(1), default=16,
                        help="open sessions at most; more get 503 (default 16)")  # fmt: skip
    limits.add_argument("--session-ttl", type=positive_float, default=300.0, metavar="SECONDS",
                        help="a session idle this long is closed and its memory freed; its next frame gets 404 "
                        "(default 300)")  # fmt: skip
    limits.add_argument("--max-queue", type=int_at_least(1), default=8,
                        help="frames one session may have waiting or running; more get 429 with Retry-After, a "
                        "stream is read no further ahead (default 8)")  # fmt: skip
    limits.add_argument("--max-body-mb", type=positive_float, default=16.0,
                        help="request bodies above this many MiB get 413 (default 16)")  # fmt: skip
    limits.add_argument("--drain-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                        help="after SIGTERM, how long to wait for requests in flight (default 30)")  # fmt: skip
    batching = serve.add_argument_group("batching")
    batching.add_argument("--max-batch", type=int_at_least(1), default=None,
                          help="frames (of different sessions) per batch at most: their frames go through the "
                          "stages together (default 8 on CUDA; 1 on a CPU, where a batch of 4 measured 14%% slower "
                          "than 4 frames in turn: the CPU is busy either way)")  # fmt: skip
    batching.add_argument("--max-wait-ms", type=float, default=5.0,
                          help="how long a batch waits, from its oldest frame, for frames of other sessions; a "
                          "batch holding a frame of every open session starts at once (default 5)")  # fmt: skip
    batching.add_argument("--threads", type=int_at_least(1), default=None,
                          help="CPU threads of the model (torch.set_num_threads, or onnxruntime's intra-op threads; "
                          "default: the library's own)")  # fmt: skip
    scale = serve.add_argument_group("scale-out on Ray Serve (pip install 'jfdeploy[ray-serve]')")
    scale.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="serve on Ray Serve: --replicas replicas, each with its own model and sessions (a "
                       "session's frames all go to its replica; if that replica dies, its sessions get 410). "
                       "ADDRESS: a Ray cluster (ray.init(address)); none: a Ray instance started here")  # fmt: skip
    scale.add_argument("--replicas", type=int_at_least(1), default=None,
                       help="replicas with --ray (default 1); each takes one GPU with --device cuda")  # fmt: skip
    scale.add_argument("--replica-cpus", type=positive_float, default=1.0, metavar="CPUS",
                       help="Ray CPUs per replica (default 1; fractions allowed; default --threads)")  # fmt: skip
    model_arguments(serve)
    inference_arguments(serve, default_size=480)
    serve.set_defaults(handler=cmd_serve)


def _model_topk(args: argparse.Namespace, options, model) -> int | None:
    if model is not None:
        return model.config.topk if model.config.topk_block_indices else None
    from jfdeploy.manifest import load_manifest

    return load_manifest(options.engines, verify_files=False).get("limits", {}).get("topk")


def cmd_serve(args: argparse.Namespace) -> None:
    if args.max_wait_ms < 0:
        raise InputError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms:g}")
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise InputError(f"jfdeploy serve needs {error.name}: pip install 'jfdeploy[serve]'") from None
    from jfdeploy.serve.app import ServeConfig, create_app
    from jfdeploy.serve.server import bind, serve
    from jfdeploy.serve.sessions import SessionPolicy

    if args.ray is None and args.replicas is not None:
        raise InputError("--replicas needs --ray [ADDRESS] (one process serves without Ray)")
    options, device = run_options(args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if api_key is not None and not api_key.strip():
        raise InputError("--api-key must not be empty")
    if args.ray is not None:
        from jfdeploy.serve.ray_serve import serve_from_args

        return serve_from_args(args, options, device, api_key)
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails at once
    try:
        if args.threads is not None and options.engines is not None:
            options = dataclasses.replace(options, threads=args.threads)  # the onnxruntime sessions' threads
        elif args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        model = None if options.engines is not None else load_model(args, device)
        max_batch = args.max_batch if args.max_batch is not None else 8 if device.type == "cuda" else 1
        policy = SessionPolicy(defaults=options, model_topk=_model_topk(args, options, model),
                               device_type=device.type, max_objects=args.max_objects)  # fmt: skip
        config = ServeConfig(policy=policy, model=model, api_key=api_key, max_sessions=args.max_sessions,
                             session_ttl=args.session_ttl, max_queue=args.max_queue, max_batch=max_batch,
                             max_wait_ms=args.max_wait_ms, max_body_mb=args.max_body_mb,
                             drain_timeout=args.drain_timeout)  # fmt: skip
        app = create_app(config)
        announce(args, options.backend, device, precision_note(options, device))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"jfdeploy serve: listening on http://{shown}:{port} (page: http://{shown}:{port}/)", file=sys.stderr,
              flush=True)  # fmt: skip
        serve(app, sock, log_level=args.log_level, access_log=args.access_log)
    finally:
        sock.close()
    print("jfdeploy serve: drained, stopped", file=sys.stderr)
