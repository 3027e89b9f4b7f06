"""What trains: the control module always, and none, a selective part, or all of the UNet.

"selective" is the paper's small subset of the base model, the attention value and output
projections (`to_v`, `to_out`), as the official training code's commented-out selection picks
them. The release trained the whole UNet ("all"); its authors report no significant difference
after a human-data continual pre-training. The VAE and the image encoder are always frozen.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

UnetTraining = Literal["none", "selective", "all"]
UNET_TRAINING_MODES: tuple[str, ...] = get_args(UnetTraining)
# Module names whose parameters train in "selective" mode.
SELECTIVE_MODULES = ("to_v", "to_out")
# Prefixes of trainable parameter names, by component.
UNET_PREFIX = "unet."
CONTROLNEXT_PREFIX = "controlnext."


def _selected(name: str, mode: str) -> bool:
    if mode == "all":
        return True
    if mode == "selective":
        return any(part in SELECTIVE_MODULES for part in name.split("."))
    return False


def select_trainable(unet: nn.Module, controlnext: nn.Module, unet_training: UnetTraining) -> dict[str, nn.Parameter]:
    """Set `requires_grad` on the UNet and control module for `unet_training`, and return the
    trainable parameters by name (`"controlnext.<name>"`, then `"unet.<name>"`, in module order)."""
    if unet_training not in UNET_TRAINING_MODES:
        raise ValueError(f"unet_training must be one of {UNET_TRAINING_MODES}, got {unet_training!r}")
    trainable: dict[str, nn.Parameter] = {}
    for name, param in controlnext.named_parameters():
        param.requires_grad_(True)
        trainable[CONTROLNEXT_PREFIX + name] = param
    for name, param in unet.named_parameters():
        selected = _selected(name, unet_training)
        param.requires_grad_(selected)
        if selected:
            trainable[UNET_PREFIX + name] = param
    return trainable


def count_parameters(parameters: dict[str, nn.Parameter]) -> int:
    """Number of scalars in `parameters`."""
    return sum(p.numel() for p in parameters.values())
