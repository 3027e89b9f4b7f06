"""A multi-condition control module in the spirit of UniControl, on ControlNeXt's light encoder.

One stem per condition type (pose, edges, mask, ...: ControlNeXt's stem each), the stems of the
conditions present averaged, then one shared trunk (ControlNeXt's two residual stages and mid
convolutions) whose residual blocks are modulated, FiLM-like (scale and shift of the normalized
features), by the sum of the timestep embedding and an embedding of which condition types are
present. Its features enter the UNet exactly as ControlNeXt's do: after the first down block,
cross-normalized, at strength 0.2 (`controlnext_video.injection`).

The control frames stack the conditions on the channel axis, three channels each, in the order of
`condition_types`. A condition that is absent from a sample is an all-black picture: the module
reads presence from the frames (any non-zero pixel in the sample's window), so the pipeline, the
training objective and conditioning dropout (`training.dropout.drop_conditions`) need nothing
else. Trained with random condition dropout, any non-empty subset renders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .control import (
    MID_GROUPS, STAGE_CHANNELS, STAGE_GROUPS, STEM_CHANNELS, STEM_GROUPS, TIME_EMBED_DIM, TIME_PROJ_CHANNELS,
    _StridedConv, batch_timesteps, run_trunk,
)
from .injection import ControlSignal, control_injection
from .weights import check_loading_info, own_memory

# Channels of one condition's picture (RGB).
CONDITION_CHANNELS = 3
DEFAULT_CONDITION_TYPES = ("pose", "edges", "mask")


def _stem() -> nn.Sequential:
    c1, c2, c3 = STEM_CHANNELS
    return nn.Sequential(
        nn.Conv2d(CONDITION_CHANNELS, c1, kernel_size=3, stride=2, padding=1), nn.GroupNorm(STEM_GROUPS, c1), nn.ReLU(),
        nn.Conv2d(c1, c2, kernel_size=3), nn.GroupNorm(STEM_GROUPS, c2), nn.ReLU(),
        nn.Conv2d(c2, c3, kernel_size=3), nn.GroupNorm(STEM_GROUPS, c3), nn.ReLU(),
    )


class MultiConditionControlNeXtModel(ModelMixin, ConfigMixin):
    """Encodes several condition pictures per frame into features for the UNet's first block.

    Args:
        condition_types: the condition names, in the order their pictures are stacked.
        out_channels: width of the output features; the UNet's first block width.
        output_scale: multiplier on the output (1.0 as ControlNeXt's).

    Shapes: control `(B, F, 3 * len(condition_types), H, W)` in [0, 1], timestep scalar or
    `(B,)` -> features `(B*F, out_channels, h, w)`, about `H/8, W/8`.
    """

    control_type = "controlnext-multi"

    @register_to_config
    def __init__(
        self,
        condition_types: tuple[str, ...] = DEFAULT_CONDITION_TYPES,
        out_channels: int = 320,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not condition_types or len(set(condition_types)) != len(condition_types):
            raise ValueError(f"condition_types must be distinct names, got {condition_types}")
        self.time_proj = Timesteps(TIME_PROJ_CHANNELS, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(TIME_PROJ_CHANNELS, TIME_EMBED_DIM)
        # Which conditions are present, as a multi-hot vector -> the trunk's modulation.
        self.condition_embedding = nn.Linear(len(condition_types), TIME_EMBED_DIM)
        self.stems = nn.ModuleList(_stem() for _ in condition_types)
        widths = (STEM_CHANNELS[-1], *STAGE_CHANNELS)
        self.down_res = nn.ModuleList(
            ResnetBlock2D(in_channels=widths[i], out_channels=widths[i + 1], temb_channels=TIME_EMBED_DIM,
                          groups=STAGE_GROUPS[i], time_embedding_norm="scale_shift")
            for i in range(len(STAGE_CHANNELS))
        )
        self.down_sample = nn.ModuleList(_StridedConv(w) for w in STAGE_CHANNELS)
        mid = STAGE_CHANNELS[-1]
        self.mid_convs = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(mid, mid, kernel_size=3, padding=1), nn.ReLU(), nn.GroupNorm(MID_GROUPS, mid),
                nn.Conv2d(mid, mid, kernel_size=3, padding=1), nn.GroupNorm(MID_GROUPS, mid),
            ),
            nn.Conv2d(mid, out_channels, kernel_size=1),
        ])

    @property
    def condition_channels(self) -> int:
        """Channels of the control frames: three per condition type."""
        return CONDITION_CHANNELS * len(self.config.condition_types)

    @classmethod
    def for_unet(cls, unet_config, condition_types: tuple[str, ...] = DEFAULT_CONDITION_TYPES):
        return cls(condition_types=tuple(condition_types), out_channels=int(unet_config["block_out_channels"][0]))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs):
        """diffusers' `ModelMixin.from_pretrained`, made strict (see `ControlNeXtModel.from_pretrained`)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        check_loading_info(info, what="multi-condition control module", path=pretrained_model_name_or_path)
        own_memory(model)
        return (model, info) if want_info else model

    def presence(self, control: torch.Tensor) -> torch.Tensor:
        """Which conditions each sample has: a picture with a non-zero pixel in any frame.

        Shapes: control `(B, F, 3K, H, W)` -> `(B, K)` in {0, 1}, the control's dtype."""
        batch, frames, channels = control.shape[:3]
        groups = control.reshape(batch, frames, channels // CONDITION_CHANNELS, -1)
        return (groups != 0).any(dim=(1, 3)).to(control.dtype)

    def forward(self, control: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        batch, frames, channels = control.shape[:3]
        if channels != self.condition_channels:
            raise ValueError(f"control has {channels} channels; this module takes {self.condition_channels} "
                             f"({', '.join(self.config.condition_types)}, three each)")
        t = batch_timesteps(timestep, batch, control.device)
        present = self.presence(control)
        emb = self.time_embedding(self.time_proj(t).to(dtype=control.dtype)) + self.condition_embedding(present)
        emb = emb.repeat_interleave(frames, dim=0)

        pictures = control.flatten(0, 1)
        weights = (present / present.sum(dim=1, keepdim=True).clamp(min=1)).repeat_interleave(frames, dim=0)
        x = sum(stem(pictures[:, CONDITION_CHANNELS * k : CONDITION_CHANNELS * (k + 1)]) * weights[:, k, None, None, None]
                for k, stem in enumerate(self.stems))
        return run_trunk(self, x, emb)

    # ------------------------------------------------------------ the control interface

    def signal(
        self, control: torch.Tensor, timestep: torch.Tensor | float, *, first_row: int = 0, scale: float = 1.0
    ) -> ControlSignal:
        """The control for the next UNet call (as `ControlNeXtModel.signal`)."""
        return ControlSignal(self(control, timestep), first_row=first_row, scale=scale)

    def injection(self, unet: nn.Module):
        """ControlNeXt's hook after the UNet's first down block (a context manager)."""
        return control_injection(unet)
