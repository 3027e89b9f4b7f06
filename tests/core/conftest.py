from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def tiny_pipe():
    from controlnext_video.factory import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from controlnext_video.factory import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), seed=0)


def random_inputs(n: int, height: int, width: int, seed: int = 0):
    """A reference image and n pose frames (uint8) with some structure, deterministic."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    poses = np.zeros((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        y = (i * 5) % max(1, height - 8)
        poses[i, y : y + 8, :, 0] = 255
        poses[i, :, (i * 3) % max(1, width - 4) :][:, :4, 2] = 200
    return ref, poses


def initial_latents(pipe, n, height, width, seed=1):
    return torch.randn(pipe.latent_shape(n, height, width), generator=torch.Generator().manual_seed(seed))
