"""``jfdeploy serve --ray``: the same app scaled out on Ray Serve, one replica per GPU (or per --replica-cpus).

    app = build_app(config, spec, replicas=2, replica_cpus=1.0)    # a Ray Serve application
    serve.run(app, route_prefix="/")                               # what ``run`` does, plus the drain

Layout: ``replicas`` deployments ``jfdeploy-replica-0`` .. ``-N-1``, each of ``num_replicas=1``, and one
ingress deployment (``jfdeploy-ingress``) behind Ray Serve's HTTP proxy.

- Each replica runs the single-process app (``jfdeploy.serve.app.create_app``: its routes, Gate, session
  table, scheduler, codec and errors) in-process: the ingress hands it a request (method, path, query,
  headers, body) through a Serve deployment handle, and the replica answers it by calling the Starlette app
  as ASGI, so every answer (PNG, npz, one-line JSON error with its status) is the single-process server's.
- The ingress holds the session -> (replica slot, replica id) table. POST /sessions goes to the slot with
  the fewest sessions; every later request of a session goes to the handle of its slot.

Why one deployment per replica rather than model multiplexing (``serve.multiplexed``): a session is state
that cannot be rebuilt (the memory of the frames seen so far), while multiplexing is made for models that
any replica can load again: its per-replica LRU evicts ids silently, a request whose id no live replica
holds is sent to any replica (which would have to start an empty session), and which replica holds an id
reaches the routers asynchronously, so a frame sent right after POST /sessions may land elsewhere. A
deployment of one replica per slot gives a fixed address per session, and Ray Serve still does the rest:
placing the replicas on the cluster's GPUs / CPUs, restarting a dead one, the HTTP proxy.

A replica's death: the ingress notices it as a request that fails with Ray's actor errors, or as an answer
from a new replica id in that slot (Serve restarted the deployment). Every session of the dead replica is
then lost: its requests are answered 410 ``{"error": "... the session must restart"}``; the other replicas'
sessions go on, and new sessions go to any slot (the restarted one included).

Limits of this layout: --max-sessions holds per replica; /metrics merges the replicas' metrics with a
``replica`` label; the WebSocket stream is relayed frame by frame through the ingress (one frame in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import secrets
import signal
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jfdeploy.errors import InputError
from jfdeploy.serve.errors import ServeError, ServerFullError, SessionNotFoundError

LOG = logging.getLogger("jfdeploy.serve")
RAY_SERVE_HINT = "pip install 'jfdeploy[ray-serve]'"
INGRESS_NAME = "jfdeploy-ingress"
REPLICA_PREFIX = "jfdeploy-replica-"
APP_NAME = "jfdeploy"
LOST_REMEMBERED = 4096  # ids of lost sessions kept to answer 410 rather than 404
FORWARD_TIMEOUT = 120.0  # seconds a request waits for its replica (a restarting one included)
HOP_HEADERS = ("content-length", "transfer-encoding", "connection")


def import_serve() -> Any:
    """``ray.serve``; InputError naming the extra where Ray Serve is not installed."""
    try:
        serve = importlib.import_module("ray.serve")
    except ImportError:
        raise InputError(f"--ray needs Ray Serve: {RAY_SERVE_HINT}") from None
    return serve


@dataclass(frozen=True)
class ReplicaAnswer:
    """A replica's answer to one forwarded request; ``status`` None: the replica is not the one expected."""

    replica: str  # the replica's unique id
    actor: str  # its Ray actor's name (namespace "serve")
    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


