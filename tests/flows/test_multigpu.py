"""A worker that owns two "GPUs" (CPU processes here) renders every segment with both, fused at
every step: the same video as one process, and a lost rank costs a resubmitted run, not the job.

A real Prefect server with process workers; the ranks are started by PyTorch's launcher.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .conftest import small_request
from .test_distributed import JOB_TIMEOUT, runs_per_segment, wait_for

pytestmark = pytest.mark.e2e

WORKER = "gpu-pair"
RANK_TIMEOUT = 10.0
# Seconds beyond the rank timeout for the launcher to end its ranks and the run to report.
STOP_SLACK = 25.0


@pytest.fixture(scope="module")
def pair(prefect_server):
    prefect_server.setup(inbox="unused-inbox")
    prefect_server.start_worker("gpu", WORKER, "--gpus", "0,1")
    prefect_server.start_worker("cpu", "cpu-worker-pair")
    yield prefect_server
    for name in (WORKER, "cpu-worker-pair"):
        prefect_server.kill_worker(name)


def rank_processes(worker_pid: int) -> dict[int, int]:
    """rank -> pid of the worker's rank processes (`python -m flows.ranks`)."""
    from flows.localcluster import descendants

    found = {}
    for pid in descendants(worker_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if b"flows.ranks" in cmdline and b"RANK" in environ:
            found[int(environ[b"RANK"])] = pid
    return found


def test_two_gpu_worker_gives_the_single_process_video(pair, local_job, tmp_path):
    from flows.render import render
    from storage import ArtifactStore, JobLayout

    request, local_result, out = local_job
    fused = request.model_copy(update=dict(dispatch="deployment", store=str(tmp_path / "store"),
                                           output=str(tmp_path / "fused.mp4")))
    state = render(fused, return_state=True)
    assert state.is_completed(), f"{state.message}\n{pair.log_tail()}"
    result = state.result()
    assert (tmp_path / "fused.mp4").read_bytes() == (out / "result.mp4").read_bytes()
    store, layout = ArtifactStore(fused.store), JobLayout(result["job_id"])
    records = [store.read_json(layout.segment_record(s[0])) for s in result["segments"]]
    assert {(r["gpus"], r["worker"], tuple(r["devices"])) for r in records} == {(2, WORKER, ("cpu", "cpu"))}
    report = store.read_text(layout.report)
    assert "| GPUs |" in report and f"| {WORKER} | 1 | 2 × cpu |" in report, report


def test_a_killed_rank_fails_the_run_and_the_job_completes(pair, tiny_model, clip_inputs, tmp_path):
    from prefect.deployments import run_deployment
    from storage import ArtifactStore, JobLayout

    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, str(tmp_path / "store"), dispatch="deployment", steps=12,
                            max_frames=14, segments_per_run=2, rank_timeout=RANK_TIMEOUT,
                            job_id=f"rank-kill-{uuid.uuid4().hex[:8]}")  # 2 segments, one run
    parent = run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0)
    scratch = Path(pair.env["CONTROLNEXT_WORK_DIR"]) / request.job_id
    deadline = time.monotonic() + JOB_TIMEOUT
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, pair.log_tail()
        for progress in scratch.glob("ranks-*/progress.json"):
            step = json.loads(progress.read_text())
            ranks = rank_processes(pair.workers[WORKER].pid)
            if 1 <= step["step"] <= step["total"] - 4 and 1 in ranks:
                victim, segment = ranks[1], step["segment"]
        time.sleep(0.2)
    os.kill(victim, signal.SIGKILL)
    killed_at = datetime.now(timezone.utc)

    final = wait_for(parent.id, timeout=2 * JOB_TIMEOUT)
    assert final.state.is_completed(), f"{final.state.message}\n{pair.log_tail()}"
    runs = sorted(runs_per_segment(request.job_id)[segment], key=lambda r: r.created)
    assert [r.state.name for r in runs] == ["Crashed", "Completed"], [(r.name, r.state.name) for r in runs]
    assert "GPU processes lost" in runs[0].state.message
    assert (runs[0].state.timestamp - killed_at).total_seconds() < RANK_TIMEOUT + STOP_SLACK
    assert not rank_processes(pair.workers[WORKER].pid)  # none left behind
    store, layout = ArtifactStore(request.store), JobLayout(request.job_id)
    record = store.read_json(layout.segment_record(segment))
    assert record["attempt"] == 2 and record["gpus"] == 2
    for frame in record["frames"]:  # every recorded frame is there, whole
        assert store.sha256(layout.segment_frame(segment, frame["frame"])) == frame["sha256"]


def test_in_process_render_uses_the_gpus_it_is_given(prefect_server, local_job, tmp_path, monkeypatch):
    """`CONTROLNEXT_GPUS=0,1 controlnext-video render ...` without a cluster: the same frames."""
    from flows.render import render
    from storage import ArtifactStore, JobLayout

    from .test_distributed import blended

    request, local_result, _ = local_job
    monkeypatch.setenv("CONTROLNEXT_GPUS", "0,1")
    fused = request.model_copy(update=dict(store=str(tmp_path / "store"), output=""))
    state = render(fused, return_state=True)
    assert state.is_completed(), state.message
    n = local_result["ingest"]["num_frames"]
    assert (blended(fused.store, local_result["job_id"], n) == blended(request.store, local_result["job_id"], n)).all()
    store, layout = ArtifactStore(fused.store), JobLayout(local_result["job_id"])
    assert {store.read_json(layout.segment_record(s[0]))["gpus"] for s in local_result["segments"]} == {2}
