"""Benchmark one pipeline call spread over G processes (one per GPU), fused at every step.

CPU (CI, gloo, tiny model):  python bench/multigpu.py --model tiny --device cpu --ranks 1,2
GPUs (NCCL, real size):      python bench/multigpu.py --model svd --device cuda --ranks 1,2,4,8 \
                                 --height 1024 --width 576 --frames 240 --window 24 --overlap 6 --dtype bfloat16

For each rank count G, G processes are spawned (G = 1: the one-process path, no group), each
builds the same pipeline (random weights from a seed) and renders the same clip. Reported per G:
  s/step       median seconds of a denoising step after the first (rank 0's clock; every rank
               leaves a step together, at the exchange)
  decode s     seconds of the split VAE decode (each rank its chunks, then a barrier)
  windows/rank the windows each rank denoises (one-process batches, contiguous) and the cap
               W / ceil(W / G) that this balance puts on the speed-up
  bytes/step   what each rank receives per step, computed from the window plan (an all-gather of
               every rank's kept outputs, padded to the largest), and measured: the bytes a rank
               sends per step through its sockets (the kernel's write counter, /proc/self/io
               wchar; a ring all-gather sends what it receives). gloo only: NCCL moves data over
               NVLink/PCIe without the socket calls, so it is not measured there.
  speed-up     s/step of G = 1 over s/step of G
Every rank count runs --repeats times, interleaved; the best s/step is reported with all of them
(a shared machine's other work only ever slows a run down).
Each rank uses --threads intra-op threads (on the CPU, a rank is one core, as a GPU is one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlnext_video.distributed import exchange_bytes_per_step, split_windows  # noqa: E402
from controlnext_video.factory import build_pipeline, svd_size_components, tiny_components  # noqa: E402
from controlnext_video.windows import plan_windows  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def written_bytes() -> int:
    """Bytes this process has passed to write()/send() so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def inputs(args) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
    poses = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    return reference, poses


def rank_main(rank: int, world_size: int, args, out: Path) -> None:
    """One rank: build the pipeline, render, record step times and bytes written per step."""
    torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    group = None
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{out / 'store'}",
                                rank=rank, world_size=world_size, timeout=timedelta(seconds=args.timeout))
        group = dist.group.WORLD
    dtype = DTYPES[args.dtype]
    components = tiny_components(seed=0) if args.model == "tiny" else svd_size_components(device, dtype)
    pipe = build_pipeline(components, device)
    if args.model == "tiny" and dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.windows_per_batch = args.windows_per_batch
    pipe.set_progress_bar_config(disable=True)
    reference, poses = inputs(args)
    marks = []

    def on_step(pipe, step, t, kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append((time.perf_counter(), written_bytes()))
        return kwargs

    latents = torch.randn(pipe.latent_shape(args.frames, args.height, args.width), generator=torch.Generator().manual_seed(0))
    marks.append((time.perf_counter(), written_bytes()))
    final = pipe(reference, poses, latents=latents, num_inference_steps=args.steps, window_size=args.window,
                 overlap=args.overlap, output_type="latent", generator=torch.Generator().manual_seed(1),
                 callback_on_step_end=on_step, process_group=group)
    started = time.perf_counter()
    frames = sum(len(chunk) for chunk in pipe.decode_latents(final, args.decode_chunk, process_group=group))
    if group is not None:
        dist.barrier()
    decode = time.perf_counter() - started
    steps = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    sent = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    (out / f"rank{rank}.json").write_text(json.dumps(dict(steps=steps, sent=sent, decode=decode, frames=frames)))
    if group is not None:
        dist.destroy_process_group()


def run(world_size: int, args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        mp.spawn(rank_main, args=(world_size, args, out), nprocs=world_size, join=True)
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "svd"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--ranks", default="1,2", help="rank counts to run, e.g. 1,2,4,8")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--windows-per-batch", type=int, default=1)
    parser.add_argument("--decode-chunk", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    parser.add_argument("--timeout", type=float, default=600.0, help="collective timeout, seconds")
    parser.add_argument("--repeats", type=int, default=3, help="runs per rank count (the best is reported)")
    args = parser.parse_args()
    plan = plan_windows(args.frames, args.window, args.overlap)
    latent = (4, args.height // 8, args.width // 8)
    print(f"{args.model} model, {args.device}, {args.dtype}, {args.frames} frames {args.height}x{args.width}, "
          f"windows of {args.window} overlapping by {args.overlap}: W = {len(plan.windows)} windows, "
          f"{args.windows_per_batch} per UNet call, {args.steps} steps, {args.threads} thread(s) per rank")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    counts = [int(g) for g in args.ranks.split(",")]
    runs: dict[int, list[list[dict]]] = {g: [] for g in counts}
    for _ in range(args.repeats):  # interleaved, so that a busy spell of the machine hits every count
        for world_size in counts:
            runs[world_size].append(run(world_size, args))
    print(f"load average after: {os.getloadavg()[0]:.2f}; s/step: the best of {args.repeats} run(s) (all runs)")
    print("| ranks | s/step | decode s | windows per rank | cap W/ceil(W/G) | bytes/step computed | "
          "bytes/step measured (max over ranks) | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for world_size in counts:
        per_step = [statistics.median(r[0]["steps"][1:] or r[0]["steps"]) for r in runs[world_size]]
        best = min(per_step)
        base = base or best
        split = split_windows(len(plan.windows), args.windows_per_batch, world_size)
        computed = exchange_bytes_per_step(plan.windows, split, int(np.prod(latent)), DTYPES["float32"].itemsize)
        measured = max(int(statistics.median(r["sent"][1:] or r["sent"])) for r in runs[world_size][0])
        measured_text = "n/a (NCCL)" if args.device == "cuda" and world_size > 1 else f"{measured if world_size > 1 else 0:,}"
        decode = min(r[0]["decode"] for r in runs[world_size])
        print(f"| {world_size} | {best:.3f} ({', '.join(f'{t:.2f}' for t in per_step)}) | {decode:.2f} | "
              f"{'/'.join(map(str, split.windows_per_rank))} | {split.speedup_cap:.2f} | {computed:,} | "
              f"{measured_text} | {base / best:.2f}x |")


if __name__ == "__main__":
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    main()
