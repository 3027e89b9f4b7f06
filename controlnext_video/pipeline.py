"""ControlNeXt-SVD: animate a reference image with a sequence of pose frames.

`ControlNeXtSVDPipeline` is a diffusers `DiffusionPipeline` on stock components: the SVD UNet,
VAE, CLIP image encoder, feature extractor and Euler scheduler, plus the ControlNeXt control
module, which enters the UNet through a forward hook that lives only during a call.
`pipe(reference, poses, ...)` reproduces the published ControlNeXt-SVD v2 inference: CLIP and
VAE conditioning on the reference image, per-step fusion of overlapping windows whose first
frame is conditioned on the reference pose, classifier-free guidance ramped over each window,
and chunked temporal VAE decoding.

`from_pretrained` loads the released layout (an SVD directory plus the two ControlNeXt files)
or a directory written by `save_pretrained` (diffusers' standard layout, with a `controlnext/`
component); see `controlnext_video.model_dir`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKLTemporalDecoder,
    DiffusionPipeline,
    SchedulerMixin,
    UNetSpatioTemporalConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from .control import ControlNeXtModel
from .controlnet import SVDControlNetModel
from .controls import control_from_config, read_control_config
from .distributed import agree_on_minimum, all_gather_uneven, check_same_on_all_ranks, decode_frames, rank_and_size
from .memory import apply_memory_limit, free_memory, is_out_of_memory, plan_windows_per_batch, release_memory
from .model_dir import CONTROLNEXT_COMPONENT, check_model_dir
from .sampler import DEFAULT_CORRECTOR_SNR, FrameNoise, StochasticOptions, WindowDenoiser, sample_windows
from .weights import load_into, own_memory
from .windows import Window, WindowPlan, plan_windows

if TYPE_CHECKING:
    from transformers import CLIPVisionModelWithProjection
    from transformers.image_processing_utils import BaseImageProcessor

# Defaults of the reference inference script (ControlNeXt-SVD v2).
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 3.0
DEFAULT_WINDOW = 24
DEFAULT_OVERLAP = 6
DEFAULT_DECODE_CHUNK = 2
DEFAULT_FPS_ID = 6
DEFAULT_MOTION_BUCKET = 128
DEFAULT_NOISE_AUG = 0.02
OUTPUT_TYPES = ("np", "latent")
# Smallest blur of the antialiased resize (a downscale by 1 still blurs a little, as SVD's does).
MIN_RESIZE_SIGMA = 0.001

# (pipeline, step index, timestep, tensors named in callback_on_step_end_tensor_inputs) -> tensors to replace
StepEndCallback = Callable[["ControlNeXtSVDPipeline", int, torch.Tensor, dict], dict]


def _as_uint8_hwc(image, what: str, channels: int = 3) -> np.ndarray:
    """An RGB image (or `channels // 3` RGB pictures stacked on the channel axis) as a uint8
    `(H, W, channels)` array (PIL image, uint8 array, or float array in [0, 1])."""
    if channels == 3 and hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == channels and array.shape[-1] != channels:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != channels:
        kind = "an RGB image" if channels == 3 else f"{channels // 3} RGB pictures stacked on the channel axis"
        raise ValueError(f"{what} must be {kind} (H, W, {channels}), got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"{what} has float values outside [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def image_processor_class() -> type:
    """transformers' CLIP image processor that needs no torchvision: `CLIPImageProcessorPil`
    (transformers 5, whose `CLIPImageProcessor` falls back to it with a warning) or, before it,
    `CLIPImageProcessor`. The pipeline reads only its normalization constants."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def resize_antialiased(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize as SVD prepares its CLIP input: a Gaussian blur against aliasing, then bicubic.

    Per axis, a downscale by `s` blurs with sigma `max((s - 1) / 2, MIN_RESIZE_SIGMA)`, a kernel
    of `max(4 sigma, 3)` taps rounded down and made odd, with reflected borders; the resize is
    bicubic with aligned corners.
    Shapes: `(B, C, H, W)` -> `(B, C, *size)`.
    """
    channels = images.shape[1]
    for axis, target in ((-1, size[1]), (-2, size[0])):  # width first, then height
        sigma = max((images.shape[axis] / target - 1.0) / 2.0, MIN_RESIZE_SIGMA)
        taps = int(max(4.0 * sigma, 3))
        taps += 1 - taps % 2
        x = torch.arange(taps, dtype=images.dtype, device=images.device) - taps // 2
        kernel = torch.exp(-x.pow(2.0) / (2 * torch.tensor(sigma, dtype=images.dtype).pow(2.0)))
        kernel = (kernel / kernel.sum()).expand(channels, 1, taps)
        half = taps // 2
        if axis == -1:
            padded = F.pad(images, (half, half, 0, 0), mode="reflect")
            images = F.conv2d(padded, kernel[:, :, None, :], groups=channels)
        else:
            padded = F.pad(images, (0, 0, half, half), mode="reflect")
            images = F.conv2d(padded, kernel[:, :, :, None], groups=channels)
    return F.interpolate(images, size=size, mode="bicubic", align_corners=True)


class ControlNeXtSVDPipeline(DiffusionPipeline):
    """The ControlNeXt-SVD v2 pipeline on stock diffusers and transformers components.

    Components are used as they are: the control is injected into the stock
    `UNetSpatioTemporalConditionModel` by a forward hook that lives only during a call.
    Speed and memory options: `windows_per_batch` (windows per UNet call; None plans them from
    free GPU memory), `set_memory_limit`, `compile`, `enable_channels_last` and diffusers'
    `enable_model_cpu_offload`.
    """

    model_cpu_offload_seq = "image_encoder->unet->vae"
    # The control module (3.5 M parameters) runs before every UNet call: in the offload chain it
    # would be moved to the GPU and back for every window, so it stays on the execution device.
    _exclude_from_cpu_offload = ["controlnext"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: UNetSpatioTemporalConditionModel,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder: CLIPVisionModelWithProjection,
        controlnext: ControlNeXtModel | SVDControlNetModel,
        scheduler: SchedulerMixin,
        feature_extractor: BaseImageProcessor,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, image_encoder=image_encoder, controlnext=controlnext, scheduler=scheduler,
            feature_extractor=feature_extractor,
        )
        # Windows per UNet call: an int, or None to plan from the free GPU memory (one on the CPU).
        self.windows_per_batch: int | None = None
        # A GPU memory cap in bytes for planning and allocation (None: the whole card).
        self.memory_limit: int | None = None
        # Batch sizes that ran out of memory, per (height, width, window), so later calls (later
        # segments on a worker) start below them.
        self._batch_limits: dict[tuple[int, int, int], int] = {}
        self._num_timesteps = 0
        self._model_evaluations = 0

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        unet_weights: str | Path | None = None,
        controlnext_weights: str | Path | None = None,
        *,
        torch_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        vae_dtype: torch.dtype | None = None,
    ) -> ControlNeXtSVDPipeline:
        """Load a local model directory in the released layout or the one `save_pretrained` writes.

        Released layout: `unet_weights` and `controlnext_weights` default to
        `controlnext-unet.{safetensors,bin}` and `controlnext.{safetensors,bin}` inside
        `model_dir`; the full UNet file replaces every UNet weight, so only `unet/config.json` of
        the base model is read. `save_pretrained` layout: the weights in `unet/` and
        `controlnext/`. In both, the UNet and the control module load the same strict, safe way
        (`weights.load_into`): files of any float dtype are cast to `torch_dtype`, and missing,
        unexpected or mis-shaped keys raise (diffusers' own `from_pretrained` only logs them, and
        cannot read the released files); the VAE and the image encoder load with their libraries'
        `from_pretrained`. Every weight is copied out of its file (`weights.own_memory`).
        `vae_dtype` defaults to `torch_dtype`, except float32 when the VAE asks for it
        (`force_upcast`) under fp16.
        """
        from transformers import CLIPVisionModelWithProjection

        files = check_model_dir(model_dir, unet_weights, controlnext_weights)
        root = files.root
        unet_config = UNetSpatioTemporalConditionModel.load_config(root / "unet")
        with torch.device("meta"):
            unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
            if files.layout == "diffusers":
                control_config = ControlNeXtModel.load_config(root / CONTROLNEXT_COMPONENT)
            else:
                control_config = read_control_config(root)
            controlnext = control_from_config(control_config, unet_config)
        load_into(unet, files.unet_weights, what="ControlNeXt UNet", dtype=torch_dtype)
        load_into(controlnext, files.controlnext_weights, what="ControlNeXt control module", dtype=torch_dtype)

        vae_file, image_encoder_file = files.component_weights
        vae_config = AutoencoderKLTemporalDecoder.load_config(root / "vae")
        if vae_dtype is None:
            vae_dtype = torch.float32 if torch_dtype == torch.float16 and vae_config.get("force_upcast") else torch_dtype
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            root / "vae", torch_dtype=vae_dtype, variant=_variant(vae_file)
        )
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            root / "image_encoder", dtype=torch_dtype, variant=_variant(image_encoder_file)
        )
        pipe = cls(
            unet=unet,
            vae=own_memory(vae).eval().requires_grad_(False),
            image_encoder=own_memory(image_encoder).eval().requires_grad_(False),
            controlnext=controlnext,
            scheduler=_load_scheduler(root / "scheduler"),
            feature_extractor=image_processor_class().from_pretrained(root / "feature_extractor"),
        )
        return pipe.to(device)

    # ---------------------------------------------------------------- placement and speed options

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype of the UNet and control module."""
        return self.unet.dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def num_timesteps(self) -> int:
        """Denoising steps of the current (or last) call."""
        return self._num_timesteps

    @property
    def model_evaluations(self) -> int:
        """Guided model evaluations per window of the current (or last) call: one per step, plus
        the corrector's (`corrector_steps` after every step that ends above sigma 0)."""
        return self._model_evaluations

    @property
    def model_evaluations_per_step(self) -> float:
        """`model_evaluations / num_timesteps`: the sampler's cost relative to plain Euler (1.0)."""
        return self._model_evaluations / self._num_timesteps if self._num_timesteps else 0.0

    def set_memory_limit(self, gib: float | None) -> ControlNeXtSVDPipeline:
        """Cap this process's GPU memory at `gib` GiB (None: no cap): window batches are planned
        under the cap and the CUDA allocator enforces it, so a plan that fits a 24 GB card can be
        held on a larger one, or a card shared."""
        if gib is not None and gib <= 0:
            raise ValueError(f"memory limit must be a positive number of GiB, got {gib}")
        self.memory_limit = None if gib is None else int(gib * 2**30)
        apply_memory_limit(self._execution_device, self.memory_limit)
        return self

    def compile(self, **compile_kwargs) -> ControlNeXtSVDPipeline:
        """`torch.compile` the UNet block by block and the control module (regional compilation).

        Blocks are compiled in place (`nn.Module.compile`), so the control hook on the UNet's
        first block still runs around its compiled forward, and compiled code is reused by every
        later call of this pipeline (and every segment a worker renders with it).
        """
        unet = self.unet
        for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks):
            block.compile(**compile_kwargs)
        self.controlnext.compile(**compile_kwargs)
        return self

    def enable_channels_last(self) -> ControlNeXtSVDPipeline:
        """Store the 2D convolution weights in channels-last layout (faster convolutions on GPUs).

        Only `Conv2d` weights change: the temporal layers' 5-D weights have no channels-last form.
        """
        for model in (self.unet, self.controlnext, self.vae):
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.data = module.weight.data.to(memory_format=torch.channels_last)
        return self

    def batch_plan(self, height: int, width: int, plan: WindowPlan, world_size: int = 1) -> int:
        """Windows per UNet call for this call: the set value, or planned from free GPU memory.

        Over `world_size` processes a planned batch holds at most ceil(windows / world_size)
        windows, so that every process gets work (a set value is kept as it is).
        """
        limit = self._batch_limits.get((height, width, plan.window_size), len(plan.windows))
        if self.windows_per_batch is not None:
            return max(1, min(self.windows_per_batch, limit))
        free = free_memory(self._execution_device, self.memory_limit)
        if free is None:
            return 1
        share = math.ceil(len(plan.windows) / world_size)
        planned = plan_windows_per_batch(free, height, width, plan.window_size, self.dtype, share)
        return min(planned, limit)

    def _lower_batch_limit(self, key: tuple[int, int, int], windows_per_batch: int) -> None:
        """After an out-of-memory error: remember the smaller batch for later calls of this size."""
        release_memory(self._execution_device)
        self._batch_limits[key] = windows_per_batch
        warnings.warn(f"out of memory: {windows_per_batch} windows per UNet call from now on",
                      RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------- stages

    def check_inputs(
        self,
        reference,
        poses,
        *,
        height: int | None,
        width: int | None,
        num_inference_steps: int,
        window_size: int,
        overlap: int,
        decode_chunk_size: int,
        min_guidance_scale: float,
        max_guidance_scale: float,
        control_scale: float,
        noise_aug_strength: float,
        latents: torch.Tensor | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str] = (),
        frame_indices: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, torch.Tensor, WindowPlan]:
        """Validate every argument before any model work (the stochastic options validate as
        they are built, `StochasticOptions`).

        Returns the reference as uint8 `(H, W, 3)`, the poses as a uint8 tensor `(N, H, W, 3)`
        on the CPU, and the window plan. Raises ValueError naming the offending argument.
        """
        ref = _as_uint8_hwc(reference, "reference")
        height = ref.shape[0] if height is None else height
        width = ref.shape[1] if width is None else width
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")
        if ref.shape[:2] != (height, width):
            raise ValueError(
                f"reference is {ref.shape[1]}x{ref.shape[0]} (WxH) but the output size is {width}x{height}: "
                "resize it to cover the output size and center-crop it first (pose.extract.prepare_reference does)"
            )
        if poses is None or len(poses) == 0:
            raise ValueError("poses is empty: give at least the reference pose (poses[0])")
        # uint8 on the CPU: a quarter of float32's memory; frames go to the device per window.
        channels = self.controlnext.condition_channels
        pose_tensor = torch.empty((len(poses), height, width, channels), dtype=torch.uint8)
        for i in range(len(poses)):
            pose = _as_uint8_hwc(poses[i], f"poses[{i}]", channels)
            if pose.shape[:2] != (height, width):
                raise ValueError(
                    f"poses[{i}] is {pose.shape[1]}x{pose.shape[0]} (WxH), expected the output size {width}x{height}"
                )
            pose_tensor[i].numpy()[...] = pose
        for name, value, low in (
            ("num_inference_steps", num_inference_steps, 1),
            ("window_size", window_size, 1),
            ("overlap", overlap, 0),
            ("decode_chunk_size", decode_chunk_size, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if overlap >= window_size:
            raise ValueError(f"overlap ({overlap}) must be smaller than window_size ({window_size})")
        for name, value in (
            ("min_guidance_scale", min_guidance_scale),
            ("max_guidance_scale", max_guidance_scale),
            ("control_scale", control_scale),
            ("noise_aug_strength", noise_aug_strength),
        ):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if noise_aug_strength < 0:
            raise ValueError(f"noise_aug_strength must be >= 0, got {noise_aug_strength}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {unknown}"
            )
        plan = plan_windows(len(pose_tensor), window_size, overlap)
        if frame_indices is not None and (len(frame_indices) != len(pose_tensor) or min(frame_indices) < 0):
            raise ValueError(f"frame_indices must give an index >= 0 for each of the {len(pose_tensor)} frames, "
                             f"got {len(frame_indices)} indices")
        if latents is not None:
            expected = self.latent_shape(len(pose_tensor), height, width)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
        return ref, pose_tensor, plan

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (1, num_frames, self.vae.config.latent_channels, height // factor, width // factor)

    @torch.no_grad()
    def encode_image(self, reference: torch.Tensor) -> torch.Tensor:
        """CLIP image embedding of the reference, as diffusers' SVD pipeline computes it.

        Shapes: reference `(1, 3, H, W)` in [0, 1] -> `(1, 1, D)`.
        """
        size = self.image_encoder.config.image_size
        image = resize_antialiased(reference * 2.0 - 1.0, (size, size))
        image = (image + 1.0) / 2.0
        mean = torch.tensor(self.feature_extractor.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.feature_extractor.image_std).view(1, -1, 1, 1)
        image = ((image - mean) / std).to(self._execution_device, self.image_encoder.dtype)
        return self.image_encoder(image).image_embeds.unsqueeze(1)

    @torch.no_grad()
    def encode_reference_latents(
        self, reference: torch.Tensor, noise_aug_strength: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """VAE latents of the noise-augmented reference (distribution mode, no scaling factor).

        Shapes: reference `(1, 3, H, W)` in [0, 1] -> `(1, C, H/8, W/8)`.
        """
        device = self._execution_device
        image = (reference * 2.0 - 1.0).to(device)
        noise = randn_tensor(image.shape, generator=generator, device=device, dtype=image.dtype)
        image = image + noise_aug_strength * noise
        return self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode()

    def prepare_latents(
        self,
        shape: tuple[int, ...],
        scheduler,
        generator: torch.Generator | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial latents (drawn from `generator` unless given), scaled by the scheduler's
        `init_noise_sigma`, in float32 on the execution device.

        Shapes: `shape` is `(1, N, C, H/8, W/8)`; given latents have it already.
        """
        device = self._execution_device
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        return latents.to(device, torch.float32) * scheduler.init_noise_sigma

    @torch.no_grad()
    def decode_latents(
        self, latents: torch.Tensor, decode_chunk_size: int = DEFAULT_DECODE_CHUNK, *, process_group=None
    ) -> Iterator[np.ndarray]:
        """Decode latents `decode_chunk_size` frames at a time, yielding each chunk as it is done.

        The temporal decoder mixes frames inside a chunk, so the result depends on the chunk size.
        Shapes: latents `(1, N, C, h, w)` -> chunks `(n, H, W, 3)` float32 in [0, 1].
        On a GPU out-of-memory error the chunk size is halved for the rest of the clip (with a
        warning: smaller chunks decode slightly differently) rather than failing.
        With `process_group`, only this rank's frames are decoded and yielded: the contiguous
        run of whole chunks `controlnext_video.distributed.decode_frames(N, decode_chunk_size,
        world_size, rank)`, the same chunks one process decodes.
        """
        device = self._execution_device
        if process_group is not None:
            frames = decode_frames(latents.shape[1], decode_chunk_size, *reversed(rank_and_size(process_group)))
            latents = latents[:, frames.start : frames.stop]
        z = latents.flatten(0, 1) / self.vae.config.scaling_factor
        i = 0
        while i < z.shape[0]:
            chunk = z[i : i + decode_chunk_size].to(device, self.vae.dtype)
            try:
                frames = self.vae.decode(chunk, num_frames=chunk.shape[0]).sample
            except Exception as exc:
                if not is_out_of_memory(exc) or decode_chunk_size == 1:
                    raise
                del chunk
                release_memory(device)
                decode_chunk_size //= 2
                warnings.warn(f"out of memory decoding: decode_chunk_size lowered to {decode_chunk_size}",
                              RuntimeWarning, stacklevel=2)
                continue
            i += chunk.shape[0]
            yield (frames.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    def window_denoiser(
        self,
        *,
        injector,
        poses: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_latents: torch.Tensor,
        added_time_ids: torch.Tensor,
        guidance: torch.Tensor | None,
        control_scale: float,
    ) -> WindowDenoiser:
        """The denoiser the sampler calls: a batch of windows -> guided model outputs.

        Shapes: poses `(N, H, W, 3)` uint8, image_embeddings `(1, 1, D)`, image_latents
        `(1, C, h, w)`, added_time_ids `(1, 3)`, guidance `(1, window_size, 1, 1, 1)` or None
        (no classifier-free guidance); the denoiser maps scaled latents `(1, N, C, h, w)`, a
        timestep and k windows to k outputs `(1, window.size, C, h, w)` in float32.
        """
        unet, controlnext, device, dtype = self.unet, self.controlnext, self._execution_device, self.dtype
        do_cfg = guidance is not None

        def denoise(scaled: torch.Tensor, t: torch.Tensor, windows: Sequence[Window]) -> list[torch.Tensor]:
            k, size = len(windows), windows[0].size
            sample = torch.cat([scaled[:, w.start : w.stop] for w in windows]).to(device, dtype)
            control = torch.stack([poses[list(w.control_indices)] for w in windows])
            control = control.permute(0, 1, 4, 2, 3).to(device).to(dtype) / 255.0
            cond_latents = image_latents.to(dtype).unsqueeze(1).expand(k, size, -1, -1, -1)
            if do_cfg:
                sample = torch.cat([sample, sample])
                cond_latents = torch.cat([torch.zeros_like(cond_latents), cond_latents])
                embeddings = torch.cat([torch.zeros_like(image_embeddings)] * k + [image_embeddings] * k)
                time_ids = added_time_ids.expand(2 * k, -1)
                first_row = k * size
            else:
                embeddings = image_embeddings.expand(k, -1, -1)
                time_ids = added_time_ids.expand(k, -1)
                first_row = 0
            injector.signal = controlnext.signal(control, t, first_row=first_row, scale=control_scale)
            model_input = torch.cat([sample, cond_latents], dim=2)
            output = unet(model_input, t, encoder_hidden_states=embeddings, added_time_ids=time_ids, return_dict=False)[0]
            output = output.float()
            if do_cfg:
                uncond, cond = output.chunk(2)
                output = uncond + guidance * (cond - uncond)
            return list(output.split(1))

        return denoise

    # ---------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        reference,
        poses: Sequence,
        *,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        min_guidance_scale: float = DEFAULT_GUIDANCE,
        max_guidance_scale: float = DEFAULT_GUIDANCE,
        window_size: int = DEFAULT_WINDOW,
        overlap: int = DEFAULT_OVERLAP,
        decode_chunk_size: int = DEFAULT_DECODE_CHUNK,
        control_scale: float = 1.0,
        fps_id: int = DEFAULT_FPS_ID,
        motion_bucket_id: int = DEFAULT_MOTION_BUCKET,
        noise_aug_strength: float = DEFAULT_NOISE_AUG,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        callback_on_step_end: StepEndCallback | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        process_group=None,
        corrector_steps: int = 0,
        corrector_snr: float = DEFAULT_CORRECTOR_SNR,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        noise_seed: int | None = None,
        frame_indices: Sequence[int] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Animate `reference` with `poses`; `poses[0]` is the reference image's own pose.

        Args:
            reference: RGB image at the output size (PIL, uint8 `(H, W, 3)`, or float in [0, 1]).
            poses: N rendered pose frames at the output size, same formats; frame i of the
                output follows poses[i], and every window's first frame the reference pose.
                With a multi-condition control module, each frame stacks its condition
                pictures on the channel axis (`controlnext.condition_channels`), an absent
                condition black.
            height, width: output size, multiples of 8 (default: the reference's size).
            num_inference_steps: denoising steps.
            min_guidance_scale, max_guidance_scale: guidance ramps linearly over each window's
                frames from min to max; both 1.0 turns classifier-free guidance off.
            window_size, overlap: temporal windows fused at every step.
            decode_chunk_size: frames the temporal VAE decoder sees at once.
            control_scale: strength of the pose control (1.0 reproduces the reference).
            fps_id, motion_bucket_id, noise_aug_strength: SVD micro-conditioning; the noise
                augmentation is also added to the reference image before VAE encoding.
            generator: used first for the reference's noise augmentation, then for the initial
                latents when `latents` is None (as diffusers' SVD pipeline does).
            latents: initial noise `(1, N, C, H/8, W/8)` before scaling by the scheduler's
                `init_noise_sigma`.
            output_type: "np" for frames `(N, H, W, 3)` float32 in [0, 1], "latent" for the
                final latents `(1, N, C, H/8, W/8)`.
            callback_on_step_end: called after every denoising step, as in diffusers, with
                `(pipe, step_index, timestep, callback_kwargs)`; `callback_kwargs` holds the
                tensors named in `callback_on_step_end_tensor_inputs` (`"latents"`, the whole
                clip's), and the returned dict may replace them. It may raise to stop the call.
            callback_on_step_end_tensor_inputs: tensors given to `callback_on_step_end`.
            process_group: a `torch.distributed` process group (one process per GPU) to spread
                the call over: every rank calls with the same arguments (and generator seed),
                denoises its share of the windows and decodes its share of the frames, and
                returns the one-process result bit for bit (with the same windows per UNet
                call). The group's timeout bounds every wait on another rank. None: this
                process alone.
            corrector_steps, corrector_snr: a Langevin corrector after each denoising step
                (predictor-corrector sampling): `corrector_steps` steps (0: none, the reference
                sampler bit for bit), each one more model evaluation per window, with the step
                size from the target signal-to-noise ratio (`sampler.langevin_step`).
            s_churn, s_tmin, s_tmax, s_noise: Karras et al.'s churn (s_churn 0: none, the
                reference sampler bit for bit); see `sampler.StochasticOptions`.
            noise_seed: seed of the corrector's and churn's fresh noise (default: the
                generator's initial seed, or one drawn from torch's global generator).
            frame_indices: the clip-global index of each frame, which keys that noise (default
                0..N-1); a segment passes its own (`Segment.noise_indices`), so a frame gets the
                same noise whatever the segment plan.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # 1. Check inputs
        ref, pose_frames, plan = self.check_inputs(
            reference, poses, height=height, width=width, num_inference_steps=num_inference_steps,
            window_size=window_size, overlap=overlap, decode_chunk_size=decode_chunk_size,
            min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale,
            control_scale=control_scale, noise_aug_strength=noise_aug_strength, latents=latents,
            output_type=output_type, callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            frame_indices=frame_indices,
        )
        stochastic = StochasticOptions(corrector_steps=corrector_steps, corrector_snr=corrector_snr, s_churn=s_churn,
                                       s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise)
        noise = self.sampler_noise(stochastic, noise_seed, generator, frame_indices, plan.num_frames, process_group)
        height, width = ref.shape[:2]
        device = self._execution_device

        # 2. Encode the reference: CLIP embedding, VAE latents, micro-conditioning
        reference01 = torch.tensor(ref).permute(2, 0, 1)[None].float() / 255.0
        image_embeddings = self.encode_image(reference01).to(self.dtype)
        image_latents = self.encode_reference_latents(reference01, noise_aug_strength, generator)
        if process_group is not None:
            check_same_on_all_ranks(image_latents, process_group, "reference latents (the generator's noise augmentation)")
        added_time_ids = torch.tensor([[fps_id, motion_bucket_id, noise_aug_strength]], dtype=self.dtype, device=device)

        # 3. Timesteps, on a fresh scheduler so that calls never share its state
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(scheduler.timesteps)
        self._model_evaluations = stochastic.model_evaluations(scheduler.sigmas)

        # 4. Initial latents
        latents = self.prepare_latents(self.latent_shape(plan.num_frames, height, width), scheduler, generator, latents)

        # 5. Denoise the windows of every step, the control entering through the scoped hook
        guidance = None
        if not min_guidance_scale == max_guidance_scale == 1.0:
            guidance = torch.linspace(min_guidance_scale, max_guidance_scale, plan.window_size, device=device)
            guidance = guidance.view(1, -1, 1, 1, 1)
        with self.controlnext.injection(self.unet) as injector, self.progress_bar(total=self._num_timesteps) as progress_bar:
            denoise = self.window_denoiser(
                injector=injector, poses=pose_frames, image_embeddings=image_embeddings, image_latents=image_latents,
                added_time_ids=added_time_ids, guidance=guidance, control_scale=control_scale,
            )

            def on_step_end(step: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, step, t, callback_kwargs).pop("latents", latents)
                progress_bar.update()
                return latents

            latents = sample_windows(
                denoise, latents, scheduler, plan,
                windows_per_batch=self._windows_per_batch(height, width, plan, process_group), on_step_end=on_step_end,
                on_out_of_memory=partial(self._lower_batch_limit, (height, width, plan.window_size)),
                process_group=process_group, stochastic=stochastic, noise=noise,
            )

        # 6. Decode (each rank its share of the chunks, then gathered)
        if output_type == "np":
            chunks = list(self.decode_latents(latents, decode_chunk_size, process_group=process_group))
            latents = np.concatenate(chunks) if chunks else np.zeros((0, height, width, 3), np.float32)
            if process_group is not None:
                latents = _gather_frames(latents, plan.num_frames, decode_chunk_size, process_group)
        self.maybe_free_model_hooks()
        return latents

    def sampler_noise(self, stochastic: StochasticOptions, noise_seed: int | None, generator: torch.Generator | None,
                      frame_indices: Sequence[int] | None, num_frames: int, process_group) -> FrameNoise | None:
        """The fresh noise of the corrector and churn (None when both are off): keyed by
        `noise_seed` (default: the generator's initial seed, else one from torch's global
        generator; it must be the same on every rank of `process_group`) and the clip-global
        frame indices."""
        if not stochastic.active:
            return None
        if noise_seed is None:
            noise_seed = generator.initial_seed() if generator is not None else int(torch.randint(2**62, ()))
        if not isinstance(noise_seed, int) or noise_seed < 0:
            raise ValueError(f"noise_seed must be an integer >= 0, got {noise_seed!r}")
        if process_group is not None:
            check_same_on_all_ranks(torch.tensor([noise_seed]), process_group, "noise seeds (noise_seed or the generator's)")
        indices = tuple(range(num_frames)) if frame_indices is None else tuple(int(i) for i in frame_indices)
        return FrameNoise(noise_seed, indices)

    def _windows_per_batch(self, height: int, width: int, plan: WindowPlan, process_group) -> int:
        """`batch_plan`, agreed over the ranks of `process_group` (the smallest wins)."""
        if process_group is None:
            return self.batch_plan(height, width, plan)
        planned = self.batch_plan(height, width, plan, world_size=rank_and_size(process_group)[1])
        return agree_on_minimum(planned, process_group, self._execution_device)


def _gather_frames(mine: np.ndarray, num_frames: int, decode_chunk_size: int, process_group) -> np.ndarray:
    """Every rank's decoded frames (`decode_frames`), gathered on every rank in frame order.

    Shapes: this rank's `(n, H, W, 3)` -> `(num_frames, H, W, 3)`.
    """
    world_size = rank_and_size(process_group)[1]
    frame_shape = mine.shape[1:]
    per_frame = int(np.prod(frame_shape))
    sizes = [len(decode_frames(num_frames, decode_chunk_size, world_size, r)) * per_frame for r in range(world_size)]
    parts = all_gather_uneven(torch.from_numpy(np.ascontiguousarray(mine).reshape(-1)), sizes, process_group)
    return torch.cat(parts).view(num_frames, *frame_shape).numpy()


def _variant(weights: Path) -> str | None:
    """"fp16" when a component's weights are its fp16 variant (`model.fp16.safetensors`, as on
    the hub, or what `save_pretrained(variant="fp16")` writes)."""
    return "fp16" if ".fp16." in weights.name else None


def _load_scheduler(directory: Path):
    import diffusers

    config = json.loads((directory / "scheduler_config.json").read_text())
    name = config.get("_class_name", "EulerDiscreteScheduler")
    scheduler_cls = getattr(diffusers, name, None)
    if scheduler_cls is None:
        raise ValueError(f"{directory}/scheduler_config.json names an unknown scheduler class {name!r}")
    return scheduler_cls.from_pretrained(directory)
