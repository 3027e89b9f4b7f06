"""A Prefect cluster made of local processes: a server and process workers.

What the compose stack runs in containers, started as plain processes: used by the tests, the
orchestration benchmark, and for trying a cluster on one machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT = 120.0


def prefect_executable() -> str:
    """The `prefect` command of this environment (beside the interpreter), else the one on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "prefect"
    return str(beside) if beside.is_file() else (shutil.which("prefect") or "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class LocalCluster:
    """A Prefect server process and worker processes sharing one environment (`env`)."""

    home: Path
    logs: Path
    database_url: str | None = None
    extra_env: dict = field(default_factory=dict)
    ui: bool = False  # serve the Prefect UI too (at `ui_url`)
    url: str = ""
    env: dict = field(default_factory=dict)
    server: subprocess.Popen | None = None
    workers: dict = field(default_factory=dict)

    def start(self) -> "LocalCluster":
        import httpx

        port = free_port()
        self.url = f"http://127.0.0.1:{port}/api"
        self.env = dict(
            os.environ,
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED=str(self.ui).lower(),
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_HEARTBEAT_SECONDS="5",
            PREFECT_RUNNER_POLL_FREQUENCY="2",
            PYTHONPATH=str(PROJECT_DIR),
            **self.extra_env,
        )
        if self.database_url:
            self.env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / "server.log", "ab")
        self.server = subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start: see {self.logs / 'server.log'}")
            time.sleep(0.5)

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")

    def setup(self, inbox: str = "inbox", lost_after: float | None = None) -> None:
        """Work pools, queues, the prefect.yaml deployments and the lost-run automation
        (`controlnext-video setup-cluster`)."""
        extra = ["--lost-after", str(lost_after)] if lost_after is not None else []
        subprocess.run(
            [sys.executable, "-m", "flows.cli", "setup-cluster", "--inbox", inbox, "--project-dir", str(PROJECT_DIR),
             *extra],
            env=self.env, cwd=PROJECT_DIR, check=True, capture_output=True, timeout=300,
        )

    def start_worker(self, pool: str, name: str, *args: str, **extra_env) -> subprocess.Popen:
        """A process worker (`controlnext-video worker`, its default limit) in its own process group;
        `args` are more `worker` options (`--gpus 0,1`)."""
        return self.start_command(name, ["worker", "--pool", pool, "--name", name, *args], **extra_env)

    def start_command(self, name: str, args: list[str], **extra_env) -> subprocess.Popen:
        """A long-running `controlnext-video` command (a worker, the inbox watcher) in its own process
        group, stopped with the cluster (`kill_worker(name)` stops it before)."""
        log = open(self.logs / f"worker-{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            env=dict(self.env, **extra_env), cwd=PROJECT_DIR, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers[name] = proc
        return proc

    def kill_worker(self, name: str) -> None:
        """Kill a worker and every process under it (its flow runs have sessions of their own),
        as when its machine dies."""
        proc = self.workers.pop(name)
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> None:
        for name in list(self.workers):
            self.kill_worker(name)
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
