"""Multi-process fine-tuning: one process per GPU the worker owns, DDP through `accelerate`.

A `finetune` run whose request asks for several processes (`processes`, 0: one per GPU of the
worker, `worker --gpus 0,1,2,3`) starts `accelerate launch` with that many processes and a
rendezvous on the loopback interface; every process runs the same training
(`finetune_stages.train_and_export`), the global batch split over them, so the update and the
checkpoints are those of one process (`controlnext_video.training.engine`). Process 0 writes the
checkpoints, the loss curve, the validation renders and the model directory, and reports its
progress and log lines through small files that the run's own process forwards to Prefect. A
resubmitted run resumes from the newest checkpoint, with any number of processes.

The processes die with their launcher, and the launcher with the run's process. They do not
import Prefect: this module's process side runs with `python -m flows.finetune_ranks RUN_DIR`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .launch import (
    PROJECT_DIR, child_environment, die_with_parent, follow, free_port, log_tail, read_json, stop, write_json,
)

INPUT_FILE = "input.json"
PROGRESS_FILE = "progress.json"
MESSAGES_FILE = "messages.txt"
RESULT_FILE = "result.json"
FAILURES_DIR = "failures"
LOG_FILE = "processes.log"


class TrainingProcessesFailed(RuntimeError):
    """A training process failed or was lost; rerunning the request resumes from the last checkpoint."""


def training_processes(request, worker_gpus: tuple[str, ...]) -> tuple[int, tuple[str, ...]]:
    """How many processes train together, and their GPUs (none on the CPU).

    On a GPU: `request.processes` of the worker's GPUs (0: all of them; the worker's are those
    of `worker --gpus`, else every visible one). On the CPU: that many gloo processes (0: one)."""
    from controlnext_video.placement import resolve_device

    if not resolve_device(request.device).startswith("cuda"):
        return request.processes or 1, ()
    import torch

    gpus = worker_gpus or tuple(str(i) for i in range(torch.cuda.device_count()))
    count = request.processes or len(gpus)
    if count > len(gpus):
        raise ValueError(f"processes={count}: this worker has {len(gpus)} GPUs ({','.join(gpus) or 'none'})")
    return count, gpus[:count]


def launch_training(request, run_id: str, clips: list[dict], scratch: Path, processes: int, gpus: tuple[str, ...],
                    reporter, log: Callable[[str], None], check: Callable[[], None] = lambda: None) -> dict:
    """Train and export with `processes` processes; return process 0's result (as
    `train_and_export` returns it). Raises TrainingProcessesFailed, naming what the processes said."""
    import torch

    from controlnext_video.placement import resolve_device

    request.check_batch_split(processes)
    run_dir = Path(scratch) / f"processes-{os.getpid()}-{time.time_ns()}"
    write_json(run_dir / INPUT_FILE, dict(request=request.model_dump(mode="json"), run_id=run_id, clips=clips))
    device = resolve_device(request.device)
    precision = request.training_config(device).mixed_precision
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", precision, "--dynamo_backend", "no",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
               "-m", "flows.finetune_ranks", str(run_dir)]
    env = child_environment(gpus, threads=max(1, torch.get_num_threads() // processes))  # CPU: cores shared
    log(f"training with {processes} processes" + (f" on GPUs {','.join(gpus)}" if gpus else " on the CPU"))
    with open(run_dir / LOG_FILE, "ab") as output:
        launcher = subprocess.Popen(command, env=env, cwd=PROJECT_DIR, stdout=output, stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent)
    offset = [0]  # bytes of process 0's messages logged so far
    try:
        follow(launcher, run_dir / PROGRESS_FILE, lambda p: reporter.update(p["fraction"], p["text"]), check,
               also=lambda: _forward_messages(run_dir, log, offset))
    finally:
        stop(launcher)
    _forward_messages(run_dir, log, offset)
    result = read_json(run_dir / RESULT_FILE)
    if launcher.returncode != 0 or result is None:
        reports = [r for r in (read_json(p) for p in sorted((run_dir / FAILURES_DIR).glob("rank-*.json"))) if r]
        said = "; ".join(f"process {r['rank']}: {r['error']}" for r in reports) or "no process reported an error"
        raise TrainingProcessesFailed(
            f"fine-tuning processes ended with exit code {launcher.returncode}: {said} (run the request again to "
            f"resume from the last checkpoint)\n--- {run_dir / LOG_FILE}\n{log_tail(run_dir / LOG_FILE)}")
    return result


def _forward_messages(run_dir: Path, log: Callable[[str], None], offset: list[int]) -> None:
    """Log process 0's complete lines written since `offset[0]` (bytes)."""
    try:
        with open(run_dir / MESSAGES_FILE, "rb") as handle:
            handle.seek(offset[0])
            data = handle.read()
    except OSError:
        return
    complete = data[: data.rfind(b"\n") + 1]
    offset[0] += len(complete)
    for line in complete.decode(errors="replace").splitlines():
        log(line)


# --------------------------------------------------------------------------- a process


class _FileReporter:
    """Process 0's progress, for the run's process to forward (the processes have no Prefect)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def update(self, fraction: float, text: str) -> None:
        write_json(self.path, dict(fraction=fraction, text=text))


def main(argv: list[str] | None = None) -> None:
    """A training process's entry point, run by accelerate's launcher."""
    from .finetune_stages import train_and_export
    from .ranks import rank_device
    from .request import FinetuneRequest

    run_dir = Path((argv or sys.argv[1:])[0])
    die_with_parent()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        given = read_json(run_dir / INPUT_FILE)
        request = FinetuneRequest(**given["request"])

        def log(line: str) -> None:
            if rank == 0:
                with open(run_dir / MESSAGES_FILE, "a") as handle:
                    handle.write(line.replace("\n", " ") + "\n")

        result = train_and_export(request, given["run_id"], given["clips"], _FileReporter(run_dir / PROGRESS_FILE),
                                  log, device=rank_device(request.device, local_rank), main_process=rank == 0)
        if rank == 0:
            write_json(run_dir / RESULT_FILE, result)
    except Exception as exc:
        write_json(run_dir / FAILURES_DIR / f"rank-{rank}.json", dict(rank=rank, error=f"{type(exc).__name__}: {exc}"))
        raise


if __name__ == "__main__":
    main()
