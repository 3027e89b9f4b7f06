"""Distributed rendering on a real Prefect server with real process workers (CPU, tiny model).

The deployments come from the project's prefect.yaml through `controlnext-video setup-cluster`;
two workers serve the `gpu` pool and one the `cpu` pool, as on a studio cluster.
"""

from __future__ import annotations

import shutil
import time
import uuid

import numpy as np
import pytest

from .conftest import small_request

pytestmark = pytest.mark.e2e

GPU_WORKERS = ("gpu-worker-a", "gpu-worker-b")
JOB_TIMEOUT = 420
# Seconds without a heartbeat before the lost-run automation marks a claimed or running segment run
# Crashed: its minimum (three 30 s heartbeats), to keep the tests short.
LOST_AFTER = 90


@pytest.fixture(scope="module")
def cluster(prefect_server):
    prefect_server.setup(inbox="unused-inbox", lost_after=LOST_AFTER)
    for name in GPU_WORKERS:
        prefect_server.start_worker("gpu", name)
    prefect_server.start_worker("cpu", "cpu-worker")
    yield prefect_server, prefect_server.workers
    for name in (*GPU_WORKERS, "cpu-worker"):
        prefect_server.kill_worker(name)


def runs_of_job(job_id: str) -> list:
    """The job's segment runs (the job's own runs carry its tag too)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"job:{job_id}"])))
    return [run for run in runs if any(tag.startswith("segment:") for tag in run.tags)]


def runs_per_segment(job_id: str) -> dict[int, list]:
    """Every run that was given each segment (a run may be given several)."""
    out: dict[int, list] = {}
    for run in runs_of_job(job_id):
        for tag in run.tags:
            if tag.startswith("segment:"):
                out.setdefault(int(tag.split(":")[1]), []).append(run)
    return out


def wait_for(run_id, timeout: float = JOB_TIMEOUT):
    """The flow run once it reaches a final state."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run.name} still {run.state.name if run.state else '?'}")
            time.sleep(2)


def worker_of(run, workers: dict) -> str | None:
    """The worker whose process tree runs the flow run (its infrastructure pid is `host:pid`)."""
    from flows.localcluster import descendants

    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    return next((name for name, proc in workers.items() if pid in descendants(proc.pid)), None)


def blended(store_url: str, job_id: str, frames: int) -> np.ndarray:
    from storage import ArtifactStore, JobLayout

    from controlnext_video.video import decode_png

    store, layout = ArtifactStore(store_url), JobLayout(job_id)
    return np.stack([decode_png(store.read_bytes(layout.output_frame(i))) for i in range(frames)])


def test_prefect_yaml_deployments(cluster):
    from prefect import get_client

    from flows.localcluster import PROJECT_DIR
    from flows.settings import Environment

    with get_client(sync_client=True) as client:
        segment = client.read_deployment_by_name("render-segment/gpu")
        render = client.read_deployment_by_name("render/farm")
        inbox = client.read_deployment_by_name("inbox/submissions")
        queues = {q.name: q.priority for q in client.read_work_queues(work_pool_name="gpu")}
        pools = {pool: client.read_work_pool(pool).concurrency_limit for pool in ("cpu", "gpu")}
    assert segment.work_pool_name == "gpu" and render.work_pool_name == "cpu"
    assert pools == {"cpu": 8, "gpu": None}  # many jobs at once; a GPU worker takes one segment run
    # the form's defaults: what the workers use, visible, and the GPU pool as the place segments render
    environment = Environment.read()  # the setup's: relative paths are the workers' (from the project folder)
    assert render.parameters == {"request": dict(model=str((PROJECT_DIR / environment.model_dir).resolve()),
                                                 store=str((PROJECT_DIR / environment.store).resolve()),
                                                 dispatch="deployment")}
    assert not inbox.schedules and inbox.global_concurrency_limit.limit == 1  # watch-inbox starts it, one at a time
    assert queues["rush"] < queues["default"] < queues["batch"]


def test_fan_out_matches_in_process(cluster, local_job, tmp_path):
    from flows.render import render

    server, _ = cluster
    request, local_result, _ = local_job
    distributed = request.model_copy(update=dict(dispatch="deployment", store=str(tmp_path / "store"), output=""))
    state = render(distributed, return_state=True)
    assert state.is_completed(), f"{state.message}\n{server.log_tail()}"
    result = state.result()
    assert result["job_id"] == local_result["job_id"]  # same request, same job: only the store differs
    n = result["ingest"]["num_frames"]
    a = blended(request.store, local_result["job_id"], n).astype(np.float64) / 255
    b = blended(distributed.store, result["job_id"], n).astype(np.float64) / 255
    assert np.abs(a - b).max() <= 1e-5  # frames before encoding: identical
    from storage import ArtifactStore, JobLayout

    store, layout = ArtifactStore(distributed.store), JobLayout(result["job_id"])
    workers = {store.read_json(layout.segment_record(s[0]))["worker"] for s in result["segments"]}
    assert len(result["segments"]) >= 4 and workers == set(GPU_WORKERS), workers


