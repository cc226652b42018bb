"""The ASGI app (Starlette): routes, the gate every request passes (auth, body limit, drain), the WebSocket stream.

    app = create_app(ServeConfig(policy, model))      # then: uvicorn (jfdeploy.serve.server.serve)

Routes (``jfdeploy.serve.openapi`` documents them, GET /openapi.json serves that):

    GET    /                            the page (open)
    GET    /healthz                     {"status": "ok"}; 503 {"status": "draining"} after SIGTERM (open)
    GET    /openapi.json                the API's schema (open)
    GET    /metrics                     Prometheus text
    POST   /sessions                    JSON options -> 201 {"session": id, "options": {...}}
    DELETE /sessions/{id}               -> {"session": id, "frames": n}
    POST   /sessions/{id}/frames        an image (raw body, or multipart: image, mask, probabilities)
                                        -> the label map as a palette PNG, or with ?probabilities=1 an npz
    WS     /sessions/{id}/stream        binary frames in, masks out in order (protocol in ``stream``)

Every error is one line of JSON, ``{"error": "..."}``, with its status (``jfdeploy.serve.errors``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from jfdeploy.errors import InputError, JfDeployError
from jfdeploy.predictor import VideoPredictor
from jfdeploy.serve import codec
from jfdeploy.serve.errors import (
    BodyTooLargeError,
    DrainingError,
    QueueFullError,
    ServeError,
    SessionNotFoundError,
    UnauthorizedError,
    one_line,
    status_of,
)
from jfdeploy.serve.metrics import ServeMetrics
from jfdeploy.serve.openapi import openapi_schema
from jfdeploy.serve.scheduler import Scheduler, WorkItem
from jfdeploy.serve.sessions import Session, SessionPolicy, SessionTable, session_options

LOG = logging.getLogger("jfdeploy.serve")
OPEN_PATHS = ("/", "/healthz", "/openapi.json")  # no API key needed: nothing in them is private
TRUE = ("1", "true", "yes", "on")
NPZ_TYPE = "application/x-npz"


@dataclass(frozen=True)
class ServeConfig:
    """The server's model and limits (the options of ``jfdeploy serve``).

    model: the JointFormer every session shares (None with an engine directory: ``policy.defaults.engines``).
    api_key: required as ``Authorization: Bearer KEY`` on every path but OPEN_PATHS (None: no key).
    max_queue: frames one session may have waiting or running; max_body_mb: request bodies above -> 413.
    max_wait_ms, max_batch: the scheduler's window. drain_timeout: seconds SIGTERM waits for requests.
    """

    policy: SessionPolicy
    model: Any = None
    api_key: str | None = None
    max_sessions: int = 16
    session_ttl: float = 300.0
    max_queue: int = 8
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_body_mb: float = 16.0
    drain_timeout: float = 30.0

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


class ServeState:
    """What the routes share: the config, the session table, the scheduler, the metrics, the drain flag."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.table = SessionTable(config.max_sessions, config.session_ttl)
        self.scheduler = Scheduler(max_batch=config.max_batch, max_wait=config.max_wait_ms / 1000,
                                   active_sessions=lambda: len(self.table))  # fmt: skip
        self.metrics = ServeMetrics(max_batch=config.max_batch, sessions=lambda: len(self.table),
                                    queue_depth=self.scheduler.depth)  # fmt: skip
        self.scheduler.on_batch = self.metrics.on_batch
        self.runtimes: dict[str, Any] = {}  # variant -> the stage runtime its sessions share
        self.draining = False
        self.inflight = 0  # HTTP requests being answered + stream frames not yet sent back

    def new_predictor(self, options: Any) -> VideoPredictor:
        """A session's predictor (on the worker thread). Sessions of one variant share its stage runtime (the
        weights or engine sessions, loaded once), so that their frames can go through the model together."""
        runtime = self.runtimes.get(options.variant)
        predictor = VideoPredictor(self.config.model, options=options, runtime=runtime)
        self.runtimes.setdefault(options.variant, predictor.runtime)
        return predictor

    def idle(self) -> bool:
        return self.inflight == 0 and self.scheduler.depth() == 0

    def authorized(self, header: str | None, token: str | None = None) -> bool:
        key = self.config.api_key
        if key is None:
            return True
        given = header[7:] if header is not None and header[:7].lower() == "bearer " else token
        return given is not None and hmac.compare_digest(given.encode(), key.encode())

    def submit(self, session: Session, rgb: Any, mask: Any, probabilities: bool) -> tuple[int, asyncio.Future]:
        """Queue one decoded frame of ``session``: (its index in the session, a future of its Prediction)."""
        if self.draining:
            raise DrainingError("the server is shutting down (SIGTERM): it takes no new frames")
        if session.closed:  # deleted or evicted since the stream (or this request) found it: its predictor is gone
            self.table.get(session.id)  # raises SessionNotFoundError: "evicted after ... idle" or "no session ..."
        if session.pending >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(f"session {session.id} has {session.pending} frames queued (--max-queue): retry later")
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        if session.frame_size is None:
            session.frame_size = size
        elif size != session.frame_size:
            raise InputError(f"the frame is {size[0]}x{size[1]}, this session's frames are "
                             f"{session.frame_size[0]}x{session.frame_size[1]}")  # fmt: skip
        if mask is not None and mask.shape != rgb.shape[:2]:
            raise InputError(f"the mask is {mask.shape[0]}x{mask.shape[1]}, the frame {size[0]}x{size[1]}")
        index = session.frames
        session.frames += 1
        session.pending += 1
        future = asyncio.wrap_future(self.scheduler.submit(WorkItem(session, rgb, mask, probabilities)))

        def done(finished: asyncio.Future) -> None:
            session.pending -= 1
            session.last_used = self.table.clock()
            session.release_if_done()
            failed = finished.cancelled() or finished.exception() is not None
            self.metrics.frames.labels("error" if failed else "ok").inc()

        future.add_done_callback(done)
        return index, future


