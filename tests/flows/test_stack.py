"""The compose stack's services without containers: Prefect server on PostgreSQL, an S3 object
store, one CPU worker and one "GPU" worker (on the CPU, tiny model), running one job end to end
with every artifact in the object store: the wiring of docker/compose.yaml, exercised."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import pytest

from .conftest import small_request

pytestmark = pytest.mark.e2e

BUCKET = "renders"
JOB_TIMEOUT = 600


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
    import logging

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
    try:
        import s3fs

        s3fs.S3FileSystem().call_s3("create_bucket", Bucket=BUCKET)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def test_stack_runs_a_job_end_to_end(postgres, object_store, tiny_model, clip_inputs, tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from controlnext_video.video import probe
    from flows.localcluster import LocalCluster
    from storage import ArtifactStore

    store_url = f"s3://{BUCKET}/artifacts"
    inputs = ArtifactStore(f"s3://{BUCKET}/uploads")
    reference, driving = clip_inputs
    inputs.put_file(reference, "actor.png")
    inputs.put_file(driving, "dance.mp4")

    env = dict(object_store, CONTROLNEXT_STORE=store_url, CONTROLNEXT_MODEL_DIR=str(tiny_model),
               CONTROLNEXT_WORK_DIR=str(tmp_path / "scratch"))
    cluster = LocalCluster(tmp_path / "home", tmp_path / "logs", database_url=postgres, extra_env=env).start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: cluster.url}):
            cluster.setup(inbox=f"s3://{BUCKET}/inbox")
            cluster.start_worker("cpu", "stack-cpu")
            cluster.start_worker("gpu", "stack-gpu-0")
            request = small_request(inputs.url("actor.png"), inputs.url("dance.mp4"), tiny_model, store_url,
                                    dispatch="deployment", output=f"s3://{BUCKET}/delivered/dance-actor.mp4")
            run = run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0)
            deadline = time.monotonic() + JOB_TIMEOUT
            with get_client(sync_client=True) as client:
                while not (state := client.read_flow_run(run.id).state).is_final():
                    assert time.monotonic() < deadline, cluster.log_tail()
                    time.sleep(2)
            assert state.is_completed(), f"{state.message}\n{cluster.log_tail()}"
        delivered = ArtifactStore(f"s3://{BUCKET}/delivered")
        local = delivered.get_file("dance-actor.mp4", tmp_path / "out.mp4")
        info = probe(local)
        assert info.fps == Fraction(30000, 1001) / 2 and info.has_audio
        jobs = ArtifactStore(store_url)
        job_ids = jobs.children("jobs")
        assert len(job_ids) == 1
        records = [k for k in jobs.list(f"jobs/{job_ids[0]}/segments") if k.endswith("record.json")]
        assert len(records) >= 4 and all(jobs.read_json(k)["worker"] == "stack-gpu-0" for k in records)
        assert jobs.exists(f"jobs/{job_ids[0]}/output/report.md")
    finally:
        cluster.stop()
