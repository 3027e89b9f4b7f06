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
import time
from collections.abc import Callable
from pathlib import Path

# Seconds a launcher gets to stop its ranks after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_CHARS = 3000
# Seconds between two looks of the run's process at its children (progress, end, stop requests).
POLL_SECONDS = 0.5
PROJECT_DIR = Path(__file__).resolve().parents[1]


def child_environment(gpus: tuple[str, ...], threads: int | None = None) -> dict[str, str]:
    """The children's environment: their GPUs (none: the CPU), the project on the path, loopback
    networking, and on the CPU `threads` threads each when given (unless the environment sets them)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH")) if p))
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    elif threads is not None:
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def follow(launcher: subprocess.Popen, progress_file: Path, on_progress: Callable[[dict], None],
           check: Callable[[], None], also: Callable[[], None] = lambda: None) -> None:
    """Wait for the launcher. Every poll: `check()` (it may raise to stop the children), the
    progress file's content to `on_progress` when it changed, then `also()`."""
    seen = None
    while launcher.poll() is None:
        check()
        progress = read_json(progress_file)
        if progress is not None and progress != seen:
            seen = progress
            on_progress(progress)
        also()
        time.sleep(POLL_SECONDS)


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
