"""The ControlNeXt control module for SVD: a light convolutional encoder of pose frames.

Its state-dict layout is the one of the released `controlnet.bin` (ControlNeXt-SVD v2), so
the released weights load strictly. Only the output width is configurable: it must equal the
UNet's first block width (`unet.config.block_out_channels[0]`, 320 for SVD), which is where
the features are added. It is a diffusers model (`ModelMixin`, `ConfigMixin`), so a fine-tuned
module saves and loads on its own with `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .injection import ControlSignal, control_injection
from .weights import check_loading_info, own_memory

# Fixed widths of the released module (its weights define them).
TIME_PROJ_CHANNELS = 128
TIME_EMBED_DIM = 256
STEM_CHANNELS = (64, 64, 128)
STAGE_CHANNELS = (128, 256)
STAGE_GROUPS = (4, 8)
STEM_GROUPS = 2
MID_GROUPS = 8


def batch_timesteps(timestep: torch.Tensor | float, batch: int, device) -> torch.Tensor:
    """A timestep given as a number, a 0-d or a `(batch,)` tensor, as a `(batch,)` tensor."""
    t = torch.as_tensor(timestep, device=device)
    if t.ndim == 0:
        t = t[None]
    return t.expand(batch)


def run_trunk(module: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """ControlNeXt's trunk after the stem: residual blocks and downsamplings under the time
    embedding `emb`, the two mid convolutions, the output scale (shared by the control designs
    built on ControlNeXt's module)."""
    for res, down in zip(module.down_res, module.down_sample):
        x = down(res(x, emb))
    x = module.mid_convs[0](x) + x
    return module.mid_convs[1](x) * module.config.output_scale


class _StridedConv(nn.Module):
    """A 3x3 stride-2 convolution kept under the attribute name `conv` (state-dict layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ControlNeXtModel(ModelMixin, ConfigMixin):
    """Encodes pose frames into features added to the UNet after its first down block.

    Args:
        out_channels: width of the output features; the UNet's first block width.
        output_scale: the module's output scale (1.0 in the released model).

    Shapes: control `(B, F, 3, H, W)` in [0, 1], timestep scalar or `(B,)`
    -> features `(B*F, out_channels, h, w)`, with `h, w` about `H/8, W/8`.
    """

    control_type = "controlnext"

    @register_to_config
    def __init__(self, out_channels: int = 320, output_scale: float = 1.0) -> None:
        super().__init__()
        self.time_proj = Timesteps(TIME_PROJ_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(TIME_PROJ_CHANNELS, TIME_EMBED_DIM)
        c1, c2, c3 = STEM_CHANNELS
        self.embedding = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(STEM_GROUPS, c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3),
            nn.GroupNorm(STEM_GROUPS, c2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, kernel_size=3),
            nn.GroupNorm(STEM_GROUPS, c3),
            nn.ReLU(),
        )
        widths = (c3, *STAGE_CHANNELS)
        self.down_res = nn.ModuleList(
            ResnetBlock2D(
                in_channels=widths[i],
                out_channels=widths[i + 1],
                temb_channels=TIME_EMBED_DIM,
                groups=STAGE_GROUPS[i],
            )
            for i in range(len(STAGE_CHANNELS))
        )
        self.down_sample = nn.ModuleList(_StridedConv(w) for w in STAGE_CHANNELS)
        mid = STAGE_CHANNELS[-1]
        self.mid_convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(mid, mid, kernel_size=3, padding=1),
                    nn.ReLU(),
                    nn.GroupNorm(MID_GROUPS, mid),
                    nn.Conv2d(mid, mid, kernel_size=3, padding=1),
                    nn.GroupNorm(MID_GROUPS, mid),
                ),
                nn.Conv2d(mid, out_channels, kernel_size=1),
            ]
        )

    @property
    def condition_channels(self) -> int:
        """Channels of the control frames (one RGB picture)."""
        return 3

    @classmethod
    def for_unet(cls, unet_config: Mapping) -> "ControlNeXtModel":
        """A module whose features fit a `UNetSpatioTemporalConditionModel` with this config."""
        return cls(out_channels=int(unet_config["block_out_channels"][0]))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "ControlNeXtModel":
        """diffusers' `ModelMixin.from_pretrained` (same arguments), made strict: missing,
        unexpected or mis-shaped keys raise `WeightsError` instead of a logged warning. The
        weights are copied out of the file (`weights.own_memory`)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        check_loading_info(info, what="ControlNeXt control module", path=pretrained_model_name_or_path)
        own_memory(model)
        return (model, info) if want_info else model

    def forward(self, control: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        batch, frames = control.shape[:2]
        t = batch_timesteps(timestep, batch, control.device)
        emb = self.time_embedding(self.time_proj(t).to(dtype=control.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        return run_trunk(self, self.embedding(control.flatten(0, 1)), emb)

    # ------------------------------------------------------------ the control interface

    def signal(
        self, control: torch.Tensor, timestep: torch.Tensor | float, *, first_row: int = 0, scale: float = 1.0
    ) -> ControlSignal:
        """The control for the next UNet call: this module's features for the rows `first_row:`.
        Shapes: control `(B, F, 3, H, W)` in [0, 1], timestep `()` or `(B,)`."""
        return ControlSignal(self(control, timestep), first_row=first_row, scale=scale)

    def injection(self, unet: nn.Module):
        """The hook that adds the features to `unet` after its first down block (a context manager)."""
        return control_injection(unet)
