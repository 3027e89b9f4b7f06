"""One real Prefect server per test session (started once: ~10-15 s), shared by the flow tests.

The server runs in its own process with its own PREFECT_HOME and SQLite database; the test
process talks to it through PREFECT_API_URL. Workers are real `prefect worker` processes.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "renders"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """The session's Prefect server (a `LocalCluster`); the test process is its client."""
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.localcluster import LocalCluster

    cluster = LocalCluster(
        tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("prefect-logs"),
        extra_env=dict(CONTROLNEXT_WORK_DIR=str(tmp_path_factory.mktemp("work"))),
    ).start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: cluster.url}):
            yield cluster
    finally:
        for handler in logging.getLogger("prefect").handlers:  # send run logs before the server goes
            if isinstance(handler, APILogHandler):
                handler.flush()
        cluster.stop()


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
def local_job_progress() -> list[tuple[str, float, str]]:
    """Every update of the progress bars during `local_job` (key, fraction done, text)."""
    return []


@pytest.fixture(scope="session")
def local_job(prefect_server, tiny_model, clip_inputs, tmp_path_factory, local_job_progress):
    """One job rendered in-process (segments in this process), shared by the tests that need it."""
    from flows.progress import add_listener, remove_listener
    from flows.render import render

    reference, driving = clip_inputs
    out = tmp_path_factory.mktemp("local-job")
    request = small_request(reference, driving, tiny_model, out / "store", output=str(out / "result.mp4"))

    def listener(key: str, fraction: float, text: str) -> None:
        local_job_progress.append((key, fraction, text))

    add_listener(listener)
    try:
        state = render(request, return_state=True)
    finally:
        remove_listener(listener)
    assert state.is_completed(), state.message
    return request, state.result(), out


def postgres_binary(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (initdb + pg_ctl), as the compose stack's `postgres` service."""
    from flows.localcluster import free_port

    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries not installed (CI installs Debian's postgresql: see .ci/run)")
    root = Path(tempfile.mkdtemp(prefix="controlnext-pg-"))
    root.chmod(0o755)
    data, port = root / "data", free_port()
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "prefect", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def object_store():
    """An S3-compatible server (moto) with the `renders` bucket, as the `object-store` service."""
    from moto.server import ThreadedMotoServer

    from flows.localcluster import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = dict(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="stack-test",
               AWS_SECRET_ACCESS_KEY="stack-test-secret", AWS_DEFAULT_REGION="us-east-1")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    # fsspec caches filesystem instances: one made for an earlier module's server would point at
    # that (stopped) server's port
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3fs.S3FileSystem().call_s3("create_bucket", Bucket=BUCKET)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