async def call_asgi(app: Any, method: str, path: str, query: str, headers: list[tuple[str, str]],
                    body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:  # fmt: skip
    """Answer one HTTP request with the ASGI ``app`` in this process: (status, headers, body)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": query.encode("latin-1"), "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the ingress keeps the connection
        raise AssertionError("unreachable")

    status, out_headers, chunks = 500, [], []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, out_headers
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, out_headers, b"".join(chunks)


class ReplicaServer:
    """The deployment of one replica: the model, and the single-process app answering forwarded requests."""

    def __init__(self, config: Any, spec: Any) -> None:
        from ray import serve

        from jfdeploy.batch import Worker
        from jfdeploy.serve.app import create_app

        worker = Worker(spec, "serve-replica")  # loads the model as run-many's workers do
        config = dataclasses.replace(config, model=worker.model, policy=_policy(config.policy, spec, worker.model))
        self.app = create_app(config)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        import ray

        self.actor = ray.get_runtime_context().get_actor_name() or ""
        self._lifespan: contextlib.AbstractAsyncContextManager | None = None
        self._started = asyncio.Lock()

    async def _start(self) -> None:
        async with self._started:
            if self._lifespan is None:  # the app's lifespan: its scheduler's worker thread and TTL sweeper
                lifespan = self.app.router.lifespan_context(self.app)
                await lifespan.__aenter__()
                self._lifespan = lifespan

    async def forward(self, expected: str | None, method: str, path: str, query: str,
                      headers: list[tuple[str, str]], body: bytes) -> ReplicaAnswer:  # fmt: skip
        if expected is not None and expected != self.replica:
            return ReplicaAnswer(self.replica, self.actor)  # a restarted replica: the session is not here
        await self._start()
        status, out_headers, out = await call_asgi(self.app, method, path, query, headers, body)
        return ReplicaAnswer(self.replica, self.actor, status, tuple(out_headers), out)

    def whoami(self) -> tuple[str, str]:
        return self.replica, self.actor

    async def __del__(self) -> None:
        if self._lifespan is not None:
            with contextlib.suppress(Exception):
                await self._lifespan.__aexit__(None, None, None)


def _policy(policy: Any, spec: Any, model: Any) -> Any:
    """The driver's SessionPolicy with the top-k of the model this replica loaded."""
    from jfdeploy.cli.serve import _model_topk

    return dataclasses.replace(policy, model_topk=_model_topk(argparse.Namespace(), spec.options, model))


@dataclass
class Placed:
    slot: int
    replica: str


class SessionLostError(ServeError):
    """The replica holding the session died: its state is gone, the client must open a new session (410)."""

    status = 410


class IngressServer:
    """The ingress deployment: the gate (key, body limit, drain), the session -> replica table, the relay."""

    def __init__(self, config: Any, *replicas: Any) -> None:
        from jfdeploy.serve.app import ServeState

        self.config = config
        self.replicas = list(replicas)
        self.state = ServeState(config)  # for the Gate (its scheduler never starts: no model here)
        self.sessions: dict[str, Placed] = {}
        self.lost: OrderedDict[str, str] = OrderedDict()
        self.slot_replica: dict[int, str] = {}  # the replica id last seen answering in each slot

    def __serve_build_asgi_app__(self) -> Any:
        return build_ingress_app(self)

    # ---- the table

    def _mark_lost(self, slot: int, replica: str | None, why: str) -> None:
        for session_id, placed in list(self.sessions.items()):
            if placed.slot == slot and (replica is None or placed.replica == replica):
                del self.sessions[session_id]
                self.lost[session_id] = why
        while len(self.lost) > LOST_REMEMBERED:
            self.lost.popitem(last=False)

    def _seen(self, slot: int, replica: str) -> None:
        old = self.slot_replica.get(slot)
        if old is not None and old != replica:
            self._mark_lost(slot, old, f"replica {slot} died and was restarted")
        self.slot_replica[slot] = replica

    def placed(self, session_id: str) -> Placed:
        placed = self.sessions.get(session_id)
        if placed is None:
            if session_id in self.lost:
                raise SessionLostError(f"session {session_id} is lost: {self.lost[session_id]}; the session "
                                       "must restart (POST /sessions, then its first frame with its mask)")  # fmt: skip
            raise SessionNotFoundError(f"no session {session_id} (never opened, or closed)")
        return placed

    def choose_slot(self) -> int:
        counts = [0] * len(self.replicas)
        for placed in self.sessions.values():
            counts[placed.slot] += 1
        return min(range(len(counts)), key=lambda slot: counts[slot])

    async def forward(self, slot: int, expected: str | None, method: str, path: str, query: str,
                      headers: list[tuple[str, str]], body: bytes) -> ReplicaAnswer:  # fmt: skip
        """The request answered by the replica of ``slot``; SessionLostError where it died."""
        import ray

        dead = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        try:
            response = self.replicas[slot].forward.remote(expected, method, path, query, headers, body)
            answer = await asyncio.wait_for(response, FORWARD_TIMEOUT)
        except dead as error:
            why = f"replica {slot} died ({type(error).__name__})"
            self._mark_lost(slot, expected or self.slot_replica.get(slot), why)
            raise SessionLostError(f"{why}; the session must restart") from None
        except asyncio.TimeoutError:
            raise ServerFullError(f"replica {slot} did not answer in {FORWARD_TIMEOUT:g} s", retry_after=5) from None
        self._seen(slot, answer.replica)
        if answer.status is None:
            self._mark_lost(slot, expected, f"replica {slot} died and was restarted")
            raise SessionLostError(f"replica {slot} died and was restarted; the session must restart")
        return answer

    async def drain(self) -> None:
        self.state.draining = True

    async def idle(self) -> bool:
        return self.state.inflight == 0

    async def table(self) -> dict[str, Any]:
        """{session id: [slot, replica id]} and {slot: replica id} (for tests and operators)."""
        sessions = {sid: [p.slot, p.replica] for sid, p in self.sessions.items()}
        return {"sessions": sessions, "replicas": dict(self.slot_replica)}


# ---------------------------------------------------------------------------------------------- the ingress


def _answer(answer: ReplicaAnswer, slot: int, body: bytes | None = None) -> Any:
    from starlette.responses import Response

    headers = {k: v for k, v in answer.headers if k.lower() not in HOP_HEADERS}
    headers["X-Replica"] = str(slot)
    return Response(answer.body if body is None else body, status_code=answer.status or 500, headers=headers)


def _request_parts(request: Any) -> tuple[str, str, str, list[tuple[str, str]]]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw
               if k.decode("latin-1").lower() not in HOP_HEADERS[1:]]  # fmt: skip
    return request.method, request.url.path, request.url.query, headers


