"""The server's errors: each is an HTTP status and one line, sent as ``{"error": "..."}``.

Bad frames, masks and options raise ``jfdeploy.errors.InputError`` (400) as everywhere in jfdeploy;
the classes here add the statuses that only a server has.
"""

from __future__ import annotations

from jfdeploy.errors import JfDeployError


class ServeError(JfDeployError):
    """A request the server refuses: ``status`` is the HTTP status, ``retry_after`` seconds (or None)
    the ``Retry-After`` header of a refusal that may succeed later."""

    status = 400
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after


class UnauthorizedError(ServeError):
    status = 401


class SessionNotFoundError(ServeError):
    status = 404


class BodyTooLargeError(ServeError):
    status = 413


class QueueFullError(ServeError):
    """The session has --max-queue frames waiting or running."""

    status = 429
    retry_after = 1


class ServerFullError(ServeError):
    """--max-sessions sessions are open."""

    status = 503
    retry_after = 5


class DrainingError(ServeError):
    """The server got SIGTERM: it finishes what it has and takes nothing new."""

    status = 503
    retry_after = 5


def status_of(error: BaseException) -> int:
    """The HTTP status of an error raised while serving a request: 4xx for what a client can get wrong."""
    if isinstance(error, ServeError):
        return error.status
    if isinstance(error, JfDeployError):
        return 400
    return 500


def one_line(error: BaseException) -> str:
    """The error's message on one line (the body of ``{"error": ...}``)."""
    text = str(error) or type(error).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
