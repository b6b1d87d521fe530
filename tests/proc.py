"""Helpers for tests that run kquant in a child process and signal it."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent


def default_sigint() -> None:
    """Popen(preexec_fn=...): give the child SIGINT's default action. Commands started in the
    background by a non-interactive shell (as CI may start the suite) inherit SIGINT *ignored*
    (POSIX), and Python then keeps ignoring it, so a test sending SIGINT would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_mid_convert(tmp_path: Path, sig: int, writing: Callable[[Path], bool], *extra: str) -> Path:
    """Convert a 4-layer tiny model (scripts/make_tiny_model.py) to tmp_path / "o.gguf" as Q3_K_M on
    one thread (plus `extra` CLI args) in a child process; once `writing(tmp_path)` holds (at most
    120 s), send it `sig`, and assert it died of it (exit 128 + sig) without a traceback. Skips when
    the conversion finished first. Returns the output path, for the caller's checks."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_tiny_model import make

    m = make(tmp_path / "big", layers=4, hidden=512, heads=8, kv_heads=2, ffn=2048, vocab=4096, seed=3)
    out = tmp_path / "o.gguf"
    e = dict(os.environ, NUMBA_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "kquant.cli", "convert", str(m), "-o", str(out), "--type", "Q3_K_M",
                          "--threads", "1", "-q", *extra], stderr=subprocess.PIPE, text=True, env=e,
                         preexec_fn=default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not writing(tmp_path):
        if p.poll() is not None:
            break
        time.sleep(0.005)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("conversion finished before the signal arrived")
    assert p.returncode == 128 + sig, err
    assert "Traceback" not in err
    return out