def merge_metrics(parts: list[tuple[str, str]]) -> str:
    """Prometheus texts of several processes as one, each sample labelled ``replica="NAME"``."""
    families: OrderedDict[str, tuple[list[str], list[str]]] = OrderedDict()
    for name, text in parts:
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                words = line.split(" ", 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    family = words[2]
                    meta, _ = families.setdefault(family, ([], []))
                    if line not in meta:
                        meta.append(line)
                continue
            cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=len(line))
            label = f'replica="{name}"'
            if line[cut : cut + 1] == "{":
                rest = line[cut + 1 :]
                sample = f"{line[:cut]}{{{label}{'' if rest.startswith('}') else ','}{rest}"
            else:
                sample = f"{line[:cut]}{{{label}}}{line[cut:]}"
            families.setdefault(family, ([], []))[1].append(sample)
    return "".join(line + "\n" for meta, samples in families.values() for line in (*meta, *samples))


def _multipart(image: bytes, mask: bytes | None) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    body = b""
    for name, data in (("image", image), ("mask", mask)):
        if data is not None:
            body += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"  # fmt: skip
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def build_ingress_app(ingress: IngressServer) -> Any:
    """The ingress's Starlette app: the single-process server's routes, relayed to the sessions' replicas."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from jfdeploy.errors import JfDeployError
    from jfdeploy.serve import app as single
    from jfdeploy.serve.errors import one_line, status_of

    state = ingress.state

    async def healthz(request: Request) -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "sessions": len(ingress.sessions), "replicas": len(ingress.replicas)})

    async def metrics(request: Request) -> Response:
        method, path, query, headers = _request_parts(request)
        parts = [("ingress", state.metrics.render().decode())]
        for slot in range(len(ingress.replicas)):
            with contextlib.suppress(JfDeployError):
                answer = await ingress.forward(slot, None, method, path, query, headers, b"")
                parts.append((str(slot), answer.body.decode()))
        return Response(merge_metrics(parts), media_type=state.metrics.content_type)

    async def create_session(request: Request) -> Response:
        method, path, query, headers = _request_parts(request)
        slot = ingress.choose_slot()
        answer = await ingress.forward(slot, None, method, path, query, headers, await request.body())
        if answer.status != 201:
            return _answer(answer, slot)
        created = json.loads(answer.body)
        ingress.sessions[created["session"]] = Placed(slot, answer.replica)
        created["replica"] = slot
        return _answer(answer, slot, json.dumps(created).encode())

    async def relay(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        placed = ingress.placed(session_id)
        method, path, query, headers = _request_parts(request)
        answer = await ingress.forward(placed.slot, placed.replica, method, path, query, headers,
                                       await request.body())  # fmt: skip
        if answer.status == 404 or (method == "DELETE" and answer.status == 200):
            ingress.sessions.pop(session_id, None)  # closed, or evicted by the replica's --session-ttl
        return _answer(answer, placed.slot)

    async def stream(websocket: WebSocket) -> None:
        """The single-process stream's protocol, each frame relayed as a POST of its replica (in order)."""
        await websocket.accept()
        if not state.authorized(websocket.headers.get("authorization"), websocket.query_params.get("access_token")):
            await websocket.close(single.CLOSE_UNAUTHORIZED, "missing or wrong API key")
            return
        session_id = websocket.path_params["session_id"]
        try:
            placed = ingress.placed(session_id)
        except SessionLostError as error:
            await websocket.close(SessionLostError.status + 4000, one_line(error)[:120])
            return
        except SessionNotFoundError as error:
            await websocket.close(single.CLOSE_NOT_FOUND, one_line(error)[:120])
            return
        if state.draining:
            await websocket.close(single.CLOSE_TRY_AGAIN, "the server is shutting down")
            return
        headers = [(k, v) for k, v in websocket.headers.items() if k.lower() in ("authorization",)]
        path = f"/sessions/{session_id}/frames"
        mask: bytes | BaseException | None = None
        code, reason, index = 1000, "", 0
        async for kind, data in single._messages(websocket):
            if kind == "text":
                try:
                    mask = single._mask_message(data)
                except InputError as error:
                    mask = error
                continue
            if state.draining:
                code = single.CLOSE_GOING_AWAY
                break
            given, mask = mask, None
            state.inflight += 1
            try:
                if isinstance(given, BaseException):
                    raise given
                body, content_type = _multipart(data, given)
                answer = await ingress.forward(placed.slot, placed.replica, "POST", path, "",
                                               [*headers, ("content-type", content_type)], body)  # fmt: skip
                if answer.status == 200:
                    index = int(dict(answer.headers).get("x-frame-index", index)) + 1
                    await websocket.send_bytes(answer.body)
                    continue
                error_text = json.loads(answer.body).get("error", "")
                reply = {"error": error_text, "status": answer.status, "frame": index}
            except JfDeployError as error:
                reply = {"error": one_line(error), "status": status_of(error), "frame": index}
                if isinstance(error, SessionLostError):
                    code, reason = SessionLostError.status + 4000, one_line(error)[:120]
            finally:
                state.inflight -= 1
            with contextlib.suppress(Exception):
                await websocket.send_text(json.dumps(reply))
            if code != 1000:
                break
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)

    routes = [
        Route("/", single.page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", single.openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sessions", create_session, methods=["POST"]),
        Route("/sessions/{session_id}", relay, methods=["DELETE"]),
        Route("/sessions/{session_id}/frames", relay, methods=["POST"]),
        WebSocketRoute("/sessions/{session_id}/stream", stream),
    ]
    handler = single._handle_error
    app = Starlette(routes=routes, exception_handlers={HTTPException: handler, JfDeployError: handler,
                                                       Exception: handler})  # fmt: skip
    app.state.serve = state
    app.add_middleware(single.Gate, state=state)
    return app


