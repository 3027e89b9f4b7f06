"""The `render` flow: a reference image and a driving clip in, the animated clip out.

Stages run as tasks that pass store keys and small records: ingest, poses (cached by clip content
and settings), align, plan, render segments (fanned out in-process or to GPU workers), blend,
encode, report. Re-running a job reuses everything already written, so a crash, a cancel or a
lost worker costs only unfinished segments.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_run

from storage import ArtifactStore, write_status

from . import interrupt, stages
from .dispatch import DeploymentDispatcher, LocalDispatcher, drive_segments, segments_per_run
from .progress import JobProgress, watching_steps
from .report import frames_text, write_report
from .request import RenderRequest
from .segment import render_segment

# Retries are for I/O hiccups; a bad input fails at once.
IO_RETRIES = 2


def _retry_io(task, task_run, state) -> bool:
    """Retry I/O hiccups (network, storage); never an error in the inputs or the code."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except (OSError, TimeoutError):
        return True
    except Exception:
        return False
    return False


stage_task = dict(cache_policy=NO_CACHE, retries=IO_RETRIES, retry_delay_seconds=2, retry_condition_fn=_retry_io)


@task(name="ingest", **stage_task)
def ingest_task(request: RenderRequest) -> stages.IngestResult:
    return stages.ingest(request)


@task(name="poses", **stage_task)
def poses_task(store: str, job_id: str, ingest_result: stages.IngestResult,
               progress: Callable[[int, int], None]) -> str:
    job = stages.JobContext.open(store, job_id)
    return stages.detect_poses(job, ingest_result, progress)


@task(name="align", **stage_task)
def align_task(store: str, job_id: str, ingest_result: stages.IngestResult, detections: str) -> dict:
    job = stages.JobContext.open(store, job_id)
    frames, missing = stages.align(job, detections)
    if missing:
        get_run_logger().warning("%s of %s frames have no pose (rendered with a black pose image): %s",
                                 len(missing), frames, frames_text(missing))
    preview = stages.write_pose_preview(job, ingest_result)
    return dict(frames=frames, missing_pose_frames=missing, pose_preview=preview)


@task(name="conditions", **stage_task)
def conditions_task(store: str, job_id: str, ingest_result: stages.IngestResult, num_frames: int) -> dict[str, str]:
    """The request's frame conditions (edges, mask) and their previews; nothing for pose alone."""
    job = stages.JobContext.open(store, job_id)
    return stages.extract_conditions(job, ingest_result, num_frames)


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(store: str, job_id: str, num_frames: int) -> list[list[int]]:
    job = stages.JobContext.open(store, job_id)
    return [[s.index, s.start, s.stop] for s in stages.plan(job, num_frames).segments]


@task(name="blend", **stage_task)
def blend_task(store: str, job_id: str, progress: Callable[[int, int], None]) -> None:
    job = stages.JobContext.open(store, job_id)
    stages.blend(job, stages.load_plan(job), progress)


@task(name="encode", **stage_task)
def encode_task(store: str, job_id: str, ingest_result: stages.IngestResult, num_frames: int) -> dict:
    job = stages.JobContext.open(store, job_id)
    return stages.encode(job, ingest_result, num_frames)


@task(name="report", cache_policy=NO_CACHE)
def report_task(store: str, job_id: str, summary: dict) -> tuple[str, dict[str, str]]:
    job = stages.JobContext.open(store, job_id)
    return write_report(job, summary)


def _run_name() -> str:
    request = current_run.parameters.get("request")
    driving = request.get("driving", "") if isinstance(request, dict) else getattr(request, "driving", "")
    return "render-" + (driving.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "job")


