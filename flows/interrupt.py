"""Stopping a render from the terminal (Ctrl-C) or a process manager (SIGTERM), at any point.

Python delivers a signal as a `KeyboardInterrupt` wherever the main thread happens to be, and
some places swallow it: an exception raised inside a finaliser (`__del__`, common while weights
load) is printed as "Exception ignored in ..." and dropped, and a framework may catch it in its
own bookkeeping. So a stop request is also a flag, checked at the render's safe points (after
the model loads, every denoising step, between segments), and a watchdog ends the process if it
has not stopped within `GRACE_SECONDS`. A second signal ends it at once. Either way nothing is
half-written: every artifact is written to a temporary file and renamed into place, and what
a killed write leaves behind is swept when its segment is resubmitted or the job finishes. Rerun
the same command to resume.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Seconds a stop request may take before the watchdog ends the process.
GRACE_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested = threading.Event()
_signal_number = [0]
_active: list[float] = []  # the grace of each `stop_on_signals` block in force


class RenderInterrupted(KeyboardInterrupt):
    """The render was asked to stop by a signal."""

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + (_signal_number[0] or signal.SIGINT)


def check() -> None:
    """Raise `RenderInterrupted` if a stop was requested (a safe point of the render)."""
    if _requested.is_set():
        raise RenderInterrupted(f"stopped by {signal.Signals(_signal_number[0]).name}")


def _end_now() -> None:
    """Stop the process now: end its children (the embedded Prefect server) and exit."""
    from .localcluster import descendants

    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sys.stderr.flush()
    os._exit(RenderInterrupted().exit_code)


def _watchdog(grace: float) -> None:
    threading.Event().wait(grace)
    print(f"\nstill running {grace:.0f} s after the stop request: stopping now", file=sys.stderr)
    _end_now()


def _handle(grace: float, signum, frame) -> None:
    if _requested.is_set():
        _end_now()
    _signal_number[0] = signum
    _requested.set()
    print(f"\n{signal.Signals(signum).name}: stopping; finished segments are kept, run the same command again "
          "to resume (a second signal stops at once)", file=sys.stderr)
    threading.Thread(target=_watchdog, args=(grace,), name="stop-watchdog", daemon=True).start()
    raise RenderInterrupted(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def stop_on_signals(grace: float = GRACE_SECONDS) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM stop the render as described above (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, functools.partial(_handle, grace)) for sig in STOP_SIGNALS}
    _active.append(grace)
    try:
        yield
    finally:
        _active.pop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def inside_flow_run() -> Iterator[None]:
    """Keep the stop handlers in force inside a flow run's body.

    Prefect's engine installs its own SIGTERM handler for every flow run (it raises an exception,
    which a finaliser swallows like any other). While a `stop_on_signals` block is in force in
    this process (a CLI render), ours take precedence; elsewhere (a worker's flow-run process)
    Prefect's handling is left as it is.
    """
    if not _active:
        yield
        return
    with stop_on_signals(_active[-1]):
        yield
