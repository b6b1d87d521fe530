"""Atomic output files, output-is-not-an-input checks, signals (SIGINT/SIGTERM/SIGHUP as
KeyboardInterrupt, regions where they are held), file locks, and reads that notice a file
changing under them.

An output is written to a hidden temporary file next to it (`.NAME.kquant-tmp-<pid>-<rand>`),
fsynced, then renamed over the final name and the directory fsynced: a reader sees either
nothing or the whole file. Any exception (KeyboardInterrupt and SystemExit included) removes the
temporary file; only SIGKILL or a crash can leave one behind, never a partial final file.

Every file kquant creates is created inside `signals_held()` together with what removes it, so
an interrupt cannot fall between the two. Every file a command opens for reading is recorded
(an audit hook on "open", active inside `track_inputs()`), and `atomic_output` refuses to
replace any of them, however the path is spelled (symlink, hard link, `..`).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import threading
import time
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
INTERRUPT_SIGNALS = (signal.SIGINT, *TERMINATION_SIGNALS)
# Test hook: "SECONDS:SUBSTRING" pauses (signals held) right after creating a file whose name
# contains SUBSTRING, after printing "kquant-test: created PATH" on stderr, so a test can send a
# signal inside the create-and-register window every time.
TEST_PAUSE_ENV = "KQUANT_TEST_PAUSE_AFTER_CREATE"
TEST_ANNOUNCE_ENV = "KQUANT_TEST_ANNOUNCE"  # "kquant-test: started" once the CLI's handlers are in


def _p(path) -> str:
    s = os.fspath(path)
    s = s if isinstance(s, str) else os.fsdecode(s)
    return s if s.isprintable() else repr(s)


def tmp_name(final: Path) -> Path:
    """A hidden temp name beside `final` that cannot be mistaken for it."""
    return final.with_name(f".{final.name[:MAX_TMP_BASE]}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}")


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


@contextmanager
def signals_held():
    """Hold SIGINT/SIGTERM/SIGHUP: one arriving inside the block is acted on when it ends.

    Python runs signal handlers in the main thread only, between bytecodes; inside the block the
    handlers are swapped for one that records the signal, and on exit the original handlers are
    put back and called for what was recorded. Off the main thread no KeyboardInterrupt can be
    raised, so the block is a no-op there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {}
    try:
        for s in INTERRUPT_SIGNALS:
            h = signal.getsignal(s)
            if h is None or h == signal.SIG_IGN:  # not Python's, or ignored: leave it
                continue
            old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(s)


