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

