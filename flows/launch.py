"""Child process groups started by a run's process (multi-GPU segment runs, multi-process
fine-tuning): the launcher dies with the run's process, small JSON files carry progress and
failures back (written atomically, read while being written), and a launcher is stopped with a
grace period. No Prefect here: the ranks import this module too."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

# Seconds a launcher gets to stop its ranks after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_CHARS = 3000


def read_json(path: Path) -> dict | None:
    """The file's JSON, or None while it is absent or being replaced."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: dict) -> None:
    """Replace `path` atomically (another process reads it while this one writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def die_with_parent() -> None:
    """Have the kernel end this process when its parent dies (Linux), so that no rank outlives
    its launcher, nor the launcher the run's process."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop(launcher: subprocess.Popen) -> None:
    """End the launcher if it still runs (it stops its ranks on SIGTERM)."""
    if launcher.poll() is not None:
        return
    launcher.terminate()
    try:
        launcher.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()


def log_tail(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError:
        return ""


def free_port() -> int:
    """A free TCP port on the loopback interface (for a rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
