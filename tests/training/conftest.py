from __future__ import annotations

import pytest
import torch


@pytest.fixture
def tiny_pipe():
    """A fresh float32 tiny pipeline (training changes its weights, so never shared)."""
    from controlnext_video.factory import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def loss_inputs(batch: int = 2, frames: int = 3, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of `denoising_loss` for the tiny model (latents at size / 8)."""
    gen = torch.Generator().manual_seed(seed)
    h = size // 8
    return dict(
        latents=torch.randn(batch, frames, 4, h, h, generator=gen),
        reference_latents=torch.randn(batch, 4, h, h, generator=gen),
        image_embeddings=torch.randn(batch, 1, 32, generator=gen),
        pose_frames=torch.rand(batch, frames, 3, size, size, generator=gen),
        sigmas=torch.tensor([0.5, 3.0][:batch]),
        noise=torch.randn(batch, frames, 4, h, h, generator=gen),
    )


def moving_clip(length: int, size: int, seed: int):
    """A short clip: a coloured disc moving over a gradient; the pose image marks the disc's
    centre with a cross, and a confident hand box surrounds the disc on every other frame."""
    import numpy as np

    from controlnext_video.training import ArrayClip, HandBox

    rng = np.random.default_rng(seed)
    colour = rng.integers(80, 256, 3)
    yy, xx = np.mgrid[:size, :size] / size
    background = np.stack([yy * 120, xx * 120, (1 - yy) * 60], axis=-1)
    frames = np.empty((length, size, size, 3), np.uint8)
    poses = np.zeros((length, size, size, 3), np.uint8)
    hands = []
    radius = size / 8
    for i in range(length):
        angle = 2 * np.pi * i / length + seed
        cy, cx = 0.5 + 0.3 * np.sin(angle), 0.5 + 0.3 * np.cos(angle)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (radius / size) ** 2
        frame = background.copy()
        frame[disc] = colour
        frames[i] = frame.astype(np.uint8)
        row, col = int(cy * size), int(cx * size)
        poses[i, max(row - 1, 0) : row + 2, :] = (0, 0, 153)
        poses[i, :, max(col - 1, 0) : col + 2] = (153, 0, 0)
        box = HandBox(cx - radius / size, cy - radius / size, cx + radius / size, cy + radius / size, 0.9)
        hands.append([box] if i % 2 else [])
    return ArrayClip(frames, poses, hands)
