"""Noise keyed by the clip-global frame index: the same frame gets the same noise whatever the
window and segment plan (pure functions).

Frame noise is drawn from a generator seeded by `(seed, frame index, *keys)`: the initial
latents use no keys (`segments.frame_noise`), the sampler's fresh noise of a step uses
`(kind, step, sub-step)` (`sampler.FrameNoise`), so no two draws share a stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Keys of the sampler's fresh noise: which stochastic option draws it.
CORRECTOR_NOISE = 1
CHURN_NOISE = 2


def keyed_noise(seed: int, indices: Sequence[int], shape: Sequence[int], keys: Sequence[int] = ()) -> torch.Tensor:
    """Noise `(1, len(indices), *shape)` on the CPU, float32: frame i's depends only on
    `(seed, indices[i], *keys)`."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    frames = []
    for index in indices:
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        entropy = [seed & 0xFFFFFFFF, seed >> 32, index, *keys]
        state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        frames.append(torch.randn(tuple(shape), generator=generator))
    return torch.stack(frames)[None]
