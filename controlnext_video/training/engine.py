"""The training loop: Hugging Face `accelerate` around the official objective, resumable exactly.

`train(pipe, clips, config, store=, prefix=)` trains the pipeline's own control module and UNet
in place. Every `checkpoint_every` steps (and at the last) it writes a checkpoint under
`prefix` in the artifact store; called again with the same arguments it resumes from the newest
checkpoint and continues exactly as if it had never stopped, because every random draw of a
step derives from (seed, step) (see `batch`). A finished run returns at once.

Distributed runs are launched by `accelerate` (one process per device, `accelerate launch` or
`accelerate.notebook_launcher`); each process calls `train` with the same arguments. A step's
global batch is fixed by `config.batch_size` and split over processes and accumulation rounds,
so the update does not depend on the number of processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import torch

from .batch import BatchSettings, make_batch
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, restore_trainable, save_checkpoint
from .data import ClipSource
from .objective import TRAIN_FPS_ID, TRAIN_MOTION_BUCKET, DenoisingObjective, denoising_loss
from .params import UnetTraining, count_parameters, select_trainable

MixedPrecision = Literal["no", "bf16"]
MIXED_PRECISION_MODES: tuple[str, ...] = get_args(MixedPrecision)
# Settings that may differ between a run and the checkpoint it resumes from.
RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "keep_checkpoints"})


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides what a run computes (the release's values where it has them).

    Attributes:
        steps: optimizer steps in total.
        batch_size: examples per optimizer step, over all processes and accumulation rounds.
        gradient_accumulation_steps: rounds each optimizer step is split into.
        learning_rate: peak learning rate (AdamW).
        lr_scheduler: a `diffusers.optimization.get_scheduler` name.
        warmup_steps: learning-rate warm-up steps.
        adam_beta1, adam_beta2, adam_epsilon, weight_decay: AdamW settings.
        unet_training: which UNet parameters train ("none", "selective", "all").
        mixed_precision: "bf16" (autocast; master weights float32) or "no".
        gradient_checkpointing: recompute UNet activations in the backward pass.
        checkpoint_every: steps between checkpoints.
        keep_checkpoints: how many checkpoints to keep.
        seed: the run's seed; every random draw derives from it.
        fps_id, motion_bucket_id: added time ids of the training step.
        data: how examples are drawn and conditioned.
    """

    steps: int = 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 500
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 1e-2
    unet_training: UnetTraining = "selective"
    mixed_precision: MixedPrecision = "bf16"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    fps_id: int = TRAIN_FPS_ID
    motion_bucket_id: int = TRAIN_MOTION_BUCKET
    data: BatchSettings = field(default_factory=BatchSettings)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps})"
            )
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_MODES}, got {self.mixed_precision!r}")
        if not self.learning_rate > 0 or self.warmup_steps < 0:
            raise ValueError("learning_rate must be positive and warmup_steps >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (for checkpoints and the training card)."""
        return asdict(self)


@dataclass(frozen=True)
class StepReport:
    """What a progress callback is told after each optimizer step.

    Attributes:
        step: optimizer steps done (1-based).
        total_steps: `config.steps`.
        loss: the step's loss, averaged over its global batch.
        learning_rate: the learning rate the step used.
        seconds: wall time of the step (data, forward, backward, optimizer; not the checkpoint).
        checkpoint: the key of the checkpoint written after this step, or None.
    """

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    seconds: float
    checkpoint: str | None


@dataclass(frozen=True)
class TrainingResult:
    """The outcome of `train`.

    Attributes:
        steps: optimizer steps done in total (equal to `config.steps`).
        resumed_from: the step the run resumed from (0 for a fresh run).
        losses: the loss of every step since the first (carried through resumes).
        trainable_parameters: how many scalars trained.
        checkpoint: the key of the final checkpoint.
        processes: how many processes trained together.
    """

    steps: int
    resumed_from: int
    losses: tuple[float, ...]
    trainable_parameters: int
    checkpoint: str
    processes: int

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


def make_accelerator(config: TrainingConfig, device: torch.device | str):
    """The `accelerate.Accelerator` for `config` (CPU when `device` is the CPU).

    accelerate keeps one state per process: a process trains with one `mixed_precision`.
    """
    from accelerate import Accelerator

    return Accelerator(mixed_precision=config.mixed_precision, cpu=torch.device(device).type == "cpu")


def _check_resumable(saved: dict[str, Any], config: TrainingConfig, key: str) -> None:
    current = config.to_dict()
    # Settings added since the checkpoint was written count with their defaults.
    defaults = TrainingConfig().to_dict()
    saved = {**defaults, **saved, "data": {**defaults["data"], **saved.get("data", {})}}
    keys = (current.keys() | saved.keys()) - RESUMABLE_CHANGES
    changed = sorted(k for k in keys if saved.get(k) != current.get(k))
    if changed:
        raise CheckpointError(
            f"checkpoint {key} was written with other settings ({', '.join(changed)}); use another prefix"
        )


def train(
    pipe,
    clips: Sequence[ClipSource],
    config: TrainingConfig,
    *,
    store,
    prefix: str,
    progress: Callable[[StepReport], None] | None = None,
    accelerator=None,
) -> TrainingResult:
    """Train `pipe.controlnext` and the selected part of `pipe.unet` on `clips`, in place.

    Args:
        pipe: a `ControlNeXtSVDPipeline` with float32 UNet and control module (mixed precision
            is autocast); it is moved to the accelerator's device.
        clips: the training clips.
        config: the run's settings.
        store: an `storage.ArtifactStore` for the checkpoints.
        prefix: the run's checkpoint folder in the store; an existing checkpoint there is resumed.
        progress: called on the main process after every step with a `StepReport`.
        accelerator: an `accelerate.Accelerator` (default: `make_accelerator(config, pipe.device)`);
            it must not accumulate gradients itself (`gradient_accumulation_steps=1`).
    """
    from diffusers.optimization import get_scheduler

    if pipe.unet.dtype != torch.float32 or pipe.controlnext.dtype != torch.float32:
        raise ValueError("train the float32 pipeline: mixed precision is applied by autocast (config.mixed_precision)")
    accelerator = accelerator or make_accelerator(config, pipe.device)
    if accelerator.gradient_accumulation_steps != 1:
        raise ValueError("pass an Accelerator with gradient_accumulation_steps=1: train() accumulates itself")
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds = config.gradient_accumulation_steps
    if config.batch_size % (world * rounds):
        raise ValueError(
            f"batch_size ({config.batch_size}) must be a multiple of processes x accumulation steps "
            f"({world} x {rounds})"
        )
    per_round = config.batch_size // (world * rounds)
    batch_dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float32

    pipe.to(accelerator.device)
    if batch_dtype != torch.float32:  # the frozen encoders run in the autocast dtype, as in the release
        pipe.vae.to(dtype=batch_dtype)
        pipe.image_encoder.to(dtype=batch_dtype)
    trainable = select_trainable(pipe.unet, pipe.controlnext, config.unet_training)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(
        list(trainable.values()), lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon, weight_decay=config.weight_decay,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler, optimizer=optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )

    start, losses = 0, []
    key = latest_checkpoint(store, prefix)
    if key is not None:
        checkpoint = load_checkpoint(store, key)
        _check_resumable(checkpoint.state["config"], config, key)
        if checkpoint.step > config.steps:
            raise CheckpointError(f"checkpoint {key} is past the run's last step ({config.steps})")
        restore_trainable(trainable, checkpoint.trainable, key)
        optimizer.load_state_dict(checkpoint.optimizer)
        lr_scheduler.load_state_dict(checkpoint.lr_scheduler)
        start, losses = checkpoint.step, list(checkpoint.state["losses"])
    resumed_from = start

    objective = DenoisingObjective(
        pipe.unet, pipe.controlnext, fps_id=config.fps_id, motion_bucket_id=config.motion_bucket_id,
        noise_aug_strength=config.data.noise_aug_strength,
    )
    model, prepared_optimizer = accelerator.prepare(objective, optimizer)
    model.train()
    try:
        for step in range(start, config.steps):
            began = time.perf_counter()
            learning_rate = lr_scheduler.get_last_lr()[0]
            total = torch.zeros((), device=accelerator.device)
            for round_index in range(rounds):
                first = (round_index * world + rank) * per_round
                batch = make_batch(
                    pipe, clips, config.data, seed=config.seed, step=step,
                    indices=range(first, first + per_round), global_batch_size=config.batch_size,
                )
                last_round = round_index == rounds - 1
                with nullcontext() if last_round else accelerator.no_sync(model):
                    loss = model(**batch.to(accelerator.device, batch_dtype)).mean()
                    accelerator.backward(loss / rounds)
                total += loss.detach().float()
            prepared_optimizer.step()
            lr_scheduler.step()
            prepared_optimizer.zero_grad(set_to_none=True)
            losses.append(accelerator.reduce(total / rounds, reduction="mean").item())
            seconds = time.perf_counter() - began

            done = step + 1
            key = None
            if done % config.checkpoint_every == 0 or done == config.steps:
                key = _save(accelerator, store, prefix, done, trainable, optimizer, lr_scheduler, config, losses)
            if progress is not None and accelerator.is_main_process:
                progress(StepReport(done, config.steps, losses[-1], learning_rate, seconds, key))
    finally:
        model.eval()
        for module in (pipe.unet, pipe.controlnext):
            module.requires_grad_(False)
        if config.gradient_checkpointing:
            pipe.unet.disable_gradient_checkpointing()
    final = latest_checkpoint(store, prefix)
    return TrainingResult(
        steps=config.steps, resumed_from=resumed_from, losses=tuple(losses),
        trainable_parameters=count_parameters(trainable), checkpoint=final, processes=world,
    )


def _save(accelerator, store, prefix, step, trainable, optimizer, lr_scheduler, config, losses) -> str:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(
            store, prefix, step=step, trainable=trainable, optimizer=optimizer.state_dict(),
            lr_scheduler=lr_scheduler.state_dict(), state={"config": config.to_dict(), "losses": losses},
            keep=config.keep_checkpoints,
        )
    accelerator.wait_for_everyone()
    return latest_checkpoint(store, prefix)


@torch.no_grad()
def evaluation_loss(pipe, batch, config: TrainingConfig) -> float:
    """The loss of a fixed batch (e.g. `make_batch` with its own seed) with the current weights,
    in float32, without touching any training state: a comparable number across steps."""
    loss = denoising_loss(
        pipe, **batch.to(pipe.device, torch.float32), fps_id=config.fps_id,
        motion_bucket_id=config.motion_bucket_id, noise_aug_strength=config.data.noise_aug_strength,
    )
    return loss.item()
