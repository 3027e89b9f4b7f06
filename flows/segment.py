"""The `render-segment` flow: renders one or more segments of a job, in turn, on whichever worker
picks it up.

The pipeline is loaded once per process and reused by every segment that process renders (a run
given several segments pays for loading once). For each segment the flow writes its frames and then
its record (atomically): a segment whose record exists is done and is never rendered again. While
it runs it writes a heartbeat, reports per-step progress, and stops when its parent job is
cancelled or has ended.
"""

from __future__ import annotations

import threading
import time

from prefect import flow, get_run_logger

from . import interrupt
from .progress import ProgressReporter
from .stages import Heartbeat, JobContext, render_segment_frames, segment_done, worker_name, write_segment_record

# Seconds between two checks of the parent job's state.
PARENT_CHECK_SECONDS = 5.0

_pipelines: dict[tuple, object] = {}
_pipelines_lock = threading.Lock()


class SegmentAborted(RuntimeError):
    """The parent job was cancelled or ended: this segment stops."""


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, dtype)


def get_pipeline(model: str, device: str, dtype: str, compile: bool = False, channels_last: bool = False):
    """The pipeline for these settings, loaded on first use and kept for the process."""
    from controlnext_video import ControlNeXtSVDPipeline

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


def parent_has_ended(parent_flow_run_id: str) -> str | None:
    """Why the parent job is over (cancelled, failed...), or None while it runs."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(parent_flow_run_id).state
    if state is not None and (state.is_final() or state.name == "Cancelling"):
        return state.name
    return None


def _run_name() -> str:
    from prefect.runtime import flow_run as current_run

    from .dispatch import segments_name

    params = current_run.parameters
    return f"{params.get('job_id', 'job')}-{segments_name(tuple(params.get('segments') or (0,)))}"


@flow(name="render-segment", flow_run_name=_run_name, log_prints=True)
def render_segment(
    store: str, job_id: str, segments: list[int], attempt: int = 1, parent_flow_run_id: str = ""
) -> list[dict]:
    """Render `segments` of a job in turn (frames and a record each, into the job's store folder)."""
    if not segments:
        raise ValueError("render-segment needs at least one segment index")
    records = []
    with interrupt.inside_flow_run():
        for segment in segments:
            interrupt.check()
            record = _render_one(store, job_id, segment, attempt, parent_flow_run_id)
            if not isinstance(record, dict):  # Cancelled: the job ended
                return record
            records.append(record)
    return records


def _render_one(store: str, job_id: str, segment: int, attempt: int, parent_flow_run_id: str):
    logger = get_run_logger()
    job = JobContext.open(store, job_id)
    if segment_done(job, segment):
        logger.info("segment %s of %s already rendered: nothing to do", segment, job_id)
        return job.store.read_json(job.layout.segment_record(segment))
    request = job.request
    started = time.time()
    heartbeat_interval = max(1.0, min(10.0, request.stale_after_seconds / 5))
    with Heartbeat(job, segment, attempt, heartbeat_interval) as heartbeat:
        pipe = get_pipeline(request.model, request.device, request.dtype, request.compile, request.channels_last)
        pipe.set_memory_limit(request.gpu_memory_gib or None)
        interrupt.check()  # a stop requested while loading (a signal there can be swallowed)
        loaded = time.time()
        reporter = ProgressReporter(f"{job_id}-segment-{segment}", f"segment {segment}: denoising")
        last_check = [time.monotonic()]

        def on_step(step: int, total: int) -> None:
            interrupt.check()
            heartbeat.step = step
            reporter.update(step / total, f"segment {segment}: step {step}/{total}")
            if parent_flow_run_id and time.monotonic() - last_check[0] > PARENT_CHECK_SECONDS:
                last_check[0] = time.monotonic()
                ended = parent_has_ended(parent_flow_run_id)
                if ended:
                    raise SegmentAborted(f"job {job_id} is {ended}: segment {segment} stops")

        try:
            frames = render_segment_frames(job, segment, pipe, callback=on_step)
        except SegmentAborted as exc:
            from prefect.states import Cancelled

            logger.warning(str(exc))
            return Cancelled(message=str(exc))
    record = dict(
        segment=segment, job_id=job_id, attempt=attempt, worker=worker_name(), frames=frames,
        load_seconds=round(loaded - started, 3), render_seconds=round(time.time() - loaded, 3),
        finished_at=time.time(),
    )
    write_segment_record(job, segment, record)
    logger.info("segment %s: %s frames in %.1f s on %s", segment, len(frames), time.time() - started, worker_name())
    return record
