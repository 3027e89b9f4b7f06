"""Synthetic training clips for tests, benchmarks and the demo: meaningless pictures with a
structure a model can learn (the pose image says where the disc is)."""

from __future__ import annotations

import numpy as np

from .data import ArrayClip, HandBox


def moving_disc_clip(length: int, size: int, seed: int) -> ArrayClip:
    """A `length`-frame square clip of `size` pixels: a coloured disc (its colour and phase from
    `seed`) circling over a gradient; the pose image marks the disc's centre with a cross, and a
    confident hand box surrounds the disc on every other frame."""
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
