"""Helpers for tests that run kquant in a child process and signal it."""

import signal


def default_sigint() -> None:
    """Popen(preexec_fn=...): give the child SIGINT's default action. Commands started in the
    background by a non-interactive shell (as CI may start the suite) inherit SIGINT *ignored*
    (POSIX), and Python then keeps ignoring it, so a test sending SIGINT would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