def created(path) -> None:
    """Called right after creating a file, signals held (see TEST_PAUSE_ENV)."""
    spec = os.environ.get(TEST_PAUSE_ENV)
    if not spec:
        return
    seconds, _, part = spec.partition(":")
    if part in os.path.basename(os.fspath(path)):
        print(f"kquant-test: created {os.fspath(path)}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))


@contextmanager
def file_lock(path, blocking: bool = True):
    """An exclusive flock on `path` (created if missing, kept afterwards) for the block.

    Yields True when locked; False when `blocking` is off and another process holds it.
    OSError if the lock file cannot be opened. Not POSIX: no lock, yields True."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    with signals_held():  # the descriptor is closed by the finally below, whatever arrives
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the flock


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


def check_output(final_path, force: bool = False) -> None:
    """The checks atomic_output makes before creating anything, for refusing before long work:
    exists (without force), a folder, no such folder, not writable, or a file this command read."""
    final = Path(os.path.abspath(os.fspath(final_path)))
    _check_target(final, force)
    check_not_input(final, inputs_read())


def _as_output_error(final: Path, e: OSError) -> OutputError:
    reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
    return OutputError(f"{_p(final)}: cannot write ({reason})")


@contextmanager
def atomic_output(final_path, force: bool = False, replaces_input: bool = False):
    """Yield a binary file that becomes `final_path` only if the block completes.

    Refuses an existing final path unless force, and a file read by this command (see
    track_inputs) unless `replaces_input` (a state file read and rewritten by design); removes the
    temp file on any exception. OSErrors (disk full, file too large, ...) become a one-line
    OutputError naming the path.
    """
    final = Path(os.path.abspath(os.fspath(final_path)))
    if replaces_input:
        _check_target(final, force)
    else:
        check_output(final, force)
    tmp = tmp_name(final)
    f = None
    finishing = False
    try:
        with signals_held():  # the file and the handler that removes it come into being together
            try:
                f = open(tmp, "xb")  # O_CREAT | O_EXCL, close-on-exec, mode 0o666 & ~umask
            except OSError as e:
                reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
                raise _NotCreated(f"{_p(final)}: cannot create a file in {_p(final.parent)} ({reason})") from None
            created(tmp)
        yield f
        finishing = True  # from here on every OSError is about the output
        if f.closed:  # the block closed it: its data is flushed, make it durable
            _fsync_path(tmp)
        else:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        if not replaces_input:  # inputs opened while writing (shards, sources) count too
            check_not_input(final, inputs_read())
        _commit(tmp, final, force)
        _fsync_dir(final.parent)
    except _NotCreated as e:
        raise OutputError(str(e)) from None
    except BaseException as exc:
        with signals_held():
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
            _unlink_quietly(tmp)
        # An OSError from the block may concern an input; only write-side errors are rewritten.
        if isinstance(exc, OSError) and (finishing or exc.errno in BODY_WRITE_ERRNOS):
            raise _as_output_error(final, exc) from exc
        raise


class _NotCreated(Exception):
    """atomic_output could not create its temporary file (nothing to remove)."""


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


_interrupted: list[int] = []  # signals received since `interrupt_once` handlers were installed
_armed = True  # False from `defer_interrupts` until `arm_interrupts`
_in_hook = False  # True while `unraisable_hook`'s hook runs


def interrupt_once(signum, frame):
    """Signal handler: the first SIGINT/SIGTERM/SIGHUP raises KeyboardInterrupt (`Terminated` for
    the last two); later ones are ignored, so the clean-up the first one started runs to its end
    and cannot be interrupted into a traceback. Before the handlers are armed it only records.
    Inside the unraisable hook (where a raise is only printed) it is delivered again after it."""
    _interrupted.append(signum)
    if _armed and len(_interrupted) == 1:
        if _in_hook:
            _redeliver(_interrupted.pop())
            return
        _raise_for(signum)


def _raise_for(signum: int):
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _install(signals) -> dict:
    old = {}
    for s in signals:
        h = signal.getsignal(s)
        if h == signal.SIG_IGN and s == signal.SIGINT:  # a background job: SIGINT is not meant for us
            continue
        old[s] = signal.signal(s, interrupt_once)
    return old


def defer_interrupts() -> dict:
    """Install `interrupt_once` for SIGINT/SIGTERM/SIGHUP, recording only: start-up (imports of
    numpy and numba, whose machinery can swallow or rewrap an exception raised inside it) runs to a
    point where `arm_interrupts` acts on what was recorded. Returns the handlers replaced; a second
    call keeps what the first recorded."""
    global _armed
    if signal.getsignal(signal.SIGTERM) is not interrupt_once:
        _interrupted.clear()
    _armed = False
    return _install(INTERRUPT_SIGNALS)


def arm_interrupts() -> None:
    """From here a signal raises at once; one recorded before is raised now."""
    global _armed
    _armed = True
    if _interrupted:
        _raise_for(_interrupted[0])


def install_interrupt_handlers(sigint: bool = True) -> dict:
    """Arm `interrupt_once` for SIGTERM/SIGHUP (and SIGINT unless told not to) in the main
    thread; returns the handlers it replaced. A SIGINT already ignored stays ignored."""
    global _armed
    _interrupted.clear()
    old = _install(INTERRUPT_SIGNALS if sigint else TERMINATION_SIGNALS)
    _armed = True
    return old


def unraisable_hook(previous):
    """A sys.unraisablehook: a KeyboardInterrupt of ours raised where Python can only report it
    ("Exception ignored in" a weakref callback or __del__) is not lost: it is raised again from
    the next bytecode of the main program, and nothing is printed."""

    def hook(u):
        global _in_hook
        _in_hook = True
        try:
            if isinstance(u.exc_value, KeyboardInterrupt) and len(_interrupted) == 1:
                _redeliver(_interrupted.pop())
                return
            previous(u)
        finally:
            _in_hook = False  # nothing after this store checks for signals before the hook has returned

    return hook


def _redeliver(signum: int) -> None:
    """Deliver `signum` to the main thread again, once the unraisable hook has returned: from another
    thread, which waits for that (signal.raise_signal here would run interrupt_once inside the hook,
    where Python only prints it as "Exception ignored in sys.unraisablehook"). interrupt_once then
    runs as the first signal at one of the main program's next bytecodes."""
    import threading

    threading.Thread(target=_interrupt_main_after_hook, args=(signum,), daemon=True).start()


def _interrupt_main_after_hook(signum: int) -> None:
    import _thread

    # this thread runs only while the main thread has released the GIL, which it does not do between
    # the hook's last store (_in_hook = False) and its return: seeing False, the hook has returned
    while _in_hook:
        time.sleep(0.001)
    _thread.interrupt_main(signum)


def interrupt_signal() -> int | None:
    """The first signal `interrupt_once` received since it was installed, or None."""
    return _interrupted[0] if _interrupted else None


def announce(event: str) -> None:
    """Test hook: "kquant-test: EVENT" on stderr when KQUANT_TEST_ANNOUNCE is set."""
    if os.environ.get(TEST_ANNOUNCE_ENV):
        print(f"kquant-test: {event}", file=sys.stderr, flush=True)


def restore_handlers(old: dict) -> None:
    for s, h in old.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def ignore_interrupts() -> None:
    """From here to exit, SIGINT/SIGTERM/SIGHUP are ignored (the process is finishing)."""
    for s in INTERRUPT_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def handle_termination():
    """Turn SIGTERM and SIGHUP into `Terminated` (a KeyboardInterrupt) in the main thread; a
    no-op where `interrupt_once` already handles them (the command line)."""
    if threading.current_thread() is not threading.main_thread() or all(
            signal.getsignal(s) is interrupt_once for s in TERMINATION_SIGNALS):
        yield
        return
    old = {}
    try:
        old = install_interrupt_handlers(sigint=False)
        yield
    finally:
        restore_handlers(old)


# ---------------------------------------------------------------- files read by this command
_tracking = 0
_inputs_read: dict[str, None] = {}  # absolute paths, in the order they were first opened
_hook_installed = False
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event, args):
    if event != "open" or not _tracking:
        return
    path, mode, flags = args
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, (str, bytes)):  # a file descriptor
        return
    if mode is not None and any(c in mode for c in "wax+"):
        return
    if mode is None and flags is not None and flags & _WRITE_FLAGS:
        return
    _inputs_read.setdefault(os.path.abspath(os.fsdecode(path)), None)