# ------------------------------------------------------------------------------------------ the application


def build_app(config: Any, spec: Any, *, replicas: int, replica_cpus: float, replica_gpus: float = 0.0,
              ingress_cpus: float = 0.25) -> Any:  # fmt: skip
    """The Ray Serve application: ``replicas`` deployments of one ReplicaServer each, and the ingress.

    config: the ServeConfig of the command line, without a model (each replica loads ``spec``'s, and its
    policy gets that model's top-k). spec: a ``jfdeploy.batch.WorkerSpec``.
    """
    serve = import_serve()
    per_replica = config.max_sessions * (config.max_queue + 2) + 8  # requests a replica may hold at once
    bound = [
        serve.deployment(ReplicaServer, name=f"{REPLICA_PREFIX}{slot}", num_replicas=1,
                         max_ongoing_requests=per_replica,
                         ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus}).bind(config, spec)
        for slot in range(replicas)
    ]  # fmt: skip
    ingress = serve.deployment(serve.ingress()(IngressServer), name=INGRESS_NAME, num_replicas=1,
                               max_ongoing_requests=per_replica * replicas,
                               ray_actor_options={"num_cpus": ingress_cpus})  # fmt: skip
    return ingress.bind(config, *bound)


def deploy(app: Any, host: str, port: int) -> tuple[Any, str]:
    """Start Ray Serve's HTTP proxy on host:port and run ``app`` at /; (the ingress handle, its URL)."""
    serve = import_serve()
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    shown = f"[{host}]" if ":" in host else host
    return handle, f"http://{shown}:{port}"


