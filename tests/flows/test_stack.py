"""The compose stack's services without containers: Prefect server on PostgreSQL, an S3 object
store, one CPU worker and one "GPU" worker (on the CPU, tiny model), running one job end to end
with every artifact in the object store: the wiring of docker/compose.yaml, exercised."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from .conftest import BUCKET, small_request

pytestmark = pytest.mark.e2e

JOB_TIMEOUT = 600


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