def test_output_on_a_worker_is_byte_identical_to_in_process(cluster, local_job, tmp_path):
    """The same job encoded on the cpu worker (another process, another CPU set) and in this process."""
    from prefect.deployments import run_deployment

    server, _ = cluster
    request, _, out = local_job
    remote = request.model_copy(update=dict(store=str(tmp_path / "store"), output=str(tmp_path / "remote.mp4")))
    final = wait_for(run_deployment("render/farm", parameters={"request": remote.model_dump()}, timeout=0).id)
    assert final.state.is_completed(), f"{final.state.message}\n{server.log_tail()}"
    assert (tmp_path / "remote.mp4").read_bytes() == (out / "result.mp4").read_bytes()


def test_killed_worker_costs_only_its_unfinished_segments(cluster, tiny_model, clip_inputs, tmp_path):
    """A worker killed mid-segment, its run given two segments: what it had not finished is
    resubmitted to the other worker; every finished segment was rendered once."""
    from prefect.deployments import run_deployment
    from storage import ArtifactStore, JobLayout

    server, workers = cluster
    reference, driving = clip_inputs
    store_url = str(tmp_path / "store")
    request = small_request(reference, driving, tiny_model, store_url, dispatch="deployment", steps=16,
                            segments_per_run=2, job_id=f"kill-{uuid.uuid4().hex[:8]}")
    parent = run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0)
    store, layout = ArtifactStore(store_url), JobLayout(request.job_id)

    victim_segment = victim = None
    deadline = time.monotonic() + JOB_TIMEOUT
    while victim is None and time.monotonic() < deadline:
        for run in runs_of_job(request.job_id):
            group = sorted(int(t.split(":")[1]) for t in run.tags if t.startswith("segment:"))
            unfinished = [s for s in group if not store.exists(layout.segment_record(s))]
            if run.state.is_running() and unfinished and run.infrastructure_pid:
                victim_segment, victim = unfinished[0], worker_of(run, workers)
                break
        time.sleep(0.5)
    assert victim in GPU_WORKERS, server.log_tail()
    time.sleep(3)  # well inside the segment
    finished_before = {s for s in range(8) if store.exists(layout.segment_record(s))}
    server.kill_worker(victim)
    server.start_worker("gpu", victim)  # the machine comes back later; the job must not wait

    final = wait_for(parent.id)
    assert final.state.is_completed(), f"{final.state.message}\n{server.log_tail()}"
    runs = runs_per_segment(request.job_id)
    summary = {s: [(r.name, r.state.name, (r.state.message or "")[:200]) for r in rs] for s, rs in runs.items()}
    assert any(sum(t.startswith("segment:") for t in r.tags) == 2 for r in runs_of_job(request.job_id)), summary
    assert len(runs[victim_segment]) == 2, (victim_segment, summary)
    victim_run = min(runs[victim_segment], key=lambda r: r.created)
    victim_group = {int(t.split(":")[1]) for t in victim_run.tags if t.startswith("segment:")}
    for segment, segment_runs in runs.items():
        if segment in finished_before or segment not in victim_group:
            assert len(segment_runs) == 1, (segment, summary)  # finished or elsewhere: rendered once
        else:
            assert len(segment_runs) == 2, (segment, summary)  # the lost run's unfinished ones: once more
    assert store.read_json(layout.segment_record(victim_segment))["attempt"] == 2

    again = wait_for(run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0).id)
    assert again.state.is_completed()
    assert runs_of_job(request.job_id) and len(runs_of_job(request.job_id)) == len({r.id for rs in runs.values() for r in rs})


def test_worker_killed_while_its_run_is_pending_is_replaced(cluster, tiny_model, clip_inputs, tmp_path):
    """SIGKILL of the only gpu worker after it claimed a run (Pending: its process starting): the
    lost-run automation marks the run Crashed and its segments go to a second worker."""
    from prefect.deployments import run_deployment
    from storage import ArtifactStore, JobLayout

    server, workers = cluster
    first, second = GPU_WORKERS
    server.kill_worker(second)
    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, str(tmp_path / "store"), dispatch="deployment",
                            segments_per_run=8, job_id=f"pend-{uuid.uuid4().hex[:8]}")
    parent = run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not any(r.state and r.state.type.value == "PENDING" for r in runs_of_job(request.job_id)):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        server.kill_worker(first)  # its machine dies while the run's process starts
        server.start_worker("gpu", second)
        final = wait_for(parent.id, timeout=JOB_TIMEOUT + LOST_AFTER)
    finally:
        for name in GPU_WORKERS:
            if name not in workers:
                server.start_worker("gpu", name)
    assert final.state.is_completed(), f"{final.state.message}\n{server.log_tail()}"
    runs = sorted(runs_of_job(request.job_id), key=lambda r: r.created)
    assert [r.state.name for r in runs] == ["Crashed", "Completed"], [(r.name, r.state.name) for r in runs]
    assert "no heartbeat for 90 s (claimed or running)" in runs[0].state.message
    store, layout = ArtifactStore(request.store), JobLayout(request.job_id)
    records = [store.read_json(k) for k in store.list(layout.segments) if k.endswith("record.json")]
    assert records and {(r["attempt"], r["worker"]) for r in records} == {(2, second)}


