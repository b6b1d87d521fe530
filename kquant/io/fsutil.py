"""Atomic output files, output-is-not-an-input checks, SIGTERM/SIGHUP as KeyboardInterrupt, and
releasing pages of read-only mappings that a streaming reader has consumed.

An output is written to a hidden temporary file next to it (`.NAME.kquant-tmp-<pid>-<rand>`),
fsynced, then renamed over the final name and the directory fsynced: a reader sees either
nothing or the whole file. Any exception (KeyboardInterrupt and SystemExit included) removes the
temporary file; only SIGKILL or a crash can leave one behind, never a partial final file.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

TMP_MARK = ".kquant-tmp-"
MAX_TMP_BASE = 160  # keep the temp name under NAME_MAX (255) for long final names
# errno -> short reason for a failed write
WRITE_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EIO: "I/O error",
}
BODY_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # errors only a write can cause
TERMINATION_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


def _p(path) -> str:
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    return s if s.isprintable() else repr(s)


def tmp_name(final: Path) -> Path:
    """A hidden temp name beside `final` that cannot be mistaken for it."""
    return final.with_name(f".{final.name[:MAX_TMP_BASE]}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_path(p: Path) -> None:
    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _block_signals():
    """Block SIGINT/SIGTERM/SIGHUP during cleanup; returns the old mask (or None)."""
    if not hasattr(signal, "pthread_sigmask"):
        return None
    try:
        return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, *TERMINATION_SIGNALS})
    except (OSError, ValueError):
        return None


def _restore_signals(old) -> None:
    if old is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _check_target(final: Path, force: bool) -> None:
    if os.path.lexists(final):
        if os.path.isdir(final):
            raise OutputError(f"{_p(final)}: is a directory")
        if not force:
            raise OutputError(f"{_p(final)}: already exists (use --force to overwrite)")
    parent = final.parent
    if not parent.is_dir():
        raise OutputError(f"{_p(final)}: output directory {_p(parent)} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{_p(final)}: output directory {_p(parent)} is not writable")


def _as_output_error(final: Path, e: OSError) -> OutputError:
    reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
    return OutputError(f"{_p(final)}: cannot write ({reason})")


@contextmanager
def atomic_output(final_path, force: bool = False):
    """Yield a binary file that becomes `final_path` only if the block completes.

    Refuses an existing final path unless force; removes the temp file on any exception.
    OSErrors (disk full, file too large, ...) become a one-line OutputError naming the path.
    """
    final = Path(os.path.abspath(os.fspath(final_path)))
    _check_target(final, force)
    tmp = tmp_name(final)
    try:
        f = open(tmp, "xb")  # O_CREAT | O_EXCL, close-on-exec, mode 0o666 & ~umask
    except OSError as e:
        reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
        raise OutputError(f"{_p(final)}: cannot create a file in {_p(final.parent)} ({reason})") from None
    finishing = False
    try:
        yield f
        finishing = True  # from here on every OSError is about the output
        if f.closed:  # the block closed it: its data is flushed, make it durable
            _fsync_path(tmp)
        else:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        _commit(tmp, final, force)
        _fsync_dir(final.parent)
    except BaseException as exc:
        old = _block_signals()
        try:
            try:
                f.close()
            except OSError:
                pass
            _unlink_quietly(tmp)
        finally:
            _restore_signals(old)
        # An OSError from the block may concern an input; only write-side errors are rewritten.
        if isinstance(exc, OSError) and (finishing or exc.errno in BODY_WRITE_ERRNOS):
            raise _as_output_error(final, exc) from exc
        raise


def _commit(tmp: Path, final: Path, force: bool) -> None:
    """Rename tmp to final; without force never replace a file that appeared meanwhile."""
    if force:
        os.replace(tmp, final)
        return
    try:  # link() fails if final exists: no-clobber without a check-then-rename race
        os.link(tmp, final)
    except FileExistsError:
        raise OutputError(f"{_p(final)}: already exists (appeared while writing; use --force to overwrite)") from None
    except OSError:  # file system without hard links
        if os.path.lexists(final):
            raise OutputError(f"{_p(final)}: already exists (appeared while writing; use --force to overwrite)") from None
        os.replace(tmp, final)
        return
    _unlink_quietly(tmp)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def check_not_input(output, inputs) -> None:
    """OutputError if `output` is any of `inputs` (same path, symlink, or hard link)."""
    out = os.fspath(output)
    try:
        ost = os.stat(out)  # follows a symlink at the output path
    except OSError:
        ost = None
    out_real = os.path.realpath(out)
    for inp in inputs:
        i = os.fspath(inp)
        same = os.path.realpath(i) == out_real
        if not same and ost is not None:
            try:
                same = _same_file(ost, os.stat(i))
            except OSError:
                pass
        if same:
            raise OutputError(f"{_p(out)}: output is the same file as input {_p(i)}")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP received (a KeyboardInterrupt so cleanup code treats it alike)."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextmanager
def handle_termination():
    """Turn SIGTERM and SIGHUP into `Terminated` (a KeyboardInterrupt) in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}
    try:
        for s in TERMINATION_SIGNALS:
            old[s] = signal.signal(s, _raise_terminated)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


