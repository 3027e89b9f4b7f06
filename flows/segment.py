"""The `render-segment` flow: renders one or more segments of a job, in turn, on whichever worker
picks it up.

The pipeline is loaded once per process and reused by every segment that process renders (a run
given several segments pays for loading once). For each segment the flow writes its frames and then
its record (atomically): a segment whose record exists is done and is never rendered again. It
reports per-step progress to its job (`flows.progress.SegmentSteps`). Liveness and cancellation are
Prefect's (see `flows.dispatch`): the run sends flow-run heartbeats, and the server cancels it when its job is cancelled.

On a worker that owns several GPUs (`worker --gpus`), the run renders each segment with one
process per GPU fused at every step (`flows.ranks`, up to the request's `gpus_per_segment`); a
run whose GPU processes were lost ends Crashed, so the job resubmits its unfinished segments.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.states import Crashed

from . import interrupt
from .progress import SegmentSteps
from .ranks import RanksLost, launch_ranks, segment_gpus
from .stages import (JobContext, get_pipeline, load_plan, render_segment_frames, segment_done, segment_record,
                     window_balance, write_segment_record)


def _run_name() -> str:
    from prefect.runtime import flow_run as current_run

    from .dispatch import segments_name

    params = current_run.parameters
    return (f"{params.get('job_id', 'job')}-{segments_name(tuple(params.get('segments') or (0,)))}"
            f"-try-{params.get('attempt', 1)}")


@flow(name="render-segment", flow_run_name=_run_name, log_prints=True)
def render_segment(store: str, job_id: str, segments: list[int], attempt: int = 1) -> list[dict]:
    """Render `segments` of a job in turn (frames and a record each, into the job's store folder)."""
    if not segments:
        raise ValueError("render-segment needs at least one segment index")
    with interrupt.inside_flow_run():
        job = JobContext.open(store, job_id)
        gpus = segment_gpus(job.request.gpus_per_segment, job.env.gpus)
        if len(gpus) > 1:
            return _render_on_gpus(store, job, segments, attempt, gpus)
        records = []
        for segment in segments:
            interrupt.check()
            records.append(_render_one(JobContext.open(store, job_id), segment, attempt))
        return records


def _render_on_gpus(store: str, job: JobContext, segments: list[int], attempt: int, gpus: tuple[str, ...]):
    """Render the segments with one process per GPU; the records, or a Crashed state when GPU
    processes were lost (the job then resubmits the unfinished segments)."""
    logger = get_run_logger()
    if all(segment_done(job, s) for s in segments):
        logger.info("segments %s of %s already rendered: nothing to do", segments, job.layout.job_id)
        return [job.store.read_json(job.layout.segment_record(s)) for s in segments]
    logger.info("segments %s on %s GPUs (%s), fused at every step: %s", segments, len(gpus), ",".join(gpus),
                window_balance(job, load_plan(job), len(gpus)))
    steps: dict[int, SegmentSteps] = {}

    def on_step(segment: int, step: int, total: int) -> None:
        if segment not in steps:
            steps[segment] = SegmentSteps(job.store, job.layout.segment_progress(segment), job.layout.job_id, segment)
        steps[segment].update(step, total)

    try:
        records = launch_ranks(store, job, segments, attempt, gpus, on_step, interrupt.check)
    except RanksLost as exc:
        logger.error("%s", exc)
        return Crashed(message=str(exc).split("\n", 1)[0])
    for record in records:
        logger.info("segment %s: %s frames in %.1f s on %s GPUs of %s", record["segment"], len(record["frames"]),
                    record["render_seconds"], record.get("gpus", 1), record["worker"])
    return records


def _render_one(job: JobContext, segment: int, attempt: int) -> dict:
    logger = get_run_logger()
    if segment_done(job, segment):
        logger.info("segment %s of %s already rendered: nothing to do", segment, job.layout.job_id)
        return job.store.read_json(job.layout.segment_record(segment))
    request, started = job.request, time.time()
    pipe = get_pipeline(request.model, request.device, request.dtype, request.compile, request.channels_last)
    pipe.set_memory_limit(request.gpu_memory_gib or None)
    interrupt.check()  # a stop requested while loading (a signal there can be swallowed)
    loaded = time.time()
    steps = SegmentSteps(job.store, job.layout.segment_progress(segment), job.layout.job_id, segment)

    def on_step(step: int, total: int) -> None:
        interrupt.check()
        steps.update(step, total)

    frames = render_segment_frames(job, segment, pipe, on_step=on_step)
    record = segment_record(job, segment, attempt, frames, load_seconds=loaded - started,
                            render_seconds=time.time() - loaded)
    write_segment_record(job, segment, record)
    logger.info("segment %s: %s frames in %.1f s on %s", segment, len(frames), time.time() - started, record["worker"])
    return record
