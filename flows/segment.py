"""The `render-segment` flow: renders one or more segments of a job, in turn, on whichever worker
picks it up.

The pipeline is loaded once per process and reused by every segment that process renders (a run
given several segments pays for loading once). For each segment the flow writes its frames and then
its record (atomically): a segment whose record exists is done and is never rendered again. It
reports per-step progress to its job (`flows.progress.SegmentSteps`). Liveness and cancellation are Prefect's (see `flows.dispatch`): the run
sends flow-run heartbeats, and the server cancels it when its job is cancelled.
"""

from __future__ import annotations

import threading
import time

from prefect import flow, get_run_logger

from . import interrupt
from .progress import SegmentSteps
from .stages import JobContext, render_segment_frames, segment_done, write_segment_record

_pipelines: dict[tuple, object] = {}
_pipelines_lock = threading.Lock()


def get_pipeline(model: str, device: str, dtype: str, compile: bool = False, channels_last: bool = False):
    """The pipeline for these settings, loaded on first use and kept for the process."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.placement import resolve_device, resolve_dtype

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (model, device, str(torch_dtype), compile, channels_last)
    with _pipelines_lock:
        if key not in _pipelines:
            pipe = ControlNeXtSVDPipeline.from_pretrained(model, torch_dtype=torch_dtype, device=device)
            if channels_last:
                pipe.enable_channels_last()
            if compile:
                pipe.compile()
            _pipelines[key] = pipe
        return _pipelines[key]


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
        records = []
        for segment in segments:
            interrupt.check()
            records.append(_render_one(JobContext.open(store, job_id), segment, attempt))
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
    worker = job.env.worker_id
    record = dict(segment=segment, job_id=job.layout.job_id, attempt=attempt, worker=worker, frames=frames,
                  load_seconds=round(loaded - started, 3), render_seconds=round(time.time() - loaded, 3),
                  finished_at=time.time())
    write_segment_record(job, segment, record)
    logger.info("segment %s: %s frames in %.1f s on %s", segment, len(frames), time.time() - started, worker)
    return record
