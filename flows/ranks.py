"""Multi-GPU segment runs: one process per GPU, started by PyTorch's launcher, fused at every step.

A `render-segment` run on a worker that owns several GPUs (`worker --gpus 0,1,2,3`) starts
`python -m torch.distributed.run` with one process (rank) per GPU and a rendezvous on the loopback
interface. Every rank loads the pipeline and renders each of the run's segments with the others
(`controlnext_video.distributed`: the windows of every step split over the ranks, the result
that of one GPU, bit for bit); each rank writes the frames it decodes, and rank 0 writes the
segment record once every rank has written its frames. Rank 0 reports progress through a small
file that the run's own process forwards to Prefect.

Faults: the ranks' process group has a timeout (the request's `rank_timeout`), so a rank that
dies or hangs makes the others fail at their next collective, and the launcher ends the rest.
A run whose ranks were lost ends Crashed, and the job resubmits its unfinished segments; a rank
that fails on the segment's own input (weights, pose files) fails the run, as one GPU would.
Rank processes die with their launcher, and the launcher with the run's process.

The ranks do not import Prefect: this module's rank side runs with `python -m flows.ranks`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from .launch import PROJECT_DIR, child_environment, die_with_parent, follow, log_tail, read_json, stop, write_json
from .stages import JobContext, get_pipeline, render_segment_frames, segment_done, segment_record, write_segment_record

# Seconds the ranks may take to meet and load the pipeline (the step timeout starts after).
STARTUP_TIMEOUT_SECONDS = 600.0
PROGRESS_FILE = "progress.json"
FAILURES_DIR = "failures"
LOG_FILE = "ranks.log"

StepCallback = Callable[[int, int, int], None]  # (segment, step, total steps)


class RanksLost(RuntimeError):
    """A rank died or hung: the run's unfinished segments can be rendered again."""


class RankFailed(RuntimeError):
    """A rank failed on the segment's own input, as one GPU would: a retry would not help."""


def segment_gpus(gpus_per_segment: int, worker_gpus: tuple[str, ...]) -> tuple[str, ...]:
    """The worker's GPUs one segment run uses: the first `gpus_per_segment` (0: all)."""
    count = len(worker_gpus) if gpus_per_segment == 0 else min(gpus_per_segment, len(worker_gpus))
    return worker_gpus[:count]


def rank_device(device: str, local_rank: int) -> str:
    """A rank's torch device: its own GPU (`cuda:<local rank>` among the visible ones), or the CPU."""
    from controlnext_video.placement import resolve_device

    return f"cuda:{local_rank}" if resolve_device(device).startswith("cuda") else "cpu"


# --------------------------------------------------------------------------- the run's process


