"""atomic_output, check_not_input and handle_termination: real signals, real RLIMIT_FSIZE and a
real read-only directory (as an unprivileged user) in subprocesses."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from kquant.io import fsutil
from kquant.errors import OutputError
from kquant.io.fsutil import (TMP_MARK, Terminated, atomic_output, check_not_input, file_lock, handle_termination,
                              inputs_read, signals_held, track_inputs)
from proc import default_sigint

ROOT = Path(__file__).resolve().parents[1]


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if TMP_MARK in p.name)


def run_script(code: str, *args, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint, **kw,
    )


# --------------------------------------------------------------------- atomic_output
def test_success_writes_final_and_leaves_no_temp(tmp_path):
    final = tmp_path / "out.gguf"
    with atomic_output(final) as f:
        f.write(b"hello")
        names = os.listdir(tmp_path)
        assert len(names) == 1 and names[0].startswith(".out.gguf" + TMP_MARK + str(os.getpid()) + "-")
        assert not final.exists()
    assert final.read_bytes() == b"hello"
    assert leftovers(tmp_path) == []


def test_existing_output_untouched_without_force(tmp_path):
    final = tmp_path / "out.gguf"
    final.write_bytes(b"precious")
    with pytest.raises(OutputError) as ei:
        with atomic_output(final) as f:
            f.write(b"new")
    assert str(final) in str(ei.value) and "already exists" in str(ei.value)
    assert final.read_bytes() == b"precious" and leftovers(tmp_path) == []
    with atomic_output(final, force=True) as f:
        f.write(b"new")
    assert final.read_bytes() == b"new"


def test_final_that_appears_while_writing_is_not_clobbered(tmp_path):
    final = tmp_path / "out.gguf"
    with pytest.raises(OutputError, match="appeared while writing"):
        with atomic_output(final) as f:
            f.write(b"mine")
            final.write_bytes(b"theirs")
    assert final.read_bytes() == b"theirs" and leftovers(tmp_path) == []


def test_directory_and_missing_parent(tmp_path):
    with pytest.raises(OutputError, match="is a directory"):
        with atomic_output(tmp_path, force=True):
            pass
    with pytest.raises(OutputError) as ei:
        with atomic_output(tmp_path / "nope" / "out.gguf"):
            pass
    assert "does not exist" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt(), SystemExit(3), Terminated(signal.SIGTERM)])
def test_temp_removed_on_any_exception(tmp_path, exc):
    final = tmp_path / "out.gguf"
    with pytest.raises(type(exc)):
        with atomic_output(final) as f:
            f.write(b"x" * 100_000)
            raise exc
    assert not final.exists() and os.listdir(tmp_path) == []


def test_disk_full_in_block_becomes_output_error(tmp_path):
    final = tmp_path / "out.gguf"
    with pytest.raises(OutputError) as ei:
        with atomic_output(final) as f:
            f.write(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(final) in str(ei.value) and "disk full" in str(ei.value)
    assert os.listdir(tmp_path) == []


def test_disk_full_at_fsync_becomes_output_error(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", full)
    with pytest.raises(OutputError, match="disk full"):
        with atomic_output(tmp_path / "out.gguf") as f:
            f.write(b"x")
    assert os.listdir(tmp_path) == []


def test_other_oserror_in_block_is_not_blamed_on_output(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "out.gguf"):
            open(tmp_path / "missing-input")
    assert os.listdir(tmp_path) == []


def test_unwritable_directory_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(fsutil.os, "access", lambda p, m: False)
    with pytest.raises(OutputError, match="is not writable"):
        with atomic_output(tmp_path / "out.gguf"):
            pass
    monkeypatch.undo()
    def erofs(path, mode="r", *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fsutil, "open", erofs, raising=False)  # the temp file's open()
    with pytest.raises(OutputError) as ei:
        with atomic_output(tmp_path / "out.gguf"):
            pass
    assert "read-only file system" in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="drops root to nobody to get a directory root cannot bypass")
def test_read_only_directory_as_unprivileged_user():
    # root ignores permission bits, so the child drops to nobody after importing kquant
    base = Path(tempfile.mkdtemp(prefix="kquant-ro-"))
    try:
        os.chmod(base, 0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o555)
        os.chmod(ro, 0o555)
        code = """
            import os, sys
            from kquant.io.fsutil import atomic_output
            from kquant.errors import OutputError
            os.setgroups([]); os.setgid(65534); os.setuid(65534)
            try:
                with atomic_output(sys.argv[1]) as f:
                    f.write(b"x")
            except OutputError as e:
                print("OutputError:", e)
                sys.exit(7)
        """
        p = run_script(code, ro / "out.gguf")
        out, err = p.communicate(timeout=60)
        assert p.returncode == 7, (out, err)
        assert "not writable" in out and str(ro / "out.gguf") in out
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(base)


def test_block_may_close_the_file(tmp_path):
    final = tmp_path / "out.gguf"
    with atomic_output(final) as f:
        assert TMP_MARK in f.name
        f.write(b"abc")
        f.close()
    assert final.read_bytes() == b"abc" and leftovers(tmp_path) == []


def test_long_final_name(tmp_path):
    final = tmp_path / ("m" * 250 + ".gguf")
    with atomic_output(final) as f:
        f.write(b"ok")
    assert final.read_bytes() == b"ok" and leftovers(tmp_path) == []


# --------------------------------------------------------------------- subprocess: limits and signals
WRITER = """
    import os, sys, time, signal
    from kquant.io.fsutil import atomic_output, handle_termination
    from kquant.errors import OutputError
    with handle_termination():
        with atomic_output(sys.argv[1]) as f:
            f.write(b"x" * 65536)
            f.flush()
            print("ready", flush=True)
            for _ in range(600):
                f.write(b"y" * 1024)
                time.sleep(0.05)
