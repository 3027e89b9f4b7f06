"""One real Prefect server per test session (started once: ~10-15 s), plus helpers for workers.

The server runs in its own process with its own PREFECT_HOME and SQLite database; the test
process talks to it through PREFECT_API_URL. Workers are real `prefect worker` processes.
"""

from __future__ import annotations

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
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


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
