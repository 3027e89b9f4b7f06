"""The official ControlNeXt-SVD v2 training objective (EDM-style v-prediction loss).

One evaluation, for noise levels `sigma` (one per sample):
- noisy latents `x = latents + sigma * noise`; the UNet sees `x / sqrt(sigma^2 + 1)` with the
  reference latents (unscaled) repeated over frames and concatenated on channels;
- the UNet and the control module get the timestep `0.25 * ln(sigma)`;
- the control enters the stock UNet through the same module and hooks as at inference (the
  control module's `signal` and `injection`, `controlnext_video.controls`), at scale 1 on every
  sample: no guidance batch in training;
- `denoised = c_skip * x + c_out * v` with `c_skip = 1 / (sigma^2 + 1)` and
  `c_out = -sigma / sqrt(sigma^2 + 1)`;
- loss per sample: the mean over frames, channels and pixels of
  `(1 + sigma^2) / sigma^2 * (denoised - latents)^2 * w`, `w` the per-pixel weights average-pooled
  to the latent size (not normalised); the loss is the batch mean, in float32.

Timesteps and added time ids take the dtype of `sigmas`: pass bf16 sigmas to reproduce the
release's bf16 training (where 0.02 becomes 0.02002), float32 for the reference numbers.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


# Added time ids of the official training step (inference uses motion bucket 128).
TRAIN_FPS_ID = 6
TRAIN_MOTION_BUCKET = 127
TRAIN_NOISE_AUG = 0.02
# Timestep given to the UNet and the control module: TIMESTEP_SCALE * ln(sigma).
TIMESTEP_SCALE = 0.25
# The control scale of the training step (multiplied by the injection's fixed strength).
TRAIN_CONTROL_SCALE = 1.0


def _check_shapes(latents, reference_latents, image_embeddings, pose_frames, sigmas, noise, loss_weights,
                  control_channels: int = 3) -> None:
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, F, C, h, w), got shape {tuple(latents.shape)}")
    batch, frames, channels, height, width = latents.shape
    expected = {
        "noise": (noise, tuple(latents.shape)),
        "reference_latents": (reference_latents, (batch, channels, height, width)),
        "sigmas": (sigmas, (batch,)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for latents {tuple(latents.shape)}, got {tuple(tensor.shape)}"
            )
    if image_embeddings.ndim != 3 or image_embeddings.shape[0] != batch:
        raise ValueError(f"image_embeddings must be (B={batch}, 1, D), got shape {tuple(image_embeddings.shape)}")
    if pose_frames.ndim != 5 or tuple(pose_frames.shape[:3]) != (batch, frames, control_channels):
        raise ValueError(f"pose_frames must be (B={batch}, F={frames}, {control_channels}, H, W), got shape "
                         f"{tuple(pose_frames.shape)}")
    if loss_weights is not None and (
        loss_weights.ndim != 5 or tuple(loss_weights.shape[:3]) != (batch, frames, 1)
    ):
        raise ValueError(
            f"loss_weights must be (B={batch}, F={frames}, 1, H, W), got shape {tuple(loss_weights.shape)}"
        )
    if not bool((sigmas > 0).all()):
        raise ValueError("sigmas must be positive")


def denoise(
    pipe,
    *,
    latents: torch.Tensor,
    reference_latents: torch.Tensor,
    image_embeddings: torch.Tensor,
    pose_frames: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    fps_id: float = TRAIN_FPS_ID,
    motion_bucket_id: float = TRAIN_MOTION_BUCKET,
    noise_aug_strength: float = TRAIN_NOISE_AUG,
) -> torch.Tensor:
    """The training step's denoised latents `c_skip * x + c_out * v` for `x = latents + sigma * noise`
    (what `denoising_loss` compares with `latents`). Same inputs and shapes as `denoising_loss`
    -> `(B, F, C, h, w)` in the UNet's dtype."""
    batch, frames = latents.shape[:2]
    sigma = sigmas.view(batch, 1, 1, 1, 1)
    noisy = latents + sigma * noise
    timesteps = TIMESTEP_SCALE * sigmas.log()
    conditioning = reference_latents.unsqueeze(1).expand(-1, frames, -1, -1, -1)
    unet_input = torch.cat([noisy / (sigma**2 + 1) ** 0.5, conditioning.to(noisy.dtype)], dim=2)
    time_ids = torch.tensor(
        [[fps_id, motion_bucket_id, noise_aug_strength]], dtype=sigmas.dtype, device=sigmas.device
    ).expand(batch, -1)

    unet, controlnext = pipe.unet, pipe.controlnext
    control_dtype = next(controlnext.parameters()).dtype
    signal = controlnext.signal(pose_frames.to(control_dtype), timesteps, first_row=0, scale=TRAIN_CONTROL_SCALE)
    with controlnext.injection(unet) as injector:
        injector.signal = signal
        prediction = unet(
            unet_input, timesteps, encoder_hidden_states=image_embeddings, added_time_ids=time_ids, return_dict=False
        )[0]

    c_out = -sigma / (sigma**2 + 1) ** 0.5
    c_skip = 1 / (sigma**2 + 1)
    return prediction * c_out + c_skip * noisy


