"""One error family for everything a user can get wrong; messages say what was expected and what came.

The command line turns every error it knows into one line on stderr and an exit status
(``exit_status``); anything else is a bug and keeps its traceback.

Exit statuses of ``jfdeploy``: 0 success; 1 a check or comparison found a difference (or some
items of a batch failed); 2 bad input or configuration; 128 + N interrupted by signal N
(130 SIGINT / Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import signal
import sys

EXIT_OK = 0
EXIT_DIFFERENCE = 1
EXIT_USAGE = 2
EXIT_SIGNAL_BASE = 128


class JfDeployError(Exception):
    """Base class of jfdeploy's user-facing errors; ``exit_code`` is the command's exit status."""

    exit_code = EXIT_USAGE


class CheckpointError(JfDeployError):
    """A checkpoint that cannot be read or does not match the model."""


class InputError(JfDeployError):
    """A frame, mask, video or option that the toolkit cannot use."""


class DifferenceError(JfDeployError):
    """A check or comparison ran and found a difference (or some items of a batch failed): exit status 1."""

    exit_code = EXIT_DIFFERENCE


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP, SIGINT) raised as an exception, so that every ``finally``
    and context manager runs; a KeyboardInterrupt, so that code handling Ctrl-C handles it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """(exit status, one-line message) for an error a user can cause; None for a bug (keep the traceback)."""
    if isinstance(exc, JfDeployError):
        return exc.exit_code, _one_line(str(exc))
    if isinstance(exc, Interrupted):
        return EXIT_SIGNAL_BASE + exc.signum, f"interrupted ({exc.signal_name}); unfinished output removed"
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_SIGNAL_BASE + signal.SIGINT, "interrupted (SIGINT); unfinished output removed"
    if isinstance(exc, OSError):  # permissions, full disk, missing folders: the machine, not the code
        return EXIT_USAGE, _one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, MemoryError):
        return EXIT_USAGE, "out of memory (try a smaller --size or fewer memory frames)"
    torch = sys.modules.get("torch")  # only if loaded: the error module stays light
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if out_of_memory is not None and isinstance(exc, out_of_memory):
        return EXIT_USAGE, "out of device memory (try a smaller --size or fewer memory frames): " + _one_line(
            str(exc)
        ).split(";")[0]
    return None
