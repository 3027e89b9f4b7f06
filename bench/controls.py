"""Compare the control designs: trainable parameters, inference overhead, convergence.

CPU (tiny model):          python bench/controls.py
GPU (real size, random):   python bench/controls.py --device cuda --size svd --height 1024 --width 576 \
                               --frames 14 --train-steps 0
Parameters at real size, no weights allocated:  python bench/controls.py --size svd --device meta

For each design (`controlnext`, `controlnet`; `controlnext_video.controls`), built from the same
seed on the same UNet:
- parameters: the control module's (what trains with `--unet-training none`), and as a share of
  the UNet's;
- inference: seconds per UNet step as the pipeline takes it (one window of `--frames` frames, the
  guidance batch of two), control module and hooks included, and its ratio to the plain UNet's
  step (median of `--repeats` after a warm-up);
- convergence (tiny model; `--train-steps 0` skips it): the design's control module trains with
  the official objective (`denoising_loss`) on batches drawn from synthetic clips
  (`moving_disc_clip`: the control marks where the disc is), the same batches and seeds for every
  design; reported: the loss on a fixed held-out batch, and the control-following error on it.

The control-following error asks whether the prediction moves with the control: at a high noise
level (`--follow-sigma`, where the noisy latents say little), denoise the held-out batch with its
own control and with the control of the frames in reverse order, from the same noisy latents;
the change of the denoised latents should be the change of the clean ones:
`mean((D(c) - D(c_rev) - (x0 - x0_rev))^2) / mean((x0 - x0_rev)^2)`. 1 means the control is
ignored (a fresh ControlNet is exactly there), 0 that the prediction follows it perfectly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlnext_video.controls import CONTROL_TYPE_NAMES, new_control  # noqa: E402
from controlnext_video.factory import build_pipeline, svd_size_components, tiny_components  # noqa: E402
from controlnext_video.training import BatchSettings, denoise, denoising_loss, make_batch  # noqa: E402
from controlnext_video.training.params import UNET_TRAINING_MODES, select_trainable  # noqa: E402
from controlnext_video.training.synthetic import moving_disc_clip  # noqa: E402

# Frames per synthetic clip, and how many clips.
CLIP_FRAMES = 24
CLIPS = 2
# Seed of the held-out evaluation batch (training batches use the run's seed).
EVAL_SEED = 999
# Inference micro-conditioning and timestep of the timed UNet step (a mid-schedule step).
TIME_IDS = (6.0, 128.0, 0.02)
TIMED_TIMESTEP = 0.5


def build(args, control_type: str):
    if args.size == "tiny":
        components = tiny_components(args.seed, control_type)
    else:
        dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
        components = svd_size_components(args.device, dtype, args.seed, control_type)
    return build_pipeline(components, args.device)


def meta_parameters(args) -> dict[str, tuple[int, int]]:
    """(control module, UNet) parameter counts per design, built on the meta device (no memory)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from controlnext_video.factory import TINY_UNET

    counts = {}
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying the UNet's weights into meta tensors is a no-op, as meant
        unet = UNetSpatioTemporalConditionModel(**({} if args.size == "svd" else TINY_UNET))
        for design in args.designs:
            control = new_control(design, unet)
            counts[design] = (sum(p.numel() for p in control.parameters()), sum(p.numel() for p in unet.parameters()))
    return counts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def step_seconds(pipe, args) -> tuple[float, float]:
    """Median seconds of one guided UNet step on one window: the plain UNet, and with the control
    module and its hooks. The two alternate, so that a load change on the machine hits both."""
    unet, control, device, dtype = pipe.unet, pipe.controlnext, args.device, pipe.dtype
    gen = torch.Generator().manual_seed(0)
    h, w = args.height // 8, args.width // 8
    sample = torch.randn(2, args.frames, unet.config.in_channels, h, w, generator=gen).to(device, dtype)
    embeddings = torch.randn(2, 1, unet.config.cross_attention_dim, generator=gen).to(device, dtype)
    time_ids = torch.tensor([TIME_IDS], dtype=dtype, device=device).expand(2, -1)
    poses = torch.rand(1, args.frames, control.condition_channels, args.height, args.width, generator=gen)
    poses = poses.to(device, dtype)
    t = torch.tensor(TIMED_TIMESTEP, device=device)
    times = {False: [], True: []}
    with control.injection(unet) as injector:
        for i in range(args.warmup + args.repeats):
            for with_control in (False, True):
                sync(device)
                began = time.perf_counter()
                if with_control:
                    injector.signal = control.signal(poses, t, first_row=args.frames)
                unet(sample, t, encoder_hidden_states=embeddings, added_time_ids=time_ids, return_dict=False)
                sync(device)
                injector.signal = None
                if i >= args.warmup:
                    times[with_control].append(time.perf_counter() - began)
    return statistics.median(times[False]), statistics.median(times[True])


