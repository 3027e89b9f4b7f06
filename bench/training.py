"""Benchmark fine-tuning: seconds per optimizer step, peak memory, trainable parameters.

CPU (tiny model):         python bench/training.py --model tiny --device cpu
GPU (real-size, random):  python bench/training.py --model svd --device cuda --height 1024 --width 576 \
                              --frames 14 --mixed-precision bf16 --gradient-checkpointing

The run is `controlnext_video.training.train` itself on synthetic clips at the training size
(data drawing, VAE and CLIP encoding, the official objective, the optimizer step). The first
`--warmup` steps are not timed; the checkpoint (written after the last step, to a temporary
store) is not timed either. Peak memory is the CUDA allocator's peak on a GPU, the process's
peak resident set size on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlnext_video.factory import build_pipeline, svd_size_components, tiny_components  # noqa: E402
from controlnext_video.training import BatchSettings, TrainingConfig, train  # noqa: E402
from controlnext_video.training.synthetic import moving_disc_clip  # noqa: E402
from storage import ArtifactStore  # noqa: E402

# Frames per synthetic clip: enough for --frames at interval 1 or 2.
CLIP_FRAMES = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "svd"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4, help="frames per example (14 or 21 in the release)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--unet-training", choices=("none", "selective", "all"), default="selective")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    components = tiny_components(0) if args.model == "tiny" else svd_size_components(args.device, torch.float32)
    pipe = build_pipeline(components, args.device)
    size = max(args.height, args.width)
    clips = [moving_disc_clip(CLIP_FRAMES, size, seed) for seed in range(2)]
    total = args.warmup + args.steps
    config = TrainingConfig(
        steps=total, warmup_steps=0, unet_training=args.unet_training, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, checkpoint_every=total,
        data=BatchSettings(height=args.height, width=args.width, sample_n_frames=args.frames, frame_interval=1),
    )
    seconds: list[float] = []
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def progress(report) -> None:
        if report.step > args.warmup:
            seconds.append(report.seconds)

    with tempfile.TemporaryDirectory() as scratch:
        result = train(pipe, clips, config, store=ArtifactStore(scratch), prefix="bench", progress=progress)
    if cuda:
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (CUDA allocator)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"
    print(f"model {args.model}, {args.device}, {args.height}x{args.width}, {args.frames} frames, "
          f"unet {args.unet_training}, mixed precision {args.mixed_precision}, "
          f"gradient checkpointing {args.gradient_checkpointing}")
    print(f"trainable parameters: {result.trainable_parameters:,}")
    print(f"seconds per step: median {statistics.median(seconds):.3f}, min {min(seconds):.3f}, "
          f"max {max(seconds):.3f} over {len(seconds)} steps")
    print(f"peak memory: {peak}")


if __name__ == "__main__":
    main()