def name_run(job_id: str) -> None:
    """Name the job's run `<its name at start>-<job id>-run-<n>` (the n-th run of this job) and tag
    it `job:<job id>`, as its segment runs are: the UI then lists a job's runs together."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags

    if not current_run.id:
        return
    tag = f"job:{job_id}"
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(current_run.id)
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag}))
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["render"])),
                                     flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
        attempt = sum(r.created <= run.created for r in runs)
        client.update_flow_run(run.id, name=f"{run.name}-{job_id}-run-{attempt}")


def dispatch_mode(request: RenderRequest) -> str:
    """`local` or `deployment`; `auto` is `deployment` inside a deployment run, else `local`."""
    from prefect.runtime import deployment

    if request.dispatch != "auto":
        return request.dispatch
    return "deployment" if deployment.id else "local"


def render_segments(request: RenderRequest, job_id: str, segments: list[list[int]],
                    progress: JobProgress) -> dict[int, int]:
    """Fan the segments out (in-process or to the GPU pool) and wait until all are rendered."""
    logger = get_run_logger()
    job = stages.JobContext.open(request.store, job_id)
    progress.start_rendering(len(segments), request.steps)
    if dispatch_mode(request) == "local":
        dispatcher = LocalDispatcher(lambda group, attempt: render_segment(request.store, job_id, list(group), attempt))
        per_run = 1  # one process keeps its pipeline loaded: a subflow per segment, for the UI
    else:
        dispatcher = DeploymentDispatcher(
            deployment=request.segment_deployment, job_id=job_id, work_queue_name=request.priority,
            parameters=lambda group, attempt: dict(store=request.store, job_id=job_id, segments=list(group),
                                                   attempt=attempt),
        )
        per_run = segments_per_run(request.segments_per_run, len(segments), request.max_in_flight)
        logger.info("%s segments, %s per %s run, at most %s runs in flight (queue %s)", len(segments), per_run,
                    request.segment_deployment, request.max_in_flight, request.priority)
    if request.gpus_per_segment > 1:
        logger.info(stages.window_balance(job, stages.load_plan(job), request.gpus_per_segment))
    with watching_steps(job_id, progress.step):
        return drive_segments(
            [s[0] for s in segments], dispatcher, is_done=lambda k: stages.segment_done(job, k),
            max_in_flight=request.max_in_flight, max_attempts=request.max_attempts, per_run=per_run,
            on_progress=progress.segments_done,
            on_poll=lambda running: progress.running({k: stages.segment_steps(job, k) for k in running}),
            on_resubmit=lambda segments: stages.remove_temporaries(job, segments),
            log=logger.info,
        )


@flow(name="render", flow_run_name=_run_name, log_prints=True)
def render(request: RenderRequest) -> dict:
    """Animate `request.reference` with the motion of `request.driving`.

    Cancelling a job cancels its segment runs: they are subflow runs of this one, and the Prefect
    server cancels the subflow runs of a cancelled flow run (its cancellation-cleanup service).
    """
    with interrupt.inside_flow_run():
        logger, start = get_run_logger(), time.perf_counter()
        logger.info("stage ingest: started")
        ingest_result = ingest_task(request)
        timings = dict(ingest=round(time.perf_counter() - start, 3))
        logger.info("stage ingest: finished in %.1f s", timings["ingest"])
        job_id, store = ingest_result.job_id, ArtifactStore(request.store)
        name_run(job_id)
        write_status(store, job_id, "running")
        try:
            summary = _render(request, ingest_result, timings, JobProgress(job_id))
        except Exception as exc:
            write_status(store, job_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        except KeyboardInterrupt:
            write_status(store, job_id, "cancelled", "stopped by a signal")
            raise
        write_status(store, job_id, "succeeded")
        return summary


def _render(request: RenderRequest, ingest_result: stages.IngestResult, timings: dict[str, float],
            progress: JobProgress) -> dict:
    logger = get_run_logger()

    def timed(name, fn, *args):
        logger.info("stage %s: started", name)
        progress.stage(name, force=True)
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 3)
        logger.info("stage %s: finished in %.1f s", name, timings[name])
        return result

    job_id, store = ingest_result.job_id, request.store
    logger.info("job %s: %s frames at %s fps", job_id, ingest_result.num_frames, ingest_result.output_fps)
    for note in ingest_result.notes:
        logger.warning(note)
    detections = timed("poses", poses_task, store, job_id, ingest_result,
                       lambda done, total: progress.stage("poses", done, total, "frames"))
    aligned = timed("align", align_task, store, job_id, ingest_result, detections)
    condition_previews = timed("conditions", conditions_task, store, job_id, ingest_result, aligned["frames"])
    segments = timed("plan", plan_task, store, job_id, aligned["frames"])
    attempts = timed("render", render_segments, request, job_id, segments, progress)
    timed("blend", blend_task, store, job_id, lambda done, total: progress.stage("blend", done, total, "frames"))
    encoded = timed("encode", encode_task, store, job_id, ingest_result, aligned["frames"])
    summary = dict(job_id=job_id, ingest=asdict(ingest_result), timings=timings, attempts=attempts,
                   segments=segments, encoded=encoded, pose_preview=aligned["pose_preview"],
                   missing_pose_frames=aligned["missing_pose_frames"], condition_previews=condition_previews,
                   flow_run_id=str(current_run.id or ""))
    summary["report"], links = timed("report", report_task, store, job_id, summary)
    stages.remove_temporaries(stages.JobContext.open(store, job_id))
    output = encoded.get("delivered") or links.get("video") or ArtifactStore(store).url(encoded["output_key"])
    progress.finish(f"done: {encoded['frames']} frames in {sum(timings.values()):.0f} s")
    logger.info("job %s done: the output is at %s", job_id, output)
    return summary
