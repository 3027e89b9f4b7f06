"""Watching a fine-tuning run: a loss-curve image, and a validation render beside its ground truth."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

# Size of the loss-curve image, and the smoothing window of its running mean (steps).
CURVE_SIZE = (640, 320)
CURVE_MEAN_WINDOW = 10


def loss_curve_png(losses: Sequence[float], *, title: str = "training loss") -> bytes:
    """A PNG plot of the per-step losses (grey) and their running mean (blue), axes labelled."""
    from PIL import Image, ImageDraw

    width, height = CURVE_SIZE
    left, right, top, bottom = 60, 15, 30, 35
    image = Image.new("RGB", CURVE_SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), f"{title}: {len(losses)} steps" + (f", last {losses[-1]:.4f}" if losses else ""),
              fill="black")
    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    if len(losses) >= 1:
        values = np.asarray(losses, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        high = high if high > low else low + 1e-12
        for value, y in ((high, top), (low, height - bottom)):
            draw.text((4, y - 6), f"{value:.3g}", fill="black")
        draw.text((left, height - bottom + 6), "1", fill="black")
        draw.text((width - right - 30, height - bottom + 6), str(len(values)), fill="black")

        def points(series: np.ndarray) -> list[tuple[float, float]]:
            xs = np.linspace(left, width - right, num=len(series)) if len(series) > 1 else np.array([left])
            ys = height - bottom - (series - low) / (high - low) * (height - bottom - top)
            return list(zip(xs.tolist(), ys.tolist()))

        window = min(CURVE_MEAN_WINDOW, len(values))
        mean = np.convolve(values, np.ones(window) / window, mode="valid")
        if len(values) > 1:
            draw.line(points(values), fill=(170, 170, 170), width=1)
        if len(mean) > 1:
            draw.line(points(mean), fill=(30, 80, 200), width=2)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def validation_example(clip, num_frames: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `num_frames` frames of a clip and their pose images, centre-cropped to the training
    aspect and resized to `height` x `width` as training examples are.

    Shapes: returns frames and poses (n, height, width, 3) uint8, n = min(num_frames, clip length).
    """
    from .data import CropBox, FrameSample, load_example

    count = min(num_frames, clip.num_frames)
    source_height, source_width = clip.size
    if source_height / source_width > height / width:
        crop_height = int(source_width * height / width)
        crop = CropBox((source_height - crop_height) // 2, 0, crop_height, source_width)
    else:
        crop_width = int(source_height * width / height)
        crop = CropBox(0, (source_width - crop_width) // 2, source_height, crop_width)
    example = load_example(clip, FrameSample(tuple(range(count)), 0, 1), crop, height, width)

    def to_uint8(images: torch.Tensor) -> np.ndarray:
        return np.round(images.permute(0, 2, 3, 1).numpy() * 255).clip(0, 255).astype(np.uint8)

    return to_uint8((example.pixels + 1) / 2), to_uint8(example.poses)


@torch.no_grad()
def validation_frames(pipe, frames: np.ndarray, poses: np.ndarray, *, steps: int, seed: int,
                      decode_chunk_size: int = 4) -> np.ndarray:
    """Render a clip from its first frame (the reference) and its pose images, and put each rendered
    frame beside the ground truth.

    Shapes: frames and poses (N, H, W, 3) uint8, N >= 2 (frame 0 is the reference and its pose);
    returns (N - 1, H, 2 W, 3) uint8: ground truth | rendered.
    """
    if len(frames) != len(poses) or len(frames) < 2:
        raise ValueError(f"need as many pose images as frames, at least 2; got {len(frames)} and {len(poses)}")
    window = len(poses)
    rendered = pipe(frames[0], list(poses), num_inference_steps=steps, window_size=window, overlap=1,
                    decode_chunk_size=decode_chunk_size, generator=torch.Generator().manual_seed(seed))
    rendered = np.round(np.asarray(rendered) * 255).clip(0, 255).astype(np.uint8)[1:]
    return np.concatenate([frames[1:], rendered], axis=2)