def launch_ranks(store: str, job: JobContext, segments: list[int], attempt: int, gpus: tuple[str, ...],
                 on_step: StepCallback, check: Callable[[], None]) -> list[dict]:
    """Render `segments` with one process per GPU in `gpus`; return their records.

    `on_step(segment, step, total)` gets rank 0's progress; `check()` runs every poll and may
    raise to stop the ranks. Raises RanksLost (a rank died or hung) or RankFailed (its input).
    """
    run_dir = job.scratch(f"ranks-{'-'.join(map(str, segments))}-try-{attempt}-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={len(gpus)}",
               "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1",
               f"--rdzv-id={run_dir.name}", "--max-restarts=0", "-m", "flows.ranks", "--store", store,
               "--job-id", job.layout.job_id, "--segments", ",".join(map(str, segments)),
               "--attempt", str(attempt), "--run-dir", str(run_dir)]
    with open(run_dir / LOG_FILE, "ab") as log:
        launcher = subprocess.Popen(command, env=_rank_environment(job.request.device, gpus), cwd=PROJECT_DIR,
                                    stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        follow(launcher, run_dir / PROGRESS_FILE, lambda p: on_step(p["segment"], p["step"], p["total"]), check)
    finally:
        stop(launcher)
    if launcher.returncode != 0:
        raise _failure(run_dir, launcher.returncode)
    return [job.store.read_json(job.layout.segment_record(s)) for s in segments]


def _rank_environment(device: str, gpus: tuple[str, ...]) -> dict[str, str]:
    """The ranks' environment: their GPUs, the project on the path, loopback networking, and on
    the CPU this process's thread count (the CPU's sums, and so the last bits, depend on it)."""
    import torch

    from controlnext_video.placement import resolve_device

    if resolve_device(device).startswith("cuda"):
        return child_environment(gpus)
    return child_environment((), threads=torch.get_num_threads())


def _failure(run_dir: Path, returncode: int) -> Exception:
    """RankFailed when a rank failed on its input, else RanksLost, with what the ranks said."""
    reports = [read_json(p) for p in sorted((run_dir / FAILURES_DIR).glob("rank-*.json"))]
    reports = [r for r in reports if r]
    own = [r for r in reports if r["kind"] == "input"]
    if own:
        return RankFailed(f"rank {own[0]['rank']}: {own[0]['error']}")
    said = "; ".join(f"rank {r['rank']}: {r['error']}" for r in reports) or "no rank reported an error"
    log = log_tail(run_dir / LOG_FILE)
    return RanksLost(f"GPU processes lost (launcher exit code {returncode}): {said}\n--- {run_dir / LOG_FILE}\n{log}")


# --------------------------------------------------------------------------- a rank


def main(argv: list[str] | None = None) -> None:
    """A rank's entry point, run by the launcher (`python -m flows.ranks ...`)."""
    parser = argparse.ArgumentParser(description="One rank of a multi-GPU render-segment run.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--segments", required=True, help="comma-separated segment indices")
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    die_with_parent()
    rank = int(os.environ["RANK"])
    try:
        _serve(args, rank, int(os.environ["LOCAL_RANK"]))
    except Exception as exc:
        kind = "lost" if _raised_by_a_collective(exc) else "input"
        write_json(args.run_dir / FAILURES_DIR / f"rank-{rank}.json",
                    dict(rank=rank, kind=kind, error=f"{type(exc).__name__}: {exc}"))
        raise


def _raised_by_a_collective(exc: BaseException) -> bool:
    """Whether `exc` comes from waiting on the other ranks (a peer gone or late): a DistError, or
    an error raised inside torch.distributed (gloo raises plain RuntimeErrors)."""
    import torch.distributed as dist

    frames = traceback.extract_tb(exc.__traceback__)
    return isinstance(exc, dist.DistError) or bool(frames and f"torch{os.sep}distributed{os.sep}" in frames[-1].filename)


def _serve(args: argparse.Namespace, rank: int, local_rank: int) -> None:
    """Join the ranks, load the pipeline, render every segment of the run with the others."""
    import torch
    import torch.distributed as dist

    job = JobContext.open(args.store, args.job_id)
    request = job.request
    device = rank_device(request.device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                            timeout=timedelta(seconds=STARTUP_TIMEOUT_SECONDS))
    try:
        started = time.time()
        pipe = get_pipeline(request.model, device, request.dtype, request.compile, request.channels_last)
        pipe.set_memory_limit(request.gpu_memory_gib or None)
        pipe.set_progress_bar_config(disable=True)
        devices = [None] * dist.get_world_size()
        dist.all_gather_object(devices, _describe(device))  # also: every rank has loaded
        group = dist.new_group(timeout=timedelta(seconds=request.rank_timeout))
        progress = _write_progress(args.run_dir) if rank == 0 else None
        for segment in (int(s) for s in args.segments.split(",")):
            _render_together(job, segment, args.attempt, pipe, group, progress, devices, started)
            started = time.time()
    finally:
        dist.destroy_process_group()


def _render_together(job: JobContext, segment: int, attempt: int, pipe, group, progress, devices: list[str],
                     started: float) -> None:
    """This rank's share of one segment; rank 0 writes the record once every rank wrote its frames."""
    import torch.distributed as dist

    from controlnext_video.distributed import speedup_cap
    from controlnext_video.windows import segment_windows

    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    done = [segment_done(job, segment)]
    dist.broadcast_object_list(done, src=0, group=group)  # rank 0's view decides for all
    if done[0]:
        return
    loaded = time.time()
    frames = render_segment_frames(job, segment, pipe, process_group=group,
                                   on_step=None if progress is None else lambda step, total: progress(segment, step, total))
    everyone: list = [None] * world_size
    dist.all_gather_object(everyone, frames, group=group)  # returns once every rank has written its frames
    if rank == 0:
        frames = sorted((f for part in everyone for f in part), key=lambda f: f["frame"])
        windows = segment_windows(len(frames), job.request.window, job.request.overlap)
        write_segment_record(job, segment, segment_record(
            job, segment, attempt, frames, load_seconds=loaded - started, render_seconds=time.time() - loaded,
            gpus=world_size, devices=devices, windows=windows, speedup_cap=round(speedup_cap(windows, world_size), 3)))


def _describe(device: str) -> str:
    """The GPU's model (`NVIDIA H100 80GB HBM3`), or `cpu`."""
    import torch

    return torch.cuda.get_device_name(device) if device.startswith("cuda") else device


def _write_progress(run_dir: Path) -> StepCallback:
    def write(segment: int, step: int, total: int) -> None:
        write_json(run_dir / PROGRESS_FILE, dict(segment=segment, step=step, total=total))

    return write


if __name__ == "__main__":
    main()