def denoising_loss(
    pipe,
    *,
    latents: torch.Tensor,
    reference_latents: torch.Tensor,
    image_embeddings: torch.Tensor,
    pose_frames: torch.Tensor,
    sigmas: torch.Tensor,
    noise: torch.Tensor,
    loss_weights: torch.Tensor | None = None,
    fps_id: float = TRAIN_FPS_ID,
    motion_bucket_id: float = TRAIN_MOTION_BUCKET,
    noise_aug_strength: float = TRAIN_NOISE_AUG,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """The loss of the official ControlNeXt-SVD v2 training step (see the module docstring; any
    conditioning dropout is already applied to the inputs), differentiable in the parameters of
    `pipe.unet` (a stock `UNetSpatioTemporalConditionModel`) and `pipe.controlnext`.

    `pipe` is anything with those two attributes (a `ControlNeXtSVDPipeline`, a
    `DenoisingObjective`). `reduction="none"` returns each sample's loss.
    Shapes: latents and noise `(B, F, C, h, w)`, reference_latents `(B, C, h, w)`,
    image_embeddings `(B, 1, D)`, pose_frames `(B, F, 3, H, W)` in [0, 1] (the control module's
    `condition_channels`: 3 per condition for the multi-condition module), sigmas `(B,)`, loss_weights `(B, F, 1, H, W)` or None -> `()` float32 (the batch mean), or `(B,)`.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    _check_shapes(latents, reference_latents, image_embeddings, pose_frames, sigmas, noise, loss_weights,
                  pipe.controlnext.condition_channels)
    batch, frames = latents.shape[:2]
    sigma = sigmas.view(batch, 1, 1, 1, 1)
    denoised = denoise(
        pipe, latents=latents, reference_latents=reference_latents, image_embeddings=image_embeddings,
        pose_frames=pose_frames, sigmas=sigmas, noise=noise, fps_id=fps_id, motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
    )
    weighting = (1 + sigma**2) * sigma**-2.0
    error = weighting.float() * (denoised.float() - latents.float()) ** 2
    if loss_weights is not None:
        pooled = F.adaptive_avg_pool2d(loss_weights.flatten(0, 1).float(), latents.shape[-2:])
        error = error * pooled.view(batch, frames, 1, *latents.shape[-2:])
    per_sample = error.reshape(batch, -1).mean(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


class DenoisingObjective(nn.Module):
    """`denoising_loss` as a module holding the UNet and the control module, so that one
    wrapper (DDP, FSDP, accelerate's mixed precision) sees every trainable parameter.

    The modules are the pipeline's own (not copies): what trains is what renders.
    """

    def __init__(
        self,
        unet: nn.Module,
        controlnext: nn.Module,
        *,
        fps_id: float = TRAIN_FPS_ID,
        motion_bucket_id: float = TRAIN_MOTION_BUCKET,
        noise_aug_strength: float = TRAIN_NOISE_AUG,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.controlnext = controlnext
        self.time_ids = dict(fps_id=fps_id, motion_bucket_id=motion_bucket_id, noise_aug_strength=noise_aug_strength)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Per-sample losses `(B,)` for `denoising_loss`'s tensor inputs."""
        return denoising_loss(self, **inputs, **self.time_ids, reduction="none")