def error_response(error: BaseException) -> JSONResponse:
    """``{"error": "one line"}`` with the error's status (and Retry-After where retrying may succeed)."""
    status = status_of(error)
    message = one_line(error) if status < 500 else f"internal error: {one_line(error)}"
    if status >= 500 and not isinstance(error, ServeError):
        LOG.error("request failed", exc_info=error)
    retry_after = getattr(error, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _send_error(scope: Scope, send: Send, error: ServeError, headers: dict[str, str] | None = None) -> None:
    response = error_response(error)
    response.headers.update(headers or {})
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class Gate:
    """ASGI middleware in front of every route: the API key, the body limit, the drain, the in-flight count.

    A body announced larger than --max-body-mb is answered 413 after reading (and dropping) at most four
    times the limit, so that clients still writing it get the answer; a body that grows past the limit
    without announcing it fails with 413 where the route reads it.
    """

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # lifespan; websockets check the key and the drain themselves
            return
        state = self.state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope["path"]
        if path not in OPEN_PATHS and not state.authorized(headers.get("authorization")):
            state.metrics.rejected.labels("unauthorized").inc()
            error = UnauthorizedError("missing or wrong API key (Authorization: Bearer KEY)")
            await _send_error(scope, send, error, {"WWW-Authenticate": "Bearer"})
            return
        if state.draining and path != "/healthz":
            await _send_error(scope, send, DrainingError("the server is shutting down (SIGTERM): retry on another one"))
            return
        limit = state.config.max_body_bytes
        try:
            announced = int(headers.get("content-length", "0"))
        except ValueError:
            announced = 0
        if announced > limit:
            state.metrics.rejected.labels("too_large").inc()
            await self._drop_body(receive, 4 * limit)
            message = f"the request body is {announced} bytes, more than the limit of {limit} (--max-body-mb)"
            await _send_error(scope, send, BodyTooLargeError(message))
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                state.metrics.rejected.labels("too_large").inc()
                raise BodyTooLargeError(f"the request body is more than the limit of {limit} bytes (--max-body-mb)")
            return message

        state.inflight += 1
        try:
            await self.app(scope, limited, send)
        finally:
            state.inflight -= 1

    @staticmethod
    async def _drop_body(receive: Receive, most: int) -> None:
        dropped = 0
        while dropped <= most:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


# -------------------------------------------------------------------------------------------------- routes


def _state(request: Request | WebSocket) -> ServeState:
    return request.app.state.serve


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(resources.files("jfdeploy.serve").joinpath("index.html").read_text(encoding="utf-8"))


async def healthz(request: Request) -> JSONResponse:
    state = _state(request)
    if state.draining:
        return JSONResponse({"status": "draining"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ok", "sessions": len(state.table)})


async def metrics(request: Request) -> Response:
    state = _state(request)
    return Response(state.metrics.render(), media_type=state.metrics.content_type)


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(openapi_schema())


def _describe(options: Any) -> dict[str, Any]:
    side = options.sizes[0]
    return {"variant": options.variant, "size": 0 if side is None else side, "mem_every": options.mem_every,
            "max_memory_frames": options.max_memory_frames, "max_objects": options.max_objects}  # fmt: skip


async def create_session(request: Request) -> JSONResponse:
    state = _state(request)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise InputError("the session options must be a JSON object") from None
    options = session_options(body, state.config.policy)
    try:
        state.table.reserve()
    except ServeError:
        state.metrics.rejected.labels("sessions_full").inc()
        raise
    try:
        predictor = await asyncio.wrap_future(state.scheduler.call(lambda: state.new_predictor(options)))
        session = state.table.add(options, predictor)
    finally:
        state.table.unreserve()
    return JSONResponse({"session": session.id, "options": _describe(options)}, status_code=201)


async def delete_session(request: Request) -> JSONResponse:
    session = _state(request).table.remove(request.path_params["session_id"])
    return JSONResponse({"session": session.id, "frames": session.frames})


async def _frame_request(request: Request) -> tuple[bytes, bytes | None, bool]:
    """(image bytes, mask bytes or None, probabilities wanted) of POST /sessions/{id}/frames."""
    probabilities = request.query_params.get("probabilities", "").lower() in TRUE
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return await request.body(), None, probabilities
    limit = _state(request).config.max_body_bytes
    try:
        form = await request.form(max_files=2, max_fields=4, max_part_size=limit)
    except HTTPException as error:
        raise InputError(f"the multipart body cannot be read: {error.detail}") from None
    parts: dict[str, bytes | None] = {}
    for name in ("image", "mask"):
        part = form.get(name)
        if part is None or isinstance(part, str):
            parts[name] = None if not part else part.encode("latin-1")
        else:
            parts[name] = await part.read()
    if parts["image"] is None:
        raise InputError("the multipart body needs a field 'image' (PNG or JPEG bytes)")
    flag = form.get("probabilities")
    probabilities = probabilities or (isinstance(flag, str) and flag.lower() in TRUE)
    return parts["image"], parts["mask"], probabilities


def _decode(image: bytes, mask: bytes | None) -> tuple[Any, Any]:
    rgb = codec.decode_frame(image)
    return rgb, None if mask is None else codec.decode_label_map(mask)


async def post_frame(request: Request) -> Response:
    state = _state(request)
    session = state.table.get(request.path_params["session_id"])
    image, mask, probabilities = await _frame_request(request)
    rgb, label_map = await run_in_threadpool(_decode, image, mask)
    index, future = state.submit(session, rgb, label_map, probabilities)
    prediction = await future
    headers = {"X-Frame-Index": str(index), "X-Object-Ids": ",".join(map(str, prediction.object_ids))}
    if probabilities:
        body = await run_in_threadpool(codec.encode_probabilities, prediction.labels, prediction.object_ids,
                                       prediction.probabilities)  # fmt: skip
        return Response(body, media_type=NPZ_TYPE, headers=headers)
    return Response(await run_in_threadpool(codec.encode_label_png, prediction.labels), media_type="image/png",
                    headers=headers)  # fmt: skip


# ----------------------------------------------------------------------------------------------- websocket

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404


def _mask_message(text: str) -> bytes:
    """The mask PNG of a text message ``{"mask": "<base64 PNG>"}``."""
    try:
        message = json.loads(text)
        encoded = message["mask"]
        return base64.b64decode(encoded, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InputError('a text message must be {"mask": "<base64 PNG>"}') from None


async def stream(websocket: WebSocket) -> None:
    """WS /sessions/{id}/stream: binary messages are frames (PNG / JPEG bytes); a text message
    ``{"mask": "<base64 PNG>"}`` gives a label map for the next frame. Each frame gets one reply, in order:
    a binary palette PNG (its label map), or a text ``{"error": "...", "status": 4xx, "frame": i}`` (that frame
    only; the stream goes on). Closes: 4401 wrong key, 4404 no such session, 1013 the server is draining,
    1001 drained after SIGTERM (frames already sent are answered first). The server reads at most
    --max-queue frames ahead of its replies.
    """
    state = _state(websocket)
    await websocket.accept()
    if not state.authorized(websocket.headers.get("authorization"), websocket.query_params.get("access_token")):
        await websocket.close(CLOSE_UNAUTHORIZED, "missing or wrong API key")
        return
    try:
        session = state.table.get(websocket.path_params["session_id"])
    except SessionNotFoundError as error:
        await websocket.close(CLOSE_NOT_FOUND, one_line(error)[:120])
        return
    if state.draining:
        await websocket.close(CLOSE_TRY_AGAIN, "the server is shutting down")
        return
    replies: asyncio.Queue[tuple[int, asyncio.Future | BaseException] | None] = asyncio.Queue()
    window = asyncio.Semaphore(state.config.max_queue)
    sender = asyncio.create_task(_send_replies(websocket, state, replies, window))
    mask: bytes | BaseException | None = None
    code = 1000
    try:
        async for kind, data in _messages(websocket):
            if kind == "text":
                try:
                    mask = _mask_message(data)
                except InputError as error:
                    mask = error  # fails the frame it was meant for
                continue
            if state.draining:
                code = CLOSE_GOING_AWAY
                break
            await window.acquire()
            state.inflight += 1
            given, mask = mask, None
            try:
                if isinstance(given, BaseException):
                    raise given
                rgb, label_map = await run_in_threadpool(_decode, data, given)
                reply: tuple[int, asyncio.Future | BaseException] = state.submit(session, rgb, label_map, False)
            except JfDeployError as error:
                reply = (session.frames, error)
            await replies.put(reply)
    finally:
        await replies.put(None)
        with contextlib.suppress(Exception):
            await sender
    with contextlib.suppress(Exception):
        await websocket.close(code)


async def _messages(websocket: WebSocket) -> AsyncIterator[tuple[str, Any]]:
    while True:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            yield "bytes", message["bytes"]
        elif message.get("text") is not None:
            yield "text", message["text"]


async def _send_replies(websocket: WebSocket, state: ServeState, replies: asyncio.Queue,
                        window: asyncio.Semaphore) -> None:  # fmt: skip
    """Send each frame's reply in the order the frames came."""
    while (reply := await replies.get()) is not None:
        index, outcome = reply
        payload: bytes | str
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            prediction = await outcome
            payload = await run_in_threadpool(codec.encode_label_png, prediction.labels)
        except Exception as error:
            if status_of(error) >= 500:
                LOG.error("stream frame failed", exc_info=error)
            payload = json.dumps({"error": one_line(error), "status": status_of(error), "frame": index})
        try:
            if isinstance(payload, bytes):
                await websocket.send_bytes(payload)
            else:
                await websocket.send_text(payload)
        except Exception:  # the client went away: the remaining frames still finish, unsent
            pass
        finally:
            state.inflight -= 1
            window.release()


# ------------------------------------------------------------------------------------------------- the app


async def _handle_error(request: Request, error: Exception) -> Response:
    if isinstance(error, HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)
    return error_response(error)


def create_app(config: ServeConfig) -> Starlette:
    """The ASGI app of ``config``; its lifespan starts the scheduler's worker and the TTL sweeper."""
    state = ServeState(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.scheduler.start()
        sweeper = asyncio.create_task(_sweep(state))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(state.scheduler.stop)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/sessions", create_session, methods=["POST"]),
        Route("/sessions/{session_id}", delete_session, methods=["DELETE"]),
        Route("/sessions/{session_id}/frames", post_frame, methods=["POST"]),
        WebSocketRoute("/sessions/{session_id}/stream", stream),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _handle_error, JfDeployError: _handle_error,
                                        Exception: _handle_error})  # fmt: skip
    app.state.serve = state
    app.add_middleware(Gate, state=state)
    return app


async def _sweep(state: ServeState) -> None:
    """Evict idle sessions every quarter TTL (at most every second)."""
    period = min(1.0, state.config.session_ttl / 4)
    while True:
        await asyncio.sleep(period)
        evicted = state.table.evict_idle()
        if evicted:
            state.metrics.evicted.inc(len(evicted))
            LOG.info("evicted %d idle session(s)", len(evicted))
