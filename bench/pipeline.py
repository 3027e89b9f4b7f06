"""Benchmark the ControlNeXt-SVD pipeline: one window step, and whole calls, per configuration.

CPU (CI, tiny model):      python bench/pipeline.py --model tiny --device cpu
GPU (real-size, random):   python bench/pipeline.py --model svd --device cuda --height 1024 --width 576

Configurations are run in one process, on the same device, in turn, so their ratio is meaningful
on a noisy machine:
  reference  what the published inference does: fp32, control module on both guidance halves,
             one window per UNet call, VAE decode 2 frames at a time (and model CPU offload on
             CUDA, as its script enables it).
  ours       this project's defaults at --dtype: control on the conditional half only,
             --windows-per-batch windows per UNet call, --decode-chunk frames per decode,
             optional --compile.
Reported: seconds per window step, seconds per output frame (UNet steps over the window plan of
--frames frames, plus VAE decode), achieved TFLOP/s (matmul/conv/attention FLOPs counted by
torch's FlopCounterMode), peak memory, and the speed ratio.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlnext_video.factory import build_pipeline, svd_size_components, tiny_components  # noqa: E402
from controlnext_video.injection import control_injection  # noqa: E402
from controlnext_video.memory import ACTIVATION_BYTES_PER_ELEMENT, window_bytes  # noqa: E402
from controlnext_video.windows import Window, plan_windows  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BothHalvesControl(nn.Module):
    """The reference's cost: the control module runs on the unconditional half too (scale 0 there)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def device(self):  # a DiffusionPipeline asks its modules for their device
        return self.inner.device

    def forward(self, control, timestep):
        both = self.inner(torch.cat([control, control]), timestep)
        return both[both.shape[0] // 2 :]


@dataclass
class Config:
    name: str
    dtype: torch.dtype
    windows_per_batch: int | None  # None: planned from free GPU memory
    decode_chunk: int
    both_halves: bool
    offload: bool
    compile: bool
    channels_last: bool = False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process high-water mark


def make_pipe(args, config: Config, device: torch.device):
    if args.model == "tiny":
        components = tiny_components(seed=0)
        for key in ("unet", "controlnext", "image_encoder"):
            components[key] = components[key].to(config.dtype)
        if not (config.dtype == torch.float16):
            components["vae"] = components["vae"].to(config.dtype)
    else:
        components = svd_size_components(device=device, dtype=config.dtype)
    pipe = build_pipeline(components, device)
    pipe.windows_per_batch = config.windows_per_batch
    # The reference runs as published, uncapped (this also lifts a cap an earlier config set).
    pipe.set_memory_limit(None if config.name == "reference" else args.memory_limit_gib)
    if config.channels_last:
        pipe.enable_channels_last()
    if config.compile:
        pipe.compile()
    if config.both_halves:
        pipe.controlnext = BothHalvesControl(pipe.controlnext)
    if config.offload:
        pipe.enable_model_cpu_offload(device=device)
    return pipe


def bench_config(args, config: Config, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    pipe = make_pipe(args, config, device)
    h, w, size = args.height, args.width, args.window
    plan = plan_windows(args.frames, args.window, args.overlap)
    k = pipe.batch_plan(h, w, plan)
    latents = torch.randn(pipe.latent_shape(size * k, h, w), device=device)
    poses = torch.randint(0, 256, (size * k, h, w, 3), dtype=torch.uint8)
    embeddings = torch.randn(1, 1, pipe.image_encoder.config.projection_dim, device=device, dtype=config.dtype)
    image_latents = torch.randn(1, latents.shape[2], h // 8, w // 8, device=device)
    time_ids = torch.tensor([[6.0, 128.0, 0.02]], device=device, dtype=config.dtype)
    guidance = torch.full((1, size, 1, 1, 1), args.guidance, device=device)
    windows = tuple(Window(i * size, (i + 1) * size) for i in range(k))  # k side by side, one UNet call
    t = torch.tensor(1.0, device=device)

    with control_injection(pipe.unet) as injector:
        denoise = pipe.window_denoiser(
            injector=injector, poses=poses, image_embeddings=embeddings, image_latents=image_latents,
            added_time_ids=time_ids, guidance=guidance, control_scale=1.0,
        )
        step = lambda: denoise(latents, t, windows)  # noqa: E731
        seconds_per_call = timed(step, device, args.repeats)
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        activation, peak_before = None, 0
        if device.type == "cuda" and not config.offload:
            # Peak memory of one UNet call above what was held before it, per window: what
            # controlnext_video.memory.ACTIVATION_BYTES_PER_ELEMENT estimates.
            torch.cuda.synchronize(device)
            held = torch.cuda.memory_allocated(device)
            peak_before = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            activation = (torch.cuda.max_memory_allocated(device) - held) / k
    seconds_per_window_step = seconds_per_call / k

    decode_latents = torch.randn(pipe.latent_shape(config.decode_chunk, h, w), device=device)
    decode_seconds = timed(lambda: list(pipe.decode_latents(decode_latents, config.decode_chunk)), device, args.repeats)
    decode_per_frame = decode_seconds / config.decode_chunk

    unet_per_frame = seconds_per_window_step * args.steps * len(plan.windows) / args.frames
    return dict(
        name=config.name,
        windows_per_call=k,
        window_step=seconds_per_window_step,
        per_frame=unet_per_frame + decode_per_frame,
        unet_per_frame=unet_per_frame,
        decode_per_frame=decode_per_frame,
        tflops=flops / seconds_per_call / 1e12,
        peak_gib=max(peak_before / 2**30, peak_memory_gib(device)),
        activation_gib=None if activation is None else activation / 2**30,
        bytes_per_element=None if activation is None else (
            activation / window_bytes(h, w, size, config.dtype) * ACTIVATION_BYTES_PER_ELEMENT),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "svd"), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="ours: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--overlap", type=int, default=6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--frames", type=int, default=240, help="clip length the per-frame cost is planned for")
    parser.add_argument("--windows-per-batch", default="auto",
                        help="ours: windows per UNet call, or auto (planned from free GPU memory; 1 on the CPU)")
    parser.add_argument("--channels-last", action="store_true", help="ours: channels-last convolutions")
    parser.add_argument("--decode-chunk", type=int, default=8)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="reference,ours")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="ours: cap GPU memory (e.g. 22 to hold the plan inside a 24 GB card on a bigger one)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the MFU column")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.height is None:
        args.height = 1024 if args.model == "svd" else 64
    if args.width is None:
        args.width = 576 if args.model == "svd" else 64
    if args.model == "tiny" and args.window == 24:
        args.window, args.overlap = 8, 2
    ours_dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    configs = {
        "reference": Config("reference", torch.float32, 1, 2, True, device.type == "cuda", False),
        "ours": Config("ours", ours_dtype, None if args.windows_per_batch == "auto" else int(args.windows_per_batch),
                       args.decode_chunk, False, False, args.compile, args.channels_last),
    }
    print(f"device={device} model={args.model} size={args.width}x{args.height} window={args.window} "
          f"overlap={args.overlap} steps={args.steps} frames={args.frames} torch={torch.__version__}")
    if device.type == "cuda":
        print(f"gpu={torch.cuda.get_device_name(device)}")
    results = [bench_config(args, configs[name], device) for name in args.configs.split(",")]
    header = f"{'config':<10} {'windows/call':>12} {'s/window-step':>14} {'s/frame':>9} {'unet s/f':>9} {'vae s/f':>9} {'TFLOP/s':>8} {'peak GiB':>9}"
    print(header)
    for r in results:
        print(f"{r['name']:<10} {r['windows_per_call']:>12} {r['window_step']:>14.4f} {r['per_frame']:>9.4f} {r['unet_per_frame']:>9.4f} "
              f"{r['decode_per_frame']:>9.4f} {r['tflops']:>8.2f} {r['peak_gib']:>9.2f}"
              + (f"  MFU {100 * r['tflops'] / args.peak_tflops:.0f}%" if args.peak_tflops else ""))
    for r in results:
        if r["activation_gib"] is not None:
            print(f"{r['name']}: activations {r['activation_gib']:.2f} GiB per window per UNet call, "
                  f"{r['bytes_per_element']:.0f} bytes per latent element per dtype byte "
                  f"(memory.ACTIVATION_BYTES_PER_ELEMENT estimates this)")
    if len(results) == 2:
        print(f"speed ratio {results[0]['name']}/{results[1]['name']} (s/frame): "
              f"{results[0]['per_frame'] / results[1]['per_frame']:.2f}x")


if __name__ == "__main__":
    main()
