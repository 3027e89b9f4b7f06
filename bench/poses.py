"""Benchmark pose detection throughput per backend, plus rendering, on this machine.

    python bench/poses.py                                   # MediaPipe + DWPose stand-ins
    python bench/poses.py --det-model yolox_l.onnx --pose-model dw-ll_ucoco_384.onnx

Frames: scikit-image's `astronaut` and `camera` photos moved along a smooth affine path (a
synthetic clip), at 512x512 and pasted into 1280x720. Reported: frames per second of
`detect()` after a warm-up, per backend and mode, and of `render_pose` at the output size.

Without the DWPose ONNX files (they cannot be downloaded here) the DWPose rows use tiny
stand-in models with the real input/output signatures: they measure only our pre- and
post-processing (letterbox, decoding, NMS, crop, SimCC), not the networks, and are labelled so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pose.detect.dwpose import DWPoseDetector  # noqa: E402
from pose.detect.mediapipe import MediaPipeDetector  # noqa: E402
from pose.render import render_pose  # noqa: E402


def synthetic_clip(n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """n RGB frames of height x width: the two photos alternating every n/2 frames, each moving
    along a smooth rotation/zoom/pan path."""
    import cv2
    from skimage import data

    photos = [data.astronaut(), np.repeat(data.camera()[:, :, None], 3, axis=2)]
    h, w = size
    frames = []
    for k in range(n):
        photo = photos[(2 * k) // n]
        u = k / max(n - 1, 1)
        m = cv2.getRotationMatrix2D((256, 256), -8 + 16 * u, 0.9 + 0.15 * u * min(h, w) / 512)
        m[:, 2] += ((w - 512) / 2 - 30 + 60 * u, (h - 512) / 2 + 20 * np.sin(np.pi * u))
        frames.append(cv2.warpAffine(photo, m, (w, h), borderValue=(128, 128, 128)))
    return frames


def throughput(fn, frames, warmup: int) -> tuple[float, int]:
    for f in frames[:warmup]:
        fn(f)
    found = 0
    start = time.perf_counter()
    for f in frames[warmup:]:
        out = fn(f)
        found += bool(out.any()) if isinstance(out, np.ndarray) else bool(out)
    return (len(frames) - warmup) / (time.perf_counter() - start), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60, help="frames per measurement (after warm-up)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--det-model", type=Path, help="yolox_l.onnx (real DWPose detector)")
    parser.add_argument("--pose-model", type=Path, help="dw-ll_ucoco_384.onnx (real DWPose pose model)")
    parser.add_argument("--device", default="auto", help="DWPose onnxruntime device: auto, cpu, cuda")
    args = parser.parse_args()
    if (args.det_model is None) != (args.pose_model is None):
        parser.error("give both --det-model and --pose-model, or neither")

    import onnxruntime

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"onnxruntime {onnxruntime.__version__} providers {onnxruntime.get_available_providers()}")
    n = args.frames + args.warmup
    rows = []
    for size in ((512, 512), (720, 1280)):
        frames = synthetic_clip(n, size)
        label = f"{size[1]}x{size[0]}"
        for static in (True, False):
            with MediaPipeDetector(static_image_mode=static) as det:
                fps, found = throughput(det.detect, frames, args.warmup)
            rows.append((f"mediapipe ({'image' if static else 'video'} mode)", label, fps, found))

        with tempfile.TemporaryDirectory() as tmp:
            if args.det_model is not None:
                det_path, pose_path, name = args.det_model, args.pose_model, "dwpose"
            else:
                from tests.pose.synthetic import tiny_dwpose, tiny_yolox

                # one person box around the centre of the letterboxed frame
                r = 640 / max(size)
                box = np.array([size[1] * 0.3, size[0] * 0.1, size[1] * 0.7, size[0] * 0.95]) * r
                det_path = tiny_yolox(Path(tmp) / "det.onnx", [box], [0.9])
                pose_path = tiny_dwpose(Path(tmp) / "pose.onnx")
                name = "dwpose stand-in models (pre/post-processing only)"
            with DWPoseDetector(det_path, pose_path, device=args.device) as det:
                fps, found = throughput(det.detect, frames, args.warmup)
                rows.append((f"{name} [{det.providers[0]}]", label, fps, found))

    with MediaPipeDetector() as det:
        pose = det.detect(synthetic_clip(1, (512, 512))[0])[0]
    for height, width in ((1024, 576), (576, 1024)):
        fps, _ = throughput(lambda _: render_pose(pose, height, width), [None] * n, args.warmup)
        rows.append(("render_pose", f"{width}x{height} out", fps, args.frames))

    print(f"\n{'what':74s} {'frames':>14s} {'fps':>8s}  person found")
    for what, label, fps, found in rows:
        print(f"{what:74s} {label:>14s} {fps:8.1f}  {found}/{args.frames}")


if __name__ == "__main__":
    main()
