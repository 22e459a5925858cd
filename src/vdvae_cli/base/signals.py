"""What SIGINT, SIGTERM and SIGHUP do to the ``vdvae`` program, from its first instruction.

A signal can arrive at any moment: while Python imports torch (a KeyboardInterrupt raised inside
an import leaves half-initialised modules behind, and the next import of them fails with an
unrelated error), while a worker thread runs a kernel (unwinding the main thread then ends in
``terminate called without an active exception``), or between two writes of an image. So the
program does not unwind at all: the handler removes the temporary files being written (the one
registry, :data:`vdvae_cli.base.safety.LIVE_TEMPS`; every finished file was renamed into place
whole, and a download's resumable ``.part`` file stays), flushes what stdout already holds
(complete JSON records), writes one line and ends the process with 128 + the signal's number
(130 for Ctrl-C, 143 for SIGTERM). Installed by the entry point (:mod:`vdvae_cli._entry`) before
anything else is imported; the in-process API (``CliRunner``, ``import vdvae_cli``) keeps
Python's own behaviour.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

_WORDS: dict[int, str] = {int(signal.SIGINT): "interrupted"}


def _on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    safety = sys.modules.get("vdvae_cli.base.safety")
    cleanup = getattr(safety, "cleanup_temps", None)
    if cleanup is not None:
        try:
            cleanup()
        except Exception:  # noqa: BLE001  (a registry caught mid-update: the next exit retries nothing)
            pass
    try:
        sys.stdout.flush()  # whole records already written stay whole; a write cut mid-way cannot be helped
    except Exception:  # noqa: BLE001  (a reentrant flush, a closed pipe)
        pass
    word = _WORDS.get(signum, "terminated")
    try:
        os.write(2, f"error: {word}\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def install_exit_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP end the process at once and cleanly (see the module)."""
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            if signal.getsignal(sig) == signal.SIG_IGN:  # nohup, or a shell's background job: keep ignoring it
                continue
            signal.signal(sig, _on_signal)
        except (ValueError, OSError):  # not the main thread, or not allowed here
            pass
