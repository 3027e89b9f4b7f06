"""ControlNeXt-SVD: animate a reference image with a sequence of pose frames.

`ControlNeXtSVDPipeline.from_pretrained` loads an SVD model directory in the diffusers layout
plus the two ControlNeXt files (a full fine-tuned UNet state dict and the control module), and
`pipe(reference, poses, ...)` reproduces the published ControlNeXt-SVD v2 inference: CLIP and
VAE conditioning on the reference image, per-step fusion of overlapping windows whose first
frame is conditioned on the reference pose, classifier-free guidance ramped over each window,
and chunked temporal VAE decoding.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.utils.torch_utils import randn_tensor

from .control import ControlNeXtModel
from .injection import ControlSignal, control_injection
from .memory import apply_memory_limit, free_memory, is_out_of_memory, plan_windows_per_batch, release_memory
from .sampler import sample_windows
from .weights import load_into
from .windows import Window, WindowPlan, plan_windows

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

ImageLike = "PIL.Image.Image | np.ndarray | torch.Tensor"


def _as_uint8_hwc(image, what: str) -> np.ndarray:
    """An RGB image as a uint8 `(H, W, 3)` array (PIL image, uint8 array, or float array in [0, 1])."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{what} must be an RGB image (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{what} must be uint8 or float in [0, 1], got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"{what} has float values outside [0, 1]")
        array = np.round(array * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


class ControlNeXtSVDPipeline:
    """The ControlNeXt-SVD v2 pipeline on stock diffusers and transformers components.

    Components are used as they are: the control is injected into the stock
    `UNetSpatioTemporalConditionModel` by a forward hook that lives only during a call.
    """

    def __init__(
        self,
        *,
        unet: UNetSpatioTemporalConditionModel,
        vae: AutoencoderKLTemporalDecoder,
        image_encoder,
        controlnext: ControlNeXtModel,
        scheduler,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        device: torch.device | str = "cpu",
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.controlnext = controlnext
        self.scheduler = scheduler
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.device = torch.device(device)
        self.offload = False
        # Windows per UNet call: an int, or None to plan from the free GPU memory (one on the CPU).
        self.windows_per_batch: int | None = None
        # A GPU memory cap in bytes for planning and allocation (None: the whole card).
        self.memory_limit: int | None = None
        # Batch sizes that ran out of memory, per (height, width, window), so later calls (later
        # segments on a worker) start below them.
        self._batch_limits: dict[tuple[int, int, int], int] = {}

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
    ) -> "ControlNeXtSVDPipeline":
        """Load an SVD directory (diffusers layout) with the ControlNeXt weights.

        `unet_weights` and `controlnext_weights` default to `controlnext-unet.{safetensors,bin}`
        and `controlnext.{safetensors,bin}` inside `model_dir`. The full UNet file replaces every
        UNet weight, so only `unet/config.json` of the base model is read. `vae_dtype` defaults
        to `torch_dtype`, except float32 when the VAE asks for it (`force_upcast`) under fp16.
        """
        from transformers import CLIPVisionModelWithProjection

        from .model_dir import check_model_dir

        files = check_model_dir(model_dir, unet_weights, controlnext_weights)
        model_dir, unet_path, control_path = files.root, files.unet_weights, files.controlnext_weights

        unet_config = UNetSpatioTemporalConditionModel.load_config(model_dir / "unet")
        with torch.device("meta"):
            unet = UNetSpatioTemporalConditionModel.from_config(unet_config)
            controlnext = ControlNeXtModel.for_unet(unet_config)
        load_into(unet, unet_path, what="ControlNeXt UNet", dtype=torch_dtype)
        load_into(controlnext, control_path, what="ControlNeXt control module", dtype=torch_dtype)

        vae_config = AutoencoderKLTemporalDecoder.load_config(model_dir / "vae")
        if vae_dtype is None:
            vae_dtype = torch.float32 if torch_dtype == torch.float16 and vae_config.get("force_upcast") else torch_dtype
        vae = AutoencoderKLTemporalDecoder.from_pretrained(
            model_dir / "vae", torch_dtype=vae_dtype, variant=_variant(model_dir / "vae", "diffusion_pytorch_model")
        )
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            model_dir / "image_encoder", dtype=torch_dtype, variant=_variant(model_dir / "image_encoder", "model")
        )
        scheduler = _load_scheduler(model_dir / "scheduler")
        preprocessor = json.loads((model_dir / "feature_extractor/preprocessor_config.json").read_text())
        pipe = cls(
            unet=unet,
            vae=vae.eval().requires_grad_(False),
            image_encoder=image_encoder.eval().requires_grad_(False),
            controlnext=controlnext,
            scheduler=scheduler,
            image_mean=preprocessor["image_mean"],
            image_std=preprocessor["image_std"],
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

    def to(self, device: torch.device | str) -> "ControlNeXtSVDPipeline":
        """Move every component to `device` (and turn CPU offload off)."""
        self.device = torch.device(device)
        self.offload = False
        for module in self._modules():
            module.to(self.device)
        return self

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> "ControlNeXtSVDPipeline":
        """Keep components on the CPU and move each to `device` only while it runs."""
        self.device = torch.device(device)
        self.offload = True
        for module in self._modules():
            module.to("cpu")
        return self

    def set_memory_limit(self, gib: float | None) -> "ControlNeXtSVDPipeline":
        """Cap this process's GPU memory at `gib` GiB (None: no cap): window batches are planned
        under the cap and the CUDA allocator enforces it, so a plan that fits a 24 GB card can be
        held on a larger one, or a card shared."""
        if gib is not None and gib <= 0:
            raise ValueError(f"memory limit must be a positive number of GiB, got {gib}")
        self.memory_limit = None if gib is None else int(gib * 2**30)
        apply_memory_limit(self.device, self.memory_limit)
        return self

    def compile(self, **compile_kwargs) -> "ControlNeXtSVDPipeline":
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

    def enable_channels_last(self) -> "ControlNeXtSVDPipeline":
        """Store the 2D convolution weights in channels-last layout (faster convolutions on GPUs).

        Only `Conv2d` weights change: the temporal layers' 5-D weights have no channels-last form.
        """
        for model in (self.unet, self.controlnext, self.vae):
            for module in model.modules():
                if isinstance(module, torch.nn.Conv2d):
                    module.weight.data = module.weight.data.to(memory_format=torch.channels_last)
        return self

    def batch_plan(self, height: int, width: int, plan: WindowPlan) -> int:
        """Windows per UNet call for this call: the set value, or planned from free GPU memory."""
        limit = self._batch_limits.get((height, width, plan.window_size), len(plan.windows))
        if self.windows_per_batch is not None:
            return max(1, min(self.windows_per_batch, limit))
        free = free_memory(self.device, self.memory_limit)
        if free is None:
            return 1
        planned = plan_windows_per_batch(free, height, width, plan.window_size, self.dtype, len(plan.windows))
        return min(planned, limit)

    def _modules(self):
        return (self.unet, self.controlnext, self.vae, self.image_encoder)

    @contextmanager
    def placed(self, *modules: torch.nn.Module):
        """With offload on: move `modules` to the execution device for the duration of the block."""
        if not self.offload:
            yield
            return
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

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
    ) -> tuple[np.ndarray, torch.Tensor, WindowPlan]:
        """Validate every argument before any model work.

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
        pose_tensor = torch.empty((len(poses), height, width, 3), dtype=torch.uint8)
        for i in range(len(poses)):
            pose = _as_uint8_hwc(poses[i], f"poses[{i}]")
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
        plan = plan_windows(len(pose_tensor), window_size, overlap)
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
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        size = self.image_encoder.config.image_size
        image = _resize_with_antialiasing(reference * 2.0 - 1.0, (size, size))
        image = (image + 1.0) / 2.0
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        image = ((image - mean) / std).to(self.device, self.image_encoder.dtype)
        with self.placed(self.image_encoder):
            embeds = self.image_encoder(image).image_embeds
        return embeds.unsqueeze(1)

    @torch.no_grad()
    def encode_reference_latents(
        self, reference: torch.Tensor, noise_aug_strength: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """VAE latents of the noise-augmented reference (distribution mode, no scaling factor).

        Shapes: reference `(1, 3, H, W)` in [0, 1] -> `(1, C, H/8, W/8)`.
        """
        image = (reference * 2.0 - 1.0).to(self.device)
        noise = randn_tensor(image.shape, generator=generator, device=self.device, dtype=image.dtype)
        image = image + noise_aug_strength * noise
        with self.placed(self.vae):
            return self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = DEFAULT_DECODE_CHUNK) -> Iterator[np.ndarray]:
        """Decode latents `decode_chunk_size` frames at a time, yielding each chunk as it is done.

        The temporal decoder mixes frames inside a chunk, so the result depends on the chunk size.
        Shapes: latents `(1, N, C, h, w)` -> chunks `(n, H, W, 3)` float32 in [0, 1].
        On a GPU out-of-memory error the chunk size is halved for the rest of the clip (with a
        warning: smaller chunks decode slightly differently) rather than failing.
        """
        z = latents.flatten(0, 1) / self.vae.config.scaling_factor
        with self.placed(self.vae):
            i = 0
            while i < z.shape[0]:
                chunk = z[i : i + decode_chunk_size].to(self.device, self.vae.dtype)
                try:
                    frames = self.vae.decode(chunk, num_frames=chunk.shape[0]).sample
                except Exception as exc:
                    if not is_out_of_memory(exc) or decode_chunk_size == 1:
                        raise
                    del chunk
                    release_memory(self.device)
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
    ):
        """The denoiser the sampler calls: a batch of windows -> guided model outputs."""
        unet, controlnext, device, dtype = self.unet, self.controlnext, self.device, self.dtype
        do_cfg = guidance is not None

        def denoise(scaled: torch.Tensor, t: torch.Tensor, windows: Sequence[Window]) -> list[torch.Tensor]:
            k, size = len(windows), windows[0].size
            sample = torch.cat([scaled[:, w.start : w.stop] for w in windows]).to(device, dtype)
            control = torch.stack([poses[list(w.control_indices)] for w in windows])
            control = control.permute(0, 1, 4, 2, 3).to(device).to(dtype) / 255.0
            features = controlnext(control, t)
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
            injector.signal = ControlSignal(features, first_row=first_row, scale=control_scale)
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
        callback: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Animate `reference` with `poses`; `poses[0]` is the reference image's own pose.

        Args:
            reference: RGB image at the output size (PIL, uint8 `(H, W, 3)`, or float in [0, 1]).
            poses: N rendered pose frames at the output size, same formats; frame i of the
                output follows poses[i], and every window's first frame the reference pose.
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
            callback: called as `callback(step, total_steps)` after every denoising step.
        """
        ref, pose_frames, plan = self.check_inputs(
            reference, poses, height=height, width=width, num_inference_steps=num_inference_steps,
            window_size=window_size, overlap=overlap, decode_chunk_size=decode_chunk_size,
            min_guidance_scale=min_guidance_scale, max_guidance_scale=max_guidance_scale,
            control_scale=control_scale, noise_aug_strength=noise_aug_strength, latents=latents,
            output_type=output_type,
        )
        height, width = ref.shape[:2]
        num_frames = plan.num_frames
        reference01 = torch.tensor(ref).permute(2, 0, 1)[None].float() / 255.0

        image_embeddings = self.encode_image(reference01).to(self.dtype)
        image_latents = self.encode_reference_latents(reference01, noise_aug_strength, generator)
        added_time_ids = torch.tensor([[fps_id, motion_bucket_id, noise_aug_strength]], dtype=self.dtype, device=self.device)

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        if latents is None:
            latents = randn_tensor(
                self.latent_shape(num_frames, height, width), generator=generator, device=self.device, dtype=torch.float32
            )
        latents = latents.to(self.device, torch.float32) * scheduler.init_noise_sigma

        do_cfg = not (min_guidance_scale == max_guidance_scale == 1.0)
        guidance = None
        if do_cfg:
            guidance = torch.linspace(min_guidance_scale, max_guidance_scale, plan.window_size, device=self.device)
            guidance = guidance.view(1, -1, 1, 1, 1)

        with self.placed(self.unet, self.controlnext), control_injection(self.unet) as injector:
            denoise = self.window_denoiser(
                injector=injector,
                poses=pose_frames,
                image_embeddings=image_embeddings,
                image_latents=image_latents,
                added_time_ids=added_time_ids,
                guidance=guidance,
                control_scale=control_scale,
            )
            limit_key = (height, width, plan.window_size)

            def lower_limit(windows_per_batch: int) -> None:
                release_memory(self.device)
                self._batch_limits[limit_key] = windows_per_batch
                warnings.warn(f"out of memory: {windows_per_batch} windows per UNet call from now on",
                              RuntimeWarning, stacklevel=2)

            latents = sample_windows(
                denoise, latents, scheduler, plan, windows_per_batch=self.batch_plan(height, width, plan),
                callback=callback, on_out_of_memory=lower_limit,
            )
        if output_type == "latent":
            return latents
        return np.concatenate(list(self.decode_latents(latents, decode_chunk_size)))


def _variant(directory: Path, stem: str) -> str | None:
    """"fp16" when a component directory only holds `<stem>.fp16.safetensors` (hub layout)."""
    if (directory / f"{stem}.safetensors").is_file() or (directory / f"{stem}.bin").is_file():
        return None
    if (directory / f"{stem}.fp16.safetensors").is_file():
        return "fp16"
    return None


def _load_scheduler(directory: Path):
    import diffusers

    config = json.loads((directory / "scheduler_config.json").read_text())
    name = config.get("_class_name", "EulerDiscreteScheduler")
    scheduler_cls = getattr(diffusers, name, None)
    if scheduler_cls is None:
        raise ValueError(f"{directory}/scheduler_config.json names an unknown scheduler class {name!r}")
    return scheduler_cls.from_pretrained(directory)