# Prefect marks a run Late once it is this many seconds past its start (15 s) and its service looked (every 5 s).
LATE_AFTER = 20


def test_two_jobs_start_at_once_and_queued_segments_are_never_late(cluster, tiny_model, clip_inputs, tmp_path):
    """Two jobs submitted together run at once on the one cpu worker; their segment runs wait for the
    two GPU workers in the Queued state, never Late, and are named after their job, segment and try."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    server, _ = cluster
    reference, driving = clip_inputs
    jobs = [f"pair-{seed}-{uuid.uuid4().hex[:6]}" for seed in (1, 2)]
    requests = [small_request(reference, driving, tiny_model, str(tmp_path / "store"), seed=seed, steps=6,
                              segments_per_run=1, job_id=job) for seed, job in zip((1, 2), jobs)]
    parents = [run_deployment("render/farm", parameters={"request": r.model_dump()}, timeout=0) for r in requests]
    deadline = time.monotonic() + JOB_TIMEOUT
    with get_client(sync_client=True) as client:
        while not all((state := client.read_flow_run(p.id).state).is_running() for p in parents):
            assert not state.is_final() and time.monotonic() < deadline, f"{state}\n{server.log_tail()}"
            time.sleep(0.5)
    finals = [wait_for(p.id) for p in parents]
    assert all(f.state.is_completed() for f in finals), f"{[f.state for f in finals]}\n{server.log_tail()}"
    assert [f.name for f in finals] == [f"render-driving-{job}-run-1" for job in jobs]

    segment_runs = [run for job in jobs for run in runs_of_job(job)]
    waits = [(run.start_time - run.created).total_seconds() for run in segment_runs]
    assert max(waits) > LATE_AFTER, waits  # some waited long enough to be marked Late, were they Scheduled
    with get_client(sync_client=True) as client:
        histories = {run.name: [s.name for s in client.read_flow_run_states(run.id)] for run in segment_runs}
    assert all(history[:2] == ["Queued", "Pending"] and "Late" not in history for history in histories.values()), \
        histories
    expected = {f"{job}-segment-{k}-try-1" for job in jobs for k in range(len(segment_runs) // 2)}
    assert set(histories) == expected


def test_cancelling_a_job_stops_its_segments(cluster, tiny_model, clip_inputs, tmp_path):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    server, _ = cluster
    reference, driving = clip_inputs
    request = small_request(reference, driving, tiny_model, str(tmp_path / "store"), dispatch="deployment", steps=40,
                            job_id=f"cancel-{uuid.uuid4().hex[:8]}")
    parent = run_deployment("render/farm", parameters={"request": request.model_dump()}, timeout=0)
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        if any(r.state and r.state.is_running() for r in runs_of_job(request.job_id)):
            break
        time.sleep(1)
    else:
        pytest.fail("no segment started\n" + server.log_tail())
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(parent.id, Cancelling(message="cancelled by the test"), force=True)
    wait_for(parent.id, timeout=300)
    deadline = time.monotonic() + 300  # the server's cancellation service and the worker's check both poll
    while time.monotonic() < deadline:
        active = [r for r in runs_of_job(request.job_id) if r.state and not r.state.is_final()]
        if not active:
            break
        time.sleep(2)
    assert not active, [(r.name, r.state.name) for r in active]
    segments_started = len(runs_of_job(request.job_id))
    time.sleep(8)
    assert len(runs_of_job(request.job_id)) == segments_started  # nothing new started after the cancel


def test_segment_failing_on_bad_input_fails_the_job_once(cluster, tiny_model, clip_inputs, tmp_path):
    from flows.render import render

    server, _ = cluster
    reference, driving = clip_inputs
    # weights that pass the job's file check but not the strict load on the worker
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    state_dict = load_file(str(model / "controlnext.safetensors"))
    state_dict.pop(sorted(state_dict)[0])
    save_file(state_dict, str(model / "controlnext.safetensors"))
    request = small_request(reference, driving, model, str(tmp_path / "store"),
                            dispatch="deployment", job_id=f"bad-{uuid.uuid4().hex[:8]}")
    state = render(request, return_state=True)
    assert state.is_failed()
    assert "segment" in state.message and "missing" in state.message, state.message
    runs = runs_per_segment(request.job_id)
    assert runs and all(len(r) == 1 for r in runs.values()), runs  # no retry loop
