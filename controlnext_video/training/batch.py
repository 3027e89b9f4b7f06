"""Training batches: examples drawn from clips, encoded by the frozen VAE and CLIP, noised.

Every random draw of example `i` of optimizer step `s` comes from generators seeded with
`derive_seed(seed, s, i)`, and the clip it comes from from a per-epoch permutation seeded with
`derive_seed(seed, "epoch", e)`. A batch is therefore a pure function of (clips, settings, seed,
step, example indices): a resumed run draws exactly what an uninterrupted one would, and the
examples of a step do not depend on how they are split over processes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .data import DEFAULT_FRAME_INTERVAL, DEFAULT_SAMPLE_FRAMES, ClipSource, TrainingExample, draw_example
from .dropout import DEFAULT_DROPOUT_PROBABILITY, apply_conditioning_dropout, drop_conditions
from .noise import NoiseSchedule

# Channels of one condition picture in stacked control frames (RGB).
CONDITION_CHANNELS = 3
from .objective import TRAIN_NOISE_AUG

# VAE frames per encoder call when encoding an example's frames.
DEFAULT_ENCODE_CHUNK = 8


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints and strings (stable across processes and platforms)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class BatchSettings:
    """How examples are drawn and conditioned (the official values by default).

    Attributes:
        height, width: training size (multiples of 8).
        sample_n_frames: frames per example.
        frame_interval: frame interval inside a clip.
        conditioning_dropout: dropout probability (0 turns dropout off).
        noise_aug_strength: pixel noise added to the reference before VAE encoding.
        noise_schedule: the noise-level distribution.
        encode_chunk_size: frames per VAE encoder call.
        condition_dropout: for control pictures stacking several conditions (a multi-condition
            module), the probability of blacking out each condition of an example, at least one
            kept (`dropout.drop_conditions`); not used with one condition.
    """

    height: int = 1024
    width: int = 576
    sample_n_frames: int = DEFAULT_SAMPLE_FRAMES
    frame_interval: int = DEFAULT_FRAME_INTERVAL
    conditioning_dropout: float = DEFAULT_DROPOUT_PROBABILITY
    noise_aug_strength: float = TRAIN_NOISE_AUG
    noise_schedule: NoiseSchedule = NoiseSchedule()
    encode_chunk_size: int = DEFAULT_ENCODE_CHUNK
    condition_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % 8:
                raise ValueError(f"{name} must be a positive multiple of 8, got {value!r}")
        for name in ("sample_n_frames", "frame_interval", "encode_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.noise_aug_strength < 0:
            raise ValueError(f"noise_aug_strength must be >= 0, got {self.noise_aug_strength}")
        if not 0 <= self.condition_dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")


def clip_for_example(num_clips: int, position: int, seed: int) -> int:
    """Which clip the `position`-th example of a run comes from: every clip once per epoch, in
    an order shuffled per epoch."""
    epoch, offset = divmod(position, num_clips)
    order = torch.randperm(num_clips, generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch)))
    return int(order[offset])


@torch.no_grad()
def encode_frames(pipe, pixels: torch.Tensor, generator: torch.Generator, chunk_size: int) -> torch.Tensor:
    """VAE latents of frames, as the official training step makes them: a sample of the latent
    distribution times the scaling factor.

    Shapes: pixels `(F, 3, H, W)` in [-1, 1] -> `(F, C, H/8, W/8)` float32 on the CPU.
    """
    means, stds = [], []
    device = pipe._execution_device  # diffusers' offload moves the VAE there itself on encode
    for chunk in pixels.split(chunk_size):
        dist = pipe.vae.encode(chunk.to(device, pipe.vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    return sample * pipe.vae.config.scaling_factor


@torch.no_grad()
def encode_reference(
    pipe, reference: torch.Tensor, noise_aug_strength: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP embedding of the clean reference and the VAE latents (a sample, no scaling
    factor) of the reference plus `noise_aug_strength * N(0, 1)` pixel noise.

    Shapes: reference `(3, H, W)` in [-1, 1] -> `(1, D)` and `(C, H/8, W/8)`, float32 on the CPU.
    """
    embedding = pipe.encode_image((reference[None] + 1) / 2).float().cpu()[0]
    noisy = reference + noise_aug_strength * torch.randn(reference.shape, generator=generator)
    latents = encode_frames(pipe, noisy[None], generator, chunk_size=1) / pipe.vae.config.scaling_factor
    return embedding, latents[0]


@dataclass(frozen=True)
class TrainingBatch:
    """The inputs of `denoising_loss` for a batch (conditioning dropout applied), on the CPU.

    Shapes: latents and noise `(B, F, C, h, w)`, reference_latents `(B, C, h, w)`,
    image_embeddings `(B, 1, D)`, pose_frames `(B, F, 3, H, W)`, sigmas `(B,)`,
    loss_weights `(B, F, 1, H, W)`.
    """

    latents: torch.Tensor
    reference_latents: torch.Tensor
    image_embeddings: torch.Tensor
    pose_frames: torch.Tensor
    sigmas: torch.Tensor
    noise: torch.Tensor
    loss_weights: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The loss's keyword arguments on `device`, floating tensors in `dtype`."""
        return {name: getattr(self, name).to(device, dtype) for name in self.__dataclass_fields__}


def make_batch(
    pipe,
    clips: Sequence[ClipSource],
    settings: BatchSettings,
    *,
    seed: int,
    step: int,
    indices: Sequence[int],
    global_batch_size: int,
) -> TrainingBatch:
    """Draw, encode and noise examples `indices` (of `global_batch_size`) of optimizer step `step`.

    Noise-level uniforms are stratified over the global batch: example `i` draws in
    `[i/N, (i+1)/N)`, as the official sampler stratifies over its batch.
    """
    if not clips:
        raise ValueError("no training clips")
    parts = []
    for index in indices:
        if not 0 <= index < global_batch_size:
            raise ValueError(f"example index {index} is outside the global batch of {global_batch_size}")
        example_seed = derive_seed(seed, step, index)
        clip = clips[clip_for_example(len(clips), step * global_batch_size + index, seed)]
        example: TrainingExample = draw_example(
            clip, np.random.default_rng(example_seed), height=settings.height, width=settings.width,
            sample_n_frames=settings.sample_n_frames, interval=settings.frame_interval,
        )
        generator = torch.Generator().manual_seed(example_seed)
        latents = encode_frames(pipe, example.pixels, generator, settings.encode_chunk_size)
        embedding, reference_latents = encode_reference(pipe, example.reference, settings.noise_aug_strength, generator)
        noise = torch.randn(latents.shape, generator=generator)
        u = (index + torch.rand((), generator=generator)) / global_batch_size
        p = torch.rand((), generator=generator)
        poses = example.poses
        if settings.condition_dropout and poses.shape[1] > CONDITION_CHANNELS:  # after the official draws
            poses = drop_conditions(poses[None], settings.condition_dropout, generator, CONDITION_CHANNELS)[0]
        parts.append((latents, reference_latents, embedding, poses, u, noise, example.weights, p))
    latents, reference_latents, embeddings, poses, u, noise, weights, p = (torch.stack(x) for x in zip(*parts))
    embeddings, reference_latents = apply_conditioning_dropout(
        embeddings, reference_latents, p, settings.conditioning_dropout
    )
    return TrainingBatch(
        latents=latents,
        reference_latents=reference_latents,
        image_embeddings=embeddings,
        pose_frames=poses,
        sigmas=settings.noise_schedule.sigmas(u),
        noise=noise,
        loss_weights=weights,
    )
