"""Fine-tuning ControlNeXt-SVD: the official v2 training objective, noise levels and dropout.

- `denoising_loss` / `per_sample_loss` / `DenoisingObjective` (objective.py): the official step.
- `NoiseSchedule` (noise.py): the official noise-level distribution.
- `apply_conditioning_dropout` (dropout.py): the official conditioning dropout.

Names are imported lazily: importing this package loads neither torch nor diffusers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "denoising_loss": "objective",
    "per_sample_loss": "objective",
    "DenoisingObjective": "objective",
    "NoiseSchedule": "noise",
    "apply_conditioning_dropout": "dropout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