"""


def _writer_until_ready(tmp_path):
    final = tmp_path / "out.gguf"
    p = run_script(WRITER, final)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    assert len(leftovers(tmp_path)) == 1 and not final.exists()
    return p, final


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_termination_signal_mid_write_leaves_nothing(tmp_path, sig):
    p, final = _writer_until_ready(tmp_path)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "KeyboardInterrupt" in err or "Terminated" in err
    assert not final.exists() and os.listdir(tmp_path) == []


def test_sigkill_never_leaves_the_final_name(tmp_path):
    p, final = _writer_until_ready(tmp_path)
    p.kill()
    p.communicate(timeout=30)
    assert not final.exists()
    assert len(leftovers(tmp_path)) <= 1 and all(n.startswith(".") for n in os.listdir(tmp_path))


def test_rlimit_fsize_becomes_output_error(tmp_path):
    code = """
        import resource, signal, sys
        from kquant.io.fsutil import atomic_output
        from kquant.errors import OutputError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            with atomic_output(sys.argv[1]) as f:
                for _ in range(100):
                    f.write(b"z" * 65536)
        except OutputError as e:
            print("OutputError:", e)
            sys.exit(7)
    """
    final = tmp_path / "out.gguf"
    p = run_script(code, final)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 7, (out, err)
    assert "file too large" in out and str(final) in out
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------- handle_termination
def test_handle_termination_raises_and_restores():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(KeyboardInterrupt) as ei:
        with handle_termination():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    assert isinstance(ei.value, Terminated) and ei.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before


def test_handle_termination_off_main_thread_is_a_no_op():
    import threading

    errors = []

    def body():
        try:
            with handle_termination():
                pass
        except Exception as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []


# --------------------------------------------------------------------- check_not_input
def test_check_not_input(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"data")
    other = tmp_path / "other.gguf"
    check_not_input(other, [src])  # does not exist yet: fine
    other.write_bytes(b"x")
    check_not_input(other, [src, tmp_path])
    with pytest.raises(OutputError) as ei:
        check_not_input(src, [src])
    assert str(src) in str(ei.value) and "same file" in str(ei.value)
    rel = os.path.relpath(src)
    with pytest.raises(OutputError):
        check_not_input(rel, [src])
    link = tmp_path / "sym.gguf"
    link.symlink_to(src)
    with pytest.raises(OutputError):
        check_not_input(link, [src])
    hard = tmp_path / "hard.gguf"
    os.link(src, hard)
    with pytest.raises(OutputError):
        check_not_input(hard, [other, src])
    with pytest.raises(OutputError):
        check_not_input(tmp_path / "x" / ".." / "in.safetensors", [src])


# --------------------------------------------------------------------- signals_held, file_lock, track_inputs
def test_signals_held_delivers_at_the_end():
    # with Python's own SIGINT handler, whatever this process inherited (a suite started in the background by
    # a non-interactive shell inherits SIGINT ignored, and signals_held rightly leaves an ignored signal alone)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        got = []
        with pytest.raises(KeyboardInterrupt):  # delivered on leaving the block
            with signals_held():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):  # a handler would run here, at a bytecode boundary
                    pass
                got.append("inside")
        assert got == ["inside"]
        with pytest.raises(KeyboardInterrupt):
            with signals_held():
                with signals_held():  # nested: handed to the outer region, delivered at its end
                    os.kill(os.getpid(), signal.SIGINT)
                    for _ in range(1000):
                        pass
                got.append("outer")
        assert got == ["inside", "outer"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_signals_held_keeps_ignored_signals_ignored():
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)


def test_file_lock(tmp_path):
    path = tmp_path / "x.lock"
    with file_lock(path) as a:
        assert a is True
        code = f"""
            from kquant.io.fsutil import file_lock
            with file_lock({str(path)!r}, blocking=False) as got:
                print(got)
        """
        p = run_script(code)
        out, err = p.communicate(timeout=60)
        assert out.strip() == "False", err  # held by this process
    p = run_script(code)
    assert p.communicate(timeout=60)[0].strip() == "True"
    assert path.exists()  # a lock file stays: removing it would race with a waiter


def test_track_inputs_records_reads_not_writes(tmp_path):
    src, out = tmp_path / "in.json", tmp_path / "out.bin"
    src.write_text("{}")
    with track_inputs():
        src.read_text()
        with open(out, "wb") as f:
            f.write(b"x")
        fd = os.open(src, os.O_RDONLY)
        os.close(fd)
        assert str(src) in inputs_read() and str(out) not in inputs_read()
        with pytest.raises(OutputError) as ei:
            with atomic_output(src, force=True) as f:
                f.write(b"overwritten")
        assert "same file as input" in str(ei.value)
        link = tmp_path / "link"
        os.link(src, link)
        with pytest.raises(OutputError):
            with atomic_output(link, force=True) as f:
                f.write(b"overwritten")
        with atomic_output(src, force=True, replaces_input=True) as f:  # a state file, by design
            f.write(b"{}")
    assert inputs_read() == []  # the record ends with the outermost block
    assert leftovers(tmp_path) == []


def test_input_read_after_creation_is_refused_at_commit(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"data")
    with track_inputs():
        with pytest.raises(OutputError):
            with atomic_output(src, force=True) as f:
                src.read_bytes()  # read while writing (a shard is read after the output exists)
                f.write(b"x")
    assert src.read_bytes() == b"data" and leftovers(tmp_path) == []


@pytest.mark.parametrize("first", ["in_del", "during_hook"])
def test_unraisable_hook_delivers_after_it_returns(first):
    """A KeyboardInterrupt of ours that Python could only print ("Exception ignored in" __del__), and a
    signal arriving while the unraisable hook runs: raised once in the main program after the hook
    has returned (exit 130 through Python's handling), never printed as an ignored exception."""
    p = run_script(f"""
        import os, signal, sys, threading, time
        from kquant.io import fsutil
        fsutil.install_interrupt_handlers()
        slow = lambda u: time.sleep(0.3)  # the hook being wrapped: long enough for a signal to land in it
        sys.unraisablehook = fsutil.unraisable_hook(slow)
        class D:
            def __del__(self):
                if "{first}" == "in_del":
                    os.kill(os.getpid(), signal.SIGINT)  # interrupt_once raises inside __del__: unraisable
                    for _ in range(1000):
                        pass
                else:
                    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT)).start()
                    raise ValueError("an ordinary unraisable")  # the hook then sleeps in `slow`
        try:
            D()
            for _ in range(300):
                time.sleep(0.01)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted in main", fsutil.interrupt_signal())
    """)
    out, err = p.communicate(timeout=60)
    assert out.split() == ["interrupted", "in", "main", str(int(signal.SIGINT))] and "Exception ignored" not in err, (out, err)
