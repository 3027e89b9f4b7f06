"""Fine-tuning ControlNeXt-SVD: the official v2 training objective, data sampling, the loop.

- `denoising_loss`, `denoise`, `DenoisingObjective` (objective.py): the official training step.
- `NoiseSchedule` (noise.py): the official noise-level distribution.
- `apply_conditioning_dropout` (dropout.py): the official conditioning dropout; `drop_conditions`,
  random condition dropout for the multi-condition module.
- `ClipSource`, `ArrayClip`, `VideoClip`, `HandBox`, `sample_frames`, `random_crop_box`,
  `hand_mask`, `load_example`, `draw_example` (data.py): examples as the official data loader makes them.
- `BatchSettings`, `make_batch` (batch.py): encoded, noised batches from (seed, step).
- `select_trainable` (params.py): what trains.
- `TrainingConfig`, `train`, `StepReport`, `TrainingResult`, `evaluation_loss` (engine.py): the
  resumable loop.
- `save_checkpoint`, `load_checkpoint`, `latest_checkpoint` (checkpoint.py), `export_model`,
  `training_card` (export.py): checkpoints and the fine-tuned model directory, in the store.
- `moving_disc_clip` (synthetic.py): a synthetic clip for tests, benchmarks and the demo.

Names are imported lazily: importing this package loads neither torch nor diffusers.
"""

from __future__ import annotations

from .._lazy import lazy_getattr

_LAZY = {
    "denoising_loss": ".objective",
    "denoise": ".objective",
    "DenoisingObjective": ".objective",
    "NoiseSchedule": ".noise",
    "apply_conditioning_dropout": ".dropout",
    "drop_conditions": ".dropout",
    "ClipSource": ".data",
    "ArrayClip": ".data",
    "VideoClip": ".data",
    "HandBox": ".data",
    "TrainingExample": ".data",
    "sample_frames": ".data",
    "random_crop_box": ".data",
    "hand_mask": ".data",
    "load_example": ".data",
    "draw_example": ".data",
    "BatchSettings": ".batch",
    "TrainingBatch": ".batch",
    "make_batch": ".batch",
    "select_trainable": ".params",
    "TrainingConfig": ".engine",
    "StepReport": ".engine",
    "TrainingResult": ".engine",
    "train": ".engine",
    "evaluation_loss": ".engine",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "latest_checkpoint": ".checkpoint",
    "CheckpointError": ".checkpoint",
    "export_model": ".export",
    "moving_disc_clip": ".synthetic",
    "training_card": ".export",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
