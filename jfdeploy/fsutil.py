"""Files written all at once or not at all, and what an interrupted command leaves behind: nothing.

Every output is written under a temporary name next to its target (a hidden ``.NAME.partial-*``
folder, a hidden ``.NAME.*.tmp*`` file) and renamed onto the target when complete. While it is
being written its temporary path is *registered*; ``remove_unfinished`` deletes whatever is still
registered. Commands run inside ``command_scope``: SIGTERM / SIGHUP raise
``jfdeploy.errors.Interrupted`` (a KeyboardInterrupt, as Ctrl-C raises), so ``finally`` blocks and
context managers clean up, and on any failure the scope removes what is still registered, including
folders the command created and left empty. Creating and registering, renaming and unregistering
happen with these signals deferred, so an interrupt never falls between the two. A signal whose
exception a library swallowed (a bare ``except:``) is remembered: nothing is committed after it, and
the command still ends as interrupted.

Temporary files and folders get the permissions of ordinary files and folders (0666 / 0777 less
the umask), not mkstemp's / mkdtemp's private 0600 / 0700.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from jfdeploy.errors import InputError, Interrupted

_TERMINATION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))

# registered path -> how to remove it: "tree" (a staging folder), "file" (a temp file), "empty" (a folder
# the command created: removed only if still empty)
_unfinished: dict[Path, str] = {}
_scope_depth = 0
_received: list[int] = []  # termination signals received inside the command scope
_deferring = 0  # depth of signals_deferred blocks
_deferred: list[int] = []  # signals received inside them, raised when the outermost ends


# ------------------------------------------------------------------------------------------ signals


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Inside a command, hold a termination signal back for the block: ``Interrupted`` is raised when it ends.

    Python runs signal handlers in the main thread between bytecodes, whichever thread the signal hit, so a
    flag the handler reads defers them (a per-thread signal mask would not: the other threads take them).
    """
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        pending = _deferred[:1] if _deferring == 0 else []
        if _deferring == 0:
            _deferred.clear()
    if pending:
        raise Interrupted(pending[0])


def _raise_interrupted(signum: int, frame) -> None:
    _received.append(signum)
    if _deferring:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise ``Interrupted`` if a termination signal arrived in this command, even if some library swallowed
    the exception (a bare ``except:`` around an import, say). ``commit`` checks it: nothing is committed after
    an interrupt. Long loops may call it to stop sooner."""
    if _received:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def command_scope() -> Iterator[None]:
    """Run one command: termination signals raise ``Interrupted``; on any failure, remove what it left unfinished.

    Signals whose handler someone else set (or that are ignored, as for a background job) are left alone.
    Outside the main thread only the cleanup applies.
    """
    global _scope_depth
    installed: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}  # signal -> previous handler
    if threading.current_thread() is threading.main_thread():
        for signum in _TERMINATION_SIGNALS:
            current = signal.getsignal(signum)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                installed[signum] = current
                signal.signal(signum, _raise_interrupted)
    if _scope_depth == 0:
        _received.clear()
    _scope_depth += 1
    try:
        yield
        raise_if_interrupted()  # an interrupt that a library swallowed still ends the command as interrupted
    except BaseException:
        for signum in installed:  # a second signal during the cleanup is ignored, not raised mid-way
            signal.signal(signum, signal.SIG_IGN)
        _deferred.clear()
        remove_unfinished()
        raise
    finally:
        _scope_depth -= 1
        if _scope_depth == 0:
            _received.clear()
            for path, how in list(_unfinished.items()):
                if how == "empty":  # created folders of a successful command stay
                    del _unfinished[path]
        for signum, handler in installed.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------------------------- the registry


def register_unfinished(path: str | os.PathLike, how: str) -> None:
    """Remember ``path`` as being written: "tree" (folder), "file", or "empty" (a created folder)."""
    if how not in ("tree", "file", "empty"):
        raise ValueError(f"how must be 'tree', 'file' or 'empty', got {how!r}")
    _unfinished[Path(path)] = how


def unregister_unfinished(path: str | os.PathLike) -> None:
    _unfinished.pop(Path(path), None)


def unfinished_paths() -> list[Path]:
    return list(_unfinished)


def remove_unfinished() -> list[Path]:
    """Delete every registered path (newest first) and forget it; return the paths removed."""
    removed = []
    with signals_deferred():
        for path, how in reversed(list(_unfinished.items())):
            try:
                if how == "tree":
                    shutil.rmtree(path, ignore_errors=True)
                elif how == "file":
                    path.unlink(missing_ok=True)
                else:
                    path.rmdir()  # only if empty
                removed.append(path)
            except OSError:
                pass
            del _unfinished[path]
    return removed


# ------------------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with signals_deferred():
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _ordinary_mode(path: Path, *, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


# --------------------------------------------------------------------------------- atomic writers


def make_dirs(path: str | os.PathLike) -> Path:
    """``mkdir -p``; inside a command, the folders it creates are removed again if the command fails (if empty)."""
    path = Path(path)
    missing = []
    parent = path
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    path.mkdir(parents=True, exist_ok=True)
    if _scope_depth:
        for created in reversed(missing):  # outermost first: removal goes newest (innermost) first
            register_unfinished(created, "empty")
    return path


def new_staging_dir(target: str | os.PathLike) -> Path:
    """An empty, registered folder ``.NAME.partial-*`` next to ``target``, to be renamed onto it."""
    target = Path(target)
    make_dirs(target.parent)
    with signals_deferred():
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
        register_unfinished(staging, "tree")
    _ordinary_mode(staging, directory=True)
    return staging


def new_temp_file(target: str | os.PathLike, suffix: str = ".tmp") -> Path:
    """An empty, registered file ``.STEM.*SUFFIX`` next to ``target``, to be renamed onto it."""
    target = Path(target)
    make_dirs(target.parent)
    with signals_deferred():
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=suffix)
        os.close(fd)
        register_unfinished(name, "file")
    tmp = Path(name)
    _ordinary_mode(tmp, directory=False)
    return tmp


def commit(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the registered ``tmp`` onto ``target`` (a folder target is replaced whole) and unregister it.

    Raises ``Interrupted`` instead if the command received a termination signal (``raise_if_interrupted``).
    """
    tmp, target = Path(tmp), Path(target)
    with signals_deferred():
        raise_if_interrupted()
        old = None
        if tmp.is_dir() and target.exists():
            # the old target moves aside first: a crash between the renames leaves no half-deleted folder
            # under the target's name, only a hidden ``.NAME.old-*`` (and no target: it is redone)
            old = target.parent / f".{target.name}.old-{os.getpid()}-{id(tmp):x}"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            if old is not None:
                os.replace(old, target)  # the old target back: a failed commit changes nothing
            raise
        unregister_unfinished(tmp)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return target


def discard(tmp: str | os.PathLike) -> None:
    """Delete the registered ``tmp`` (file or folder) and unregister it."""
    tmp = Path(tmp)
    with signals_deferred():
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        unregister_unfinished(tmp)


@contextlib.contextmanager
def atomic_directory(out_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out_dir`` only if the block succeeds."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise InputError(f"output {out_dir} exists and is not empty (use --overwrite to replace it)")
    staging = new_staging_dir(out_dir)
    try:
        yield staging
    except BaseException:
        discard(staging)
        raise
    commit(staging, out_dir)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; it becomes ``path`` only if the block succeeds."""
    tmp = new_temp_file(path, suffix)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    commit(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