def free_port(host: str) -> int:
    from jfdeploy.serve.server import bind

    sock = bind(host, 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def run(app: Any, *, address: str, host: str, port: int, drain_timeout: float) -> None:
    """``jfdeploy serve --ray``: Ray (started here, or the cluster at ``address``), the app, until SIGTERM /
    SIGINT drains it (new requests 503, those in flight answered), then Serve and Ray shut down."""
    import ray

    from jfdeploy.batch import _init_keeping_signal_handlers
    from jfdeploy.serve.server import bind

    bind(host, port).close()  # a busy port fails at once, before Ray starts
    owns_ray = not ray.is_initialized()
    if owns_ray:
        _init_keeping_signal_handlers(ray, None if address == "local" else address)
    serve = import_serve()
    signals: list[int] = []
    kept = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        handle, url = deploy(app, host, port if port else free_port(host))
        print(f"jfdeploy serve: listening on {url} (page: {url}/), Ray Serve app {APP_NAME!r}", file=sys.stderr,
              flush=True)  # fmt: skip
        for signum in kept:
            signal.signal(signum, lambda number, frame: signals.append(number))
        while not signals:
            time.sleep(0.2)
        handle.drain.remote().result()
        deadline = time.monotonic() + drain_timeout
        while len(signals) == 1 and time.monotonic() < deadline and not handle.idle.remote().result():
            time.sleep(0.2)
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)
        with contextlib.suppress(Exception):
            serve.shutdown()
        if owns_ray:
            ray.shutdown()


def serve_from_args(args: Any, options: Any, device: Any, api_key: str | None) -> None:
    """``jfdeploy serve --ray``: the command line's server as a Ray Serve application (its options parsed)."""
    from jfdeploy.batch import WorkerSpec
    from jfdeploy.cli.common import announce, model_kwargs, precision_note, warn_random_weights
    from jfdeploy.serve.app import ServeConfig
    from jfdeploy.serve.sessions import SessionPolicy

    import_serve()
    engines = options.engines is not None
    if not engines:
        warn_random_weights(args)
    threads = args.threads if args.threads is not None else max(1, int(args.replica_cpus))
    spec = WorkerSpec(checkpoint=None if engines else args.checkpoint,
                      model_kwargs={} if engines else model_kwargs(args), options=options, device=str(device),
                      threads=threads)  # fmt: skip
    policy = SessionPolicy(defaults=options, model_topk=None, device_type=device.type, max_objects=args.max_objects)
    config = ServeConfig(policy=policy, api_key=api_key, max_sessions=args.max_sessions, session_ttl=args.session_ttl,
                         max_queue=args.max_queue, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         max_body_mb=args.max_body_mb, drain_timeout=args.drain_timeout)  # fmt: skip
    app = build_app(config, spec, replicas=args.replicas or 1, replica_cpus=args.replica_cpus,
                    replica_gpus=1.0 if device.type == "cuda" else 0.0)  # fmt: skip
    announce(
        args, options.backend, device, f"{precision_note(options, device)}, {args.replicas or 1} Ray Serve replica(s)"
    )
    run(app, address=args.ray, host=args.host, port=args.port, drain_timeout=args.drain_timeout)
    print("jfdeploy serve: drained, stopped", file=sys.stderr)