def release_pages(mm, offset: int, nbytes: int) -> None:
    """Drop a consumed byte range of a read-only shared mapping from this process's resident set.

    Streaming through a mapping would otherwise leave every page read resident, so peak RSS would
    grow with the file; the page cache keeps the data and a later access faults it back in."""
    if mm is None or nbytes <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    a = offset // page * page
    b = min(len(mm), -(-(offset + nbytes) // page) * page)
    if b > a:
        try:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)
        except (OSError, ValueError):
            pass


class AtomicFileSet:
    """Several files (the shards of a split GGUF) that appear together or not at all.

    Each member is written under a temporary name (`open(i)`, then `close(i)`: flushed, fsynced,
    still hidden). `commit()` checks the targets again, renames the members last to first and
    fsyncs the folder before renaming the first one, with SIGINT/SIGTERM/SIGHUP blocked: whoever
    opens a set by its first file (llama.cpp, kquant) finds it only once every other member is in
    place. A crash between renames can leave members 2..n but never the first one; `abort()` (any
    exception inside the `with` block) removes every temporary file and every member already
    renamed. `stale`: other files of the same output (shards of another count) removed after a
    forced commit.
    """

    def __init__(self, finals, force: bool = False, stale=()):
        self.finals = [Path(os.path.abspath(os.fspath(p))) for p in finals]
        self.force = force
        self.stale = [Path(p) for p in stale]
        for f in self.finals:
            _check_target(f, force)
        self._tmps: list[Path | None] = [None] * len(self.finals)
        self._files: dict[int, object] = {}
        self._renamed: list[Path] = []
        self._done = False

    def open(self, i: int):
        final = self.finals[i]
        tmp = tmp_name(final)
        try:
            f = open(tmp, "xb")
        except OSError as e:
            reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
            raise OutputError(f"{_p(final)}: cannot create a file in {_p(final.parent)} ({reason})") from None
        self._tmps[i] = tmp
        self._files[i] = f
        return f

    def close(self, i: int) -> None:
        f = self._files.pop(i)
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            f.close()
            raise _as_output_error(self.finals[i], e) from e
        f.close()

    def commit(self) -> None:
        if any(t is None for t in self._tmps) or self._files:
            raise ValueError("AtomicFileSet.commit(): a member was not written and closed")
        old = _block_signals()
        try:
            try:
                if not self.force:
                    for f in self.finals:  # a file that appeared meanwhile
                        if os.path.lexists(f):
                            raise OutputError(f"{_p(f)}: already exists (appeared while writing; use --force to overwrite)")
                for i in range(len(self.finals) - 1, -1, -1):
                    if i == 0:
                        _fsync_dir(self.finals[0].parent)  # members 2..n are durable before the first appears
                    os.replace(self._tmps[i], self.finals[i])
                    self._renamed.append(self.finals[i])
                    self._tmps[i] = None
                _fsync_dir(self.finals[0].parent)
            except OSError as e:
                self._abort()
                raise _as_output_error(self.finals[0], e) from e
            except BaseException:
                self._abort()
                raise
            self._done = True
            for s in self.stale:
                if s not in self.finals:
                    _unlink_quietly(s)
        finally:
            _restore_signals(old)

    def _abort(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass
        self._files.clear()
        for t in self._tmps:
            if t is not None:
                _unlink_quietly(t)
        # first member first: the set stops being visible before its other members go
        for f in sorted(self._renamed, key=lambda p: p != self.finals[0]):
            _unlink_quietly(f)
        self._renamed.clear()

    def abort(self) -> None:
        old = _block_signals()
        try:
            self._abort()
        finally:
            _restore_signals(old)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.commit()
        else:
            self.abort()
            if isinstance(ev, OSError) and ev.errno in BODY_WRITE_ERRNOS:
                raise _as_output_error(self.finals[0], ev) from ev
        return False
