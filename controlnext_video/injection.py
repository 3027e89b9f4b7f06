"""Injection of ControlNeXt features into the stock diffusers SVD UNet by a scoped forward hook.

The control enters right after `unet.down_blocks[0]`: its hidden output becomes
`hidden + pool(cross_normalize(control, hidden)) * scale * CONTROL_STRENGTH` for the rows
(samples) that carry control. The block's residuals, already handed to the skip list, are left
untouched: the hook returns a new tensor rather than editing the old one in place. Nothing else
in the UNet changes, and the hook is removed when the `control_injection` context exits, even on
an exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The reference adds the normalized control at this fixed strength.
CONTROL_STRENGTH = 0.2
# Guards the division by the control's standard deviation.
CROSS_NORM_EPS = 1e-5


def cross_normalize(control: torch.Tensor, hidden: torch.Tensor, eps: float = CROSS_NORM_EPS) -> torch.Tensor:
    """Give each control sample the mean and (unbiased) std of the matching hidden sample.

    Statistics are taken per sample over (channels, height, width).
    Shapes: control `(M, C, h1, w1)`, hidden `(M, C, h2, w2)` -> `(M, C, h1, w1)`.
    """
    dims = (1, 2, 3)
    mean_c = control.mean(dim=dims, keepdim=True)
    std_c = control.std(dim=dims, keepdim=True)
    mean_h = hidden.mean(dim=dims, keepdim=True)
    std_h = hidden.std(dim=dims, keepdim=True)
    return (control - mean_c) * (std_h / (std_c + eps)) + mean_h


@dataclass(frozen=True)
class ControlSignal:
    """Control features for a contiguous block of rows of the UNet's flattened batch.

    Attributes:
        features: `(M, C, h, w)` output of the control module, one row per frame.
        first_row: index of the first UNet row (sample * frames + frame) they apply to.
        scale: multiplier on top of `CONTROL_STRENGTH` (the user's control scale).
    """

    features: torch.Tensor
    first_row: int
    scale: float = 1.0

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = slice(self.first_row, self.first_row + self.features.shape[0])
        target = hidden[rows]
        if target.shape[0] != self.features.shape[0] or target.shape[1] != self.features.shape[1]:
            raise ValueError(
                f"control features {tuple(self.features.shape)} do not fit UNet rows {rows.start}:{rows.stop} "
                f"of hidden states {tuple(hidden.shape)}"
            )
        control = cross_normalize(self.features.to(hidden.dtype), target)
        control = F.adaptive_avg_pool2d(control, target.shape[-2:])
        added = target + control * (self.scale * CONTROL_STRENGTH)
        return torch.cat([hidden[: rows.start], added, hidden[rows.stop :]], dim=0)


class ControlInjector:
    """Holds the signal for the next UNet call; installed on a UNet by `control_injection`."""

    def __init__(self) -> None:
        self.signal: ControlSignal | None = None

    def __call__(self, module: nn.Module, args, output):
        if self.signal is None:
            return output
        hidden, residuals = output
        return self.signal.apply(hidden), residuals


@contextmanager
def control_injection(unet: nn.Module) -> Iterator[ControlInjector]:
    """Install a control hook on `unet.down_blocks[0]` for the duration of the block.

    Set `injector.signal` before each UNet call (None for a call without control).
    """
    injector = ControlInjector()
    handle = unet.down_blocks[0].register_forward_hook(injector)
    try:
        yield injector
    finally:
        handle.remove()
        injector.signal = None
