"""One real Prefect server per test session (started once: ~10-15 s), plus helpers for workers.

The server runs in its own process with its own PREFECT_HOME and SQLite database; the test
process talks to it through PREFECT_API_URL. Workers are real `prefect worker` processes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")
SERVER_START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    url: str
    env: dict
    home: Path
    logs: Path
    workers: list = field(default_factory=list)

    def start_worker(self, pool: str, name: str, **extra_env) -> subprocess.Popen:
        """A real process worker; its own process group, so a test can kill it with its runs."""
        log = open(self.logs / f"worker-{name}.log", "ab")
        env = dict(self.env, WORKER_ID=name, **extra_env)
        proc = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool, "--name", name, "--limit", "1", "--type", "process"],
            env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        """Kill a worker and every process under it (its flow runs have sessions of their own),
        as when the machine dies."""
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("prefect-logs")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(
        os.environ,
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_HEARTBEAT_SECONDS="5",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        PYTHONPATH=str(REPO_ROOT),
        CONTROLNEXT_WORK_DIR=str(tmp_path_factory.mktemp("work")),
    )
    log = open(logs / "server.log", "ab")
    server = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not start: see {logs / 'server.log'}")
        time.sleep(0.5)
    info = PrefectServer(url, env, home, logs)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield info
    finally:
        from prefect.logging.handlers import APILogHandler

        for handler in logging.getLogger("prefect").handlers:  # send run logs before the server goes
            if isinstance(handler, APILogHandler):
                handler.flush()
        for proc in info.workers:
            info.kill(proc)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from controlnext_video.factory import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="session")
def clip_inputs(tmp_path_factory):
    """A reference image and a 2 s driving clip at 30000/1001 fps with a tone track."""
    from flows.demo import make_demo_inputs

    return make_demo_inputs(tmp_path_factory.mktemp("inputs"), seconds=2.0, fps=Fraction(30000, 1001))


def small_request(reference, driving, model, store, **overrides):
    """Quick settings for tests: tiny frames, few steps, several segments."""
    from flows.request import RenderRequest

    settings = dict(
        reference=str(reference), driving=str(driving), model=str(model), store=str(store),
        height=96, width=64, steps=2, window=4, overlap=1, stride=2, decode_chunk_size=4,
        segment_length=8, segment_overlap=2, seed=7,
    )
    settings.update(overrides)
    return RenderRequest(**settings)


@pytest.fixture(scope="session")
def local_job(prefect_server, tiny_model, clip_inputs, tmp_path_factory):
    """One job rendered in-process (segments in this process), shared by the tests that need it."""
    from flows.render import render

    reference, driving = clip_inputs
    out = tmp_path_factory.mktemp("local-job")
    request = small_request(reference, driving, tiny_model, out / "store", output=str(out / "result.mp4"))
    state = render(request, return_state=True)
    assert state.is_completed(), state.message
    return request, state.result(), out


def log_tail(server: PrefectServer, lines: int = 40) -> str:
    """The end of every worker log, for assertion messages."""
    parts = []
    for path in sorted(server.logs.glob("worker-*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(parts)