@torch.no_grad()
def follow_error(pipe, batch: dict, sigma: float) -> float:
    """The control-following error of the module docstring on `batch`."""
    inputs = dict(batch, sigmas=torch.full_like(batch["sigmas"], sigma))
    inputs.pop("loss_weights")
    reverse = dict(inputs, pose_frames=inputs["pose_frames"].flip(1))
    moved = denoise(pipe, **inputs).float() - denoise(pipe, **reverse).float()
    target = inputs["latents"] - inputs["latents"].flip(1)
    return ((moved - target) ** 2).mean().item() / (target**2).mean().item()


def convergence(pipe, args) -> dict:
    clips = [moving_disc_clip(CLIP_FRAMES, max(args.height, args.width), seed) for seed in range(CLIPS)]
    data = BatchSettings(height=args.height, width=args.width, sample_n_frames=args.frames, frame_interval=2,
                         conditioning_dropout=0.0)
    held_out = make_batch(pipe, clips, data, seed=EVAL_SEED, step=0, indices=range(args.batch),
                          global_batch_size=args.batch).to(args.device, torch.float32)
    trainable = select_trainable(pipe.unet, pipe.controlnext, args.unet_training)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=args.learning_rate)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            loss = denoising_loss(pipe, **held_out).item()
        return loss, follow_error(pipe, held_out, args.follow_sigma)

    curve = {0: evaluate()}
    began = time.perf_counter()
    for step in range(args.train_steps):
        batch = make_batch(pipe, clips, data, seed=args.seed, step=step, indices=range(args.batch),
                           global_batch_size=args.batch)
        loss = denoising_loss(pipe, **batch.to(args.device, torch.float32))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % args.evaluate_every == 0 or done == args.train_steps:
            curve[done] = evaluate()
    seconds = (time.perf_counter() - began) / max(args.train_steps, 1)
    pipe.unet.requires_grad_(False)
    pipe.controlnext.requires_grad_(False)
    return dict(curve={k: dict(loss=v[0], follow_error=v[1]) for k, v in curve.items()},
                seconds_per_train_step=seconds, trainable=sum(p.numel() for p in trainable.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "svd"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--designs", nargs="+", choices=CONTROL_TYPE_NAMES, default=["controlnext", "controlnet"],
                        help="controlnext-multi is timed with all its conditions present")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4, help="frames per window and per training example")
    parser.add_argument("--repeats", type=int, default=10, help="timed UNet steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first UNet steps")
    parser.add_argument("--train-steps", type=int, default=60, help="optimizer steps (0: no convergence run)")
    parser.add_argument("--evaluate-every", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2, help="examples per training step")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--unet-training", choices=UNET_TRAINING_MODES, default="none")
    parser.add_argument("--follow-sigma", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steady timings on a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if "controlnext-multi" in args.designs and args.train_steps and args.device != "meta":
        parser.error("the convergence run draws pose-only examples: time controlnext-multi with --train-steps 0")
    torch.set_num_threads(args.threads)

    if args.device == "meta":
        print("| design | control parameters | share of UNet |\n| --- | ---: | ---: |")
        for design, (control, unet) in meta_parameters(args).items():
            print(f"| {design} | {control:,} | {control / unet:.1%} |")
        return

    results = {}
    for design in args.designs:
        pipe = build(args, design)
        unet_params = sum(p.numel() for p in pipe.unet.parameters())
        control_params = sum(p.numel() for p in pipe.controlnext.parameters())
        base, controlled = step_seconds(pipe, args)
        result = dict(control_parameters=control_params, unet_parameters=unet_params,
                      base_step_seconds=base, step_seconds=controlled, step_ratio=controlled / base)
        if args.train_steps:
            result.update(convergence(pipe, args))
        results[design] = result
        del pipe
        print(f"{design}: {json.dumps(result)}", file=sys.stderr)

    print(f"\n{args.size} model, {args.device}, {args.height}x{args.width}, {args.frames} frames per window, "
          f"{args.threads} thread(s)\n")
    print("| design | control parameters | share of UNet | s / UNet step (base) | overhead |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for design, r in results.items():
        print(f"| {design} | {r['control_parameters']:,} | {r['control_parameters'] / r['unet_parameters']:.1%} | "
              f"{r['step_seconds']:.4f} ({r['base_step_seconds']:.4f}) | x{r['step_ratio']:.2f} |")
    if args.train_steps:
        steps = list(next(iter(results.values()))["curve"])
        print(f"\nHeld-out loss / control-following error by training step ({args.train_steps} steps, "
              f"lr {args.learning_rate}, UNet training {args.unet_training}, batch {args.batch}):\n")
        print("| design | " + " | ".join(f"step {s}" for s in steps) + " | s / train step |")
        print("| --- |" + " ---: |" * (len(steps) + 1))
        for design, r in results.items():
            cells = " | ".join(f"{r['curve'][s]['loss']:.4f} / {r['curve'][s]['follow_error']:.3f}" for s in steps)
            print(f"| {design} | {cells} | {r['seconds_per_train_step']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(dict(settings=vars(args) | dict(json=str(args.json)), results=results),
                                        indent=2, default=str))


if __name__ == "__main__":
    main()
