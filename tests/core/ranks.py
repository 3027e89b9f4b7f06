"""What each rank of the multi-process tests runs (spawned processes import this module).

A rank joins a gloo group through a file store, runs the case with the group, and saves what
it got to `out/rank<r>.pt`. Every rank uses one intra-op thread, as the one-process reference
the tests compare with does: on the CPU the thread count changes how a convolution sums, and so
the last bits.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

THREADS = 1
# A 40-frame clip in windows of 8 overlapping by 3 (8 windows) on the fixture model.
LONG_CLIP = dict(n=40, height=64, width=64, window_size=8, overlap=3, num_inference_steps=2, decode_chunk_size=4)


def parity_case(shared: Path):
    """The parity fixture's inputs and call settings."""
    from PIL import Image
    from safetensors.torch import load_file

    root = shared / "fixtures" / "parity" / "case-a"
    cfg = json.loads((root / "case.json").read_text())
    expected = load_file(str(root / "expected.safetensors"))
    ref = np.asarray(Image.open(root / "ref.png").convert("RGB"))
    poses = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "poses").glob("*.png"))])
    kwargs = dict(
        height=cfg["height"], width=cfg["width"], num_inference_steps=cfg["num_inference_steps"],
        min_guidance_scale=cfg["min_guidance_scale"], max_guidance_scale=cfg["max_guidance_scale"],
        window_size=cfg["window_size"], overlap=cfg["overlap"], decode_chunk_size=cfg["decode_chunk_size"],
        fps_id=cfg["conditioning"]["fps_id"], motion_bucket_id=cfg["conditioning"]["motion_bucket_id"],
        noise_aug_strength=cfg["conditioning"]["noise_aug_strength"],
    )
    return ref, poses, expected["initial_latents"], cfg["generator_seed"], kwargs


def long_case(pipe):
    from .conftest import initial_latents, random_inputs

    settings = dict(LONG_CLIP)
    n, height, width = settings.pop("n"), settings["height"], settings["width"]
    ref, poses = random_inputs(n, height, width, seed=4)
    return ref, poses, initial_latents(pipe, n, height, width, seed=4), 5, settings


def run_cases(pipe, shared: Path, process_group=None) -> dict[str, torch.Tensor]:
    """Final latents and decoded frames of both cases."""
    pipe.set_progress_bar_config(disable=True)
    results = {}
    for name, (ref, poses, latents, seed, kwargs) in dict(parity=parity_case(shared), long=long_case(pipe)).items():
        for output_type in ("latent", "np"):
            out = pipe(ref, poses, latents=latents, generator=torch.Generator().manual_seed(seed),
                       output_type=output_type, process_group=process_group, **kwargs)
            results[f"{name}-{output_type}"] = out if output_type == "latent" else torch.from_numpy(out)
    return results


def join(rank: int, world_size: int, out: Path, timeout: float = 120.0) -> None:
    torch.set_num_threads(THREADS)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout))


def pipeline_rank(rank: int, world_size: int, out: Path, shared: Path) -> None:
    """torch.multiprocessing.spawn target: both cases through the pipeline with the group."""
    from controlnext_video import ControlNeXtSVDPipeline

    join(rank, world_size, out)
    try:
        pipe = ControlNeXtSVDPipeline.from_pretrained(shared / "fixtures" / "controlnext-svd-tiny")
        torch.save(run_cases(pipe, shared, dist.group.WORLD), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def fake_denoiser(stall_seconds: float = 0.0):
    """A cheap deterministic window denoiser whose output depends on the window and its input;
    it sleeps `stall_seconds` on its first call (a hung rank)."""
    calls = []

    def denoise(scaled, t, windows):
        if not calls and stall_seconds:
            time.sleep(stall_seconds)
        calls.append(len(windows))
        return [torch.sin(scaled[:, w.start : w.stop] * (1.0 + 0.1 * w.start)) * (t / 1000.0) for w in windows]

    return denoise


def euler_scheduler(steps: int):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(steps)
    return scheduler


# (frames, window_size, overlap, windows_per_batch) cases for the sampler with the fake denoiser
SAMPLER_CASES = [(12, 4, 1, 1), (12, 4, 1, 2), (40, 8, 3, 3), (5, 8, 2, 1), (17, 5, 2, 4)]


def sampler_results(process_group=None, offset: float = 0.0) -> dict[str, torch.Tensor]:
    """Each case with the deterministic sampler and with the corrector and churn on (noise keyed
    by frame indices that do not start at 0, as a later segment's)."""
    from controlnext_video.sampler import FrameNoise, StochasticOptions, sample_windows
    from controlnext_video.windows import plan_windows

    results = {}
    stochastic = StochasticOptions(corrector_steps=1, s_churn=1.0)
    for frames, window, overlap, per_batch in SAMPLER_CASES:
        latents = torch.randn(1, frames, 2, 3, 3, generator=torch.Generator().manual_seed(frames)) + offset
        for name, options in (("", None), ("-stochastic", stochastic)):
            results[f"{frames}-{window}-{overlap}-{per_batch}{name}"] = sample_windows(
                fake_denoiser(), latents, euler_scheduler(3), plan_windows(frames, window, overlap),
                windows_per_batch=per_batch, process_group=process_group, stochastic=options,
                noise=FrameNoise(5, tuple(range(7, 7 + frames))))
    return results


def sampler_rank(rank: int, world_size: int, out: Path, stall_seconds: float = 0.0, timeout: float = 120.0,
                 skewed: bool = False) -> None:
    """spawn target: the sampler cases with the group; `skewed`: rank 1 is given other latents;
    `stall_seconds`: rank 1 stalls at its first window. Records the outcome and its time."""
    join(rank, world_size, out, timeout=timeout)
    started = time.monotonic()
    try:
        if stall_seconds:
            from controlnext_video.sampler import sample_windows
            from controlnext_video.windows import plan_windows

            sample_windows(fake_denoiser(stall_seconds if rank == 1 else 0.0), torch.ones(1, 12, 2, 3, 3),
                           euler_scheduler(3), plan_windows(12, 4, 1), process_group=dist.group.WORLD)
        else:
            torch.save(sampler_results(dist.group.WORLD, offset=1.0 if skewed and rank == 1 else 0.0),
                       out / f"rank{rank}.pt")
        outcome = "finished"
    except Exception as exc:  # what a rank sees when a peer stalls or disagrees
        outcome = f"{type(exc).__name__}: {exc}"
    (out / f"rank{rank}.json").write_text(json.dumps(dict(outcome=outcome, seconds=time.monotonic() - started)))
    if outcome == "finished":
        dist.destroy_process_group()
    else:  # the group is broken: its destructor at exit may abort (std::terminate); the outcome is written
        os._exit(0)