@contextmanager
def track_inputs():
    """Record every file opened for reading inside the block (nestable; the record is cleared
    when the outermost block ends). atomic_output refuses to replace any of them."""
    global _tracking, _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    if not _tracking:
        _inputs_read.clear()
    _tracking += 1
    try:
        yield
    finally:
        _tracking -= 1
        if not _tracking:
            _inputs_read.clear()


def note_input(path) -> None:
    """Record `path` as an input of the current command (for inputs named before they are read)."""
    if _tracking:
        _inputs_read.setdefault(os.path.abspath(os.fspath(path)), None)


def inputs_read() -> list[str]:
    return list(_inputs_read)


def open_regular(path: str, where: str) -> tuple[int, os.stat_result]:
    """Open an input file read-only: (fd, its fstat). InputError "WHERE: cannot open (reason)" or
    "WHERE: not a regular file", checked before the open (O_NONBLOCK: a FIFO swapped in after the
    stat must not block the open) and again on the open file, which is closed on any error."""
    from ..errors import InputError

    try:
        st = os.stat(path)
    except OSError as e:
        raise InputError(f"{where}: cannot open ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where}: not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise InputError(f"{where}: cannot open ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def file_stamp(fd: int) -> tuple[int, int]:
    """(size, mtime_ns) of an open file: what `pread_array` compares after every read."""
    st = os.fstat(fd)
    return st.st_size, st.st_mtime_ns


def pread_array(fd: int, offset: int, nbytes: int, stamp: tuple[int, int], path):
    """`nbytes` bytes at `offset` as a new read-only uint8 array; InputError "PATH changed while
    reading" if the file came up short or its size or mtime is no longer `stamp`.

    Readers use this instead of a mapping: a mapped file truncated by another process turns the
    next access into SIGBUS, which Python cannot handle; a read just comes up short."""
    import numpy as np

    from ..errors import InputError

    buf = np.empty(nbytes, np.uint8)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n <= 0:
            break
        got += n
    if got < nbytes or file_stamp(fd) != stamp:
        raise InputError(f"{_p(path)} changed while reading")
    buf.flags.writeable = False  # as a view of the file would be
    return buf


class AtomicFileSet:
    """Several files (the shards of a split GGUF) that appear together or not at all.

    Each member is written under a temporary name (`open(i)`, then `close(i)`: flushed, fsynced,
    still hidden). `commit()` checks the targets again, renames the members last to first and
    fsyncs the folder before renaming the first one, with SIGINT/SIGTERM/SIGHUP held: whoever
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
            check_output(f, force)
        self._tmps: list[Path | None] = [None] * len(self.finals)
        self._files: dict[int, object] = {}
        self._renamed: list[Path] = []
        self._done = False

    def open(self, i: int):
        final = self.finals[i]
        tmp = tmp_name(final)
        with signals_held():  # the file and what removes it (abort) come into being together
            try:
                f = open(tmp, "xb")
            except OSError as e:
                reason = WRITE_ERRORS.get(e.errno) or e.strerror or str(e)
                raise OutputError(f"{_p(final)}: cannot create a file in {_p(final.parent)} ({reason})") from None
            self._tmps[i] = tmp
            self._files[i] = f
            created(tmp)
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
        with signals_held():  # no interrupt between the renames; one arriving is acted on after
            try:
                for f in self.finals:  # inputs opened while writing count too
                    check_not_input(f, inputs_read())
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
        with signals_held():
            self._abort()

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
