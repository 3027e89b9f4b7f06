"""The `finetune` flow: a studio's clips in, a fine-tuned model directory out (`render --model` loads it).

Stages, as tasks passing store keys and small records:
- clips: every video under `request.clips` (a folder or an fsspec URL prefix) is copied into the
  run's folder, probed, and its poses detected and smoothed by the render path's own code and
  cache (`pose.pipeline` with the request's `PoseSettings`), at every frame;
- train: `controlnext_video.training.train` (the official objective, accelerate; with several
  processes, one per GPU of the worker, `flows.finetune_ranks`), resumable from
  the run's checkpoints in the artifact store; a progress artifact (step, loss), a loss-curve PNG
  refreshed during training, and every `validation_every` steps a validation clip (ground truth
  beside the render from its first frame and poses);
- export: the model directory (base SVD files, the trained weights, `training.json`), copied to
  `request.out` when given.

The run id is derived from the content (clips, base model files and settings), so running the
same request again, or resubmitting a crashed run, resumes from its latest checkpoint.
"""

from __future__ import annotations

import hashlib
import json

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from storage import ArtifactStore

from . import interrupt
from .progress import ProgressReporter, artifact_key
from .request import FinetuneRequest

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def run_prefix(run_id: str) -> str:
    return f"finetune/{run_id}"


@task(name="clips", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def clips_task(request: FinetuneRequest) -> list[dict]:
    """Copy, probe and pose every clip; return a small record per clip (name, hash, keys, size)."""
    from . import finetune_stages

    return finetune_stages.prepare_clips(request)


@task(name="train", cache_policy=NO_CACHE)
def train_task(request: FinetuneRequest, run_id: str, clips: list[dict]) -> dict:
    from . import finetune_stages

    from .finetune_ranks import launch_training, training_processes
    from .settings import Environment

    logger = get_run_logger()
    reporter = ProgressReporter(f"{run_id}-training", f"fine-tuning {run_id}")
    environment = Environment.read()
    processes, gpus = training_processes(request, environment.gpus)
    if processes == 1:  # in this process (a GPU worker's process sees its GPUs only)
        return finetune_stages.train_and_export(request, run_id, clips, reporter, logger.info)
    return launch_training(request, run_id, clips, environment.scratch("finetune", run_id), processes, gpus,
                           reporter, logger.info, check=interrupt.check)


def run_id_for(request: FinetuneRequest, clips: list[dict]) -> str:
    """The run's id: a digest of the clips, the base model's files and the settings that change training."""
    from controlnext_video.model_dir import check_model_dir

    from pose.conditions import DEFAULT_CONDITIONS

    settings = request.model_dump(exclude={"out", "store", "model", "device", "keep_checkpoints", "validation_every",
                                           "steps", "checkpoint_every", "processes"})
    if tuple(request.conditions) == DEFAULT_CONDITIONS and not request.condition_dropout:
        del settings["conditions"], settings["condition_dropout"]  # ids of runs from before conditions existed
    content = dict(clips=sorted(c["sha256"] for c in clips), model=check_model_dir(request.model).fingerprint(),
                   settings=settings)
    return "ft-" + hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@flow(name="finetune", log_prints=True)
def finetune(request: FinetuneRequest) -> dict:
    """Fine-tune the control module (and the selected UNet part) on a studio's clips."""
    with interrupt.inside_flow_run():
        clips = clips_task(request)
        run_id = run_id_for(request, clips)
        get_run_logger().info("run %s: %s clips, %s steps", run_id, len(clips), request.steps)
        result = train_task(request, run_id, clips)
        store = ArtifactStore(request.store)
        model_url = result.get("delivered") or store.url(result["model_key"])
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(
            f"# Fine-tuning {run_id}\n\n{result['steps']} steps, final loss {result['final_loss']:.4f}, "
            f"{result['trainable_parameters']:,} trainable parameters.\n\nModel directory: `{model_url}`\n\n"
            f"Loss curve: `{store.url(result['loss_curve'])}`\n",
            key=artifact_key(run_id, "finetune-report"), description=f"fine-tuning run {run_id}")
        return dict(result, run_id=run_id, model=model_url)
