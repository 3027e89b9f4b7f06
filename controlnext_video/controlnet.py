"""A ControlNet branch for the SVD UNet, entering the stock UNet through hooks.

The ControlNet design (Zhang et al., 2023) on `UNetSpatioTemporalConditionModel`: a trainable
copy of the UNet's input path (`conv_in`, the time and added-time embeddings, every down block
and the mid block), fed with the UNet's own inputs plus the condition, which enters through a
small conditioning encoder added to the copy's `conv_in` output. Every skip connection the down
path hands to the up path (the `conv_in` output, each down block's residuals) gets a 1x1
convolution of the matching branch feature added, and so does the mid block's output. Those
convolutions and the conditioning encoder's last layer start at zero, so an untrained branch
changes nothing, bit for bit.

The hooks (`ControlNetInjector`, installed by `SVDControlNetModel.injection`) leave the UNet's
down path untouched: a pre-hook on the UNet runs the branch on the UNet's inputs, a hook on the
mid block adds the mid residual, and pre-hooks on the up blocks add the residuals to the skip
tuples they receive. All are removed when the context exits.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import nn

from .control import batch_timesteps
from .weights import check_loading_info, own_memory

# The UNet's input path: the names the branch copies (same state-dict keys as in the UNet).
COPIED_MODULES = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")
# UNet config entries the branch's architecture depends on.
UNET_CONFIG_KEYS = (
    "in_channels", "down_block_types", "block_out_channels", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim", "layers_per_block", "cross_attention_dim",
    "transformer_layers_per_block", "num_attention_heads",
)
# ControlNet's conditioning encoder widths (diffusers' and the paper's defaults for SD).
CONDITIONING_CHANNELS = (16, 32, 96, 256)
# The UNet's resnet epsilon in its down blocks (diffusers' UNetSpatioTemporalConditionModel).
RESNET_EPS = 1e-5


def _per_block(value, blocks: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * blocks


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class SVDControlNetModel(ModelMixin, ConfigMixin):
    """A ControlNet branch for a `UNetSpatioTemporalConditionModel` with the same config entries.

    Args: the UNet's `UNET_CONFIG_KEYS` entries (`from_unet` copies them), plus
        conditioning_channels: channels of the condition frames (3: RGB).
        conditioning_embedding_out_channels: widths of the conditioning encoder's stages; it
            downsamples by 2 per stage after the first, so len 4 maps pixels to latents (/8).

    Shapes: sample `(B, F, C_in, h, w)` (the UNet's input), timestep `()` or `(B,)`,
    encoder_hidden_states `(B, 1, D)`, added_time_ids `(B, 3)`, control `(B, F, 3, 8h, 8w)` in
    [0, 1] -> (one residual per UNet skip connection `(B*F, C_i, h_i, w_i)`, in down order;
    the mid residual `(B*F, C_last, h_last, w_last)`).
    """

    control_type = "controlnet"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = CONDITIONING_CHANNELS,
    ) -> None:
        super().__init__()
        blocks = len(down_block_types)
        width0 = block_out_channels[0]
        time_embed_dim = width0 * 4
        # The UNet's input path, built as diffusers builds it (same names, same shapes).
        self.conv_in = nn.Conv2d(in_channels, width0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(width0, True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(width0, time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        heads = _per_block(num_attention_heads, blocks)
        cross = _per_block(cross_attention_dim, blocks)
        layers = _per_block(layers_per_block, blocks)
        transformer_layers = _per_block(transformer_layers_per_block, blocks)
        self.down_blocks = nn.ModuleList()
        skip_widths = [width0]
        out = width0
        for i, block_type in enumerate(down_block_types):
            final = i == blocks - 1
            inp, out = out, block_out_channels[i]
            self.down_blocks.append(get_down_block(
                block_type, num_layers=layers[i], transformer_layers_per_block=transformer_layers[i],
                in_channels=inp, out_channels=out, temb_channels=time_embed_dim, add_downsample=not final,
                resnet_eps=RESNET_EPS, cross_attention_dim=cross[i], num_attention_heads=heads[i],
                resnet_act_fn="silu",
            ))
            skip_widths += [out] * (layers[i] + (0 if final else 1))
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1], temb_channels=time_embed_dim, transformer_layers_per_block=transformer_layers[-1],
            cross_attention_dim=cross[-1], num_attention_heads=heads[-1],
        )
        # What is new: the condition's encoder (last layer zero) and the zero 1x1 convolutions.
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            width0, conditioning_channels=conditioning_channels,
            block_out_channels=tuple(conditioning_embedding_out_channels),
        )
        self.controlnet_down_blocks = nn.ModuleList(_zero_conv(w) for w in skip_widths)
        self.controlnet_mid_block = _zero_conv(block_out_channels[-1])

    @property
    def condition_channels(self) -> int:
        """Channels of the control frames."""
        return self.config.conditioning_channels

    @classmethod
    def from_unet(
        cls, unet: nn.Module, *, copy_weights: bool = True, **overrides
    ) -> "SVDControlNetModel":
        """A branch for `unet`; with `copy_weights` its input path starts as a copy of the UNet's
        (ControlNet's initialisation). `overrides` set the branch's own config entries."""
        branch = cls(**{k: unet.config[k] for k in UNET_CONFIG_KEYS}, **overrides)
        branch.to(unet.device)
        if unet.dtype != branch.dtype:
            branch.to(unet.dtype)
        if copy_weights:
            for name in COPIED_MODULES:
                getattr(branch, name).load_state_dict(getattr(unet, name).state_dict())
        return branch

    @classmethod
    def for_unet(cls, unet_config: Mapping) -> "SVDControlNetModel":
        """An uninitialised branch shaped for a UNet with this config (for loading weights)."""
        return cls(**{k: unet_config[k] for k in UNET_CONFIG_KEYS})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "SVDControlNetModel":
        """diffusers' `ModelMixin.from_pretrained`, made strict (see `ControlNeXtModel.from_pretrained`)."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        check_loading_info(info, what="ControlNet branch", path=pretrained_model_name_or_path)
        own_memory(model)
        return (model, info) if want_info else model

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        control: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        batch, frames = sample.shape[:2]
        t = batch_timesteps(timestep, batch, sample.device)
        emb = self.time_embedding(self.time_proj(t).to(dtype=sample.dtype))
        added = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = (emb + self.add_embedding(added)).repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)

        x = self.conv_in(sample.flatten(0, 1))
        x = x + self.controlnet_cond_embedding(control.flatten(0, 1).to(x.dtype))
        skips = (x,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
            else:
                x, res = block(hidden_states=x, temb=emb, image_only_indicator=indicator)
            skips += res
        x = self.mid_block(hidden_states=x, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator)
        down = tuple(conv(skip) for conv, skip in zip(self.controlnet_down_blocks, skips))
        return down, self.controlnet_mid_block(x)

    # ------------------------------------------------------------ the control interface

    def signal(
        self, control: torch.Tensor, timestep: torch.Tensor | float, *, first_row: int = 0, scale: float = 1.0
    ) -> "BranchSignal":
        """The control for the next UNet call: the branch runs inside the call, on the UNet's
        inputs for the rows `first_row:` (a whole number of samples). Shapes: control `(B, F, 3, H, W)`.
        The timestep is the UNet's (the branch takes it from the call)."""
        return BranchSignal(self, control, first_row, scale)

    def injection(self, unet: nn.Module):
        """The hooks that add this branch's residuals to `unet` (a context manager)."""
        return controlnet_injection(unet)


@dataclass(frozen=True)
class BranchSignal:
    """Condition frames for the rows `first_row : first_row + B*F` of the UNet's flattened batch.

    Attributes:
        branch: the ControlNet branch that encodes them.
        control: `(B, F, 3, H, W)` in [0, 1].
        first_row: first UNet row (sample * frames + frame); a multiple of F.
        scale: multiplier on every residual (the user's control scale).
    """

    branch: SVDControlNetModel
    control: torch.Tensor
    first_row: int
    scale: float = 1.0

    def residuals(self, sample, timestep, encoder_hidden_states, added_time_ids):
        batch, frames = self.control.shape[:2]
        if self.first_row % frames or sample.shape[1] != frames:
            raise ValueError(f"control for {frames} frames from row {self.first_row} does not fit the UNet's "
                             f"sample {tuple(sample.shape)}")
        first = self.first_row // frames
        rows = slice(first, first + batch)
        if sample[rows].shape[0] != batch:
            raise ValueError(f"control {tuple(self.control.shape)} from sample {first} does not fit the UNet's "
                             f"sample {tuple(sample.shape)}")
        t = torch.as_tensor(timestep)
        t = t if t.ndim == 0 else t.to(sample.device).expand(sample.shape[0])[rows]
        down, mid = self.branch(sample[rows], t, encoder_hidden_states[rows], added_time_ids[rows], self.control)
        return down, mid


def _add_rows(hidden: torch.Tensor, residual: torch.Tensor, first_row: int, scale: float) -> torch.Tensor:
    """`hidden` with `residual * scale` added to rows `first_row:first_row + len(residual)` (a new tensor)."""
    stop = first_row + residual.shape[0]
    added = hidden[first_row:stop] + residual.to(hidden.dtype) * scale
    return torch.cat([hidden[:first_row], added, hidden[stop:]], dim=0)


class ControlNetInjector:
    """Holds the signal for the next UNet call and the hooks that apply it.

    The branch's residuals exist only between the UNet's pre-hook and its forward hook.
    """

    def __init__(self, unet: nn.Module) -> None:
        self.signal: BranchSignal | None = None
        self._residuals: tuple[tuple[torch.Tensor, ...], torch.Tensor] | None = None
        self._bind = inspect.signature(unet.forward).bind
        # Skip connections each up block receives: the last ones of the down path's list, in order.
        skips = 1 + sum(len(b.resnets) + len(getattr(b, "downsamplers", None) or ()) for b in unet.down_blocks)
        self.up_slices = []
        for block in unet.up_blocks:
            self.up_slices.append(slice(skips - len(block.resnets), skips))
            skips -= len(block.resnets)
        if skips != 0:
            raise ValueError("the UNet's up blocks do not consume its down path's skip connections one to one")

    def before_unet(self, module, args, kwargs):
        if self.signal is None:
            return None
        bound = self._bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        self._residuals = self.signal.residuals(a["sample"], a["timestep"], a["encoder_hidden_states"],
                                                a["added_time_ids"])
        return None

    def after_unet(self, module, args, output):
        self._residuals = None
        return output

    def after_mid(self, module, args, output):
        if self._residuals is None:
            return output
        return _add_rows(output, self._residuals[1], self.signal.first_row, self.signal.scale)

    def before_up(self, index: int):
        def hook(module, args, kwargs):
            if self._residuals is None:
                return None
            skips = kwargs["res_hidden_states_tuple"]
            residuals = self._residuals[0][self.up_slices[index]]
            kwargs = dict(kwargs, res_hidden_states_tuple=tuple(
                _add_rows(s, r, self.signal.first_row, self.signal.scale) for s, r in zip(skips, residuals)))
            return args, kwargs

        return hook


@contextmanager
def controlnet_injection(unet: nn.Module) -> Iterator[ControlNetInjector]:
    """Install the ControlNet hooks on `unet` for the duration of the block.

    Set `injector.signal` (a `BranchSignal`, or None for no control) before each UNet call.
    """
    injector = ControlNetInjector(unet)
    handles = [
        unet.register_forward_pre_hook(injector.before_unet, with_kwargs=True),
        unet.register_forward_hook(injector.after_unet),
        unet.mid_block.register_forward_hook(injector.after_mid),
    ]
    handles += [block.register_forward_pre_hook(injector.before_up(i), with_kwargs=True)
                for i, block in enumerate(unet.up_blocks)]
    try:
        yield injector
    finally:
        for handle in handles:
            handle.remove()
        injector.signal = None
        injector._residuals = None
