"""Benchmark the sampler's Langevin corrector and churn against plain Euler where the exact answer is known.

    python bench/corrector.py                 # 4096 frames of 4x4x4 latents, windows of 16 overlapping by 4; a Gaussian and a mixture

The data: every latent frame (4 x 4 x 4 = 64 numbers) drawn independently from a Gaussian with a
random mean, a random rotation and variances log-spaced over a range; its exact denoiser
D(x; sigma) is analytic (`controlnext_video.toy`). It is plugged into the real sampler
(`sample_windows`: windows, per-frame fusion of the outputs, the released model's scheduler:
Euler, v-prediction, Karras sigmas 0.002..700) as a window denoiser, and one call on N frames
gives N samples. Reported per configuration:
  evals     model evaluations per window over the call (steps + corrector steps after every step
            that ends above sigma 0)
  W2        2-Wasserstein distance between the Gaussian fitted to the N samples and the true one
  mean err  norm of the error of the sample mean
  cov err   Frobenius norm of the sample covariance's error, relative to the true covariance's
The "exact" row draws N samples from the true distribution: the error that N samples leave.
Two data sets: variances in [0.25, 4] (condition number 16) and in [0.001, 4] (4000).

A second table, on a mixture of three such Gaussians (weights 0.5/0.3/0.2, variances 0.25-1,
means about 11 apart; `GaussianMixtureFrames`, exact denoiser the posterior-weighted sum of the
components'): each sample is given to its most likely component;
  W2 modes  the weight-averaged W2 between each component and the Gaussian fitted to its samples
  weights   total variation between the shares of samples per component and the weights
Everything is seeded: the same command prints the same tables.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import EulerDiscreteScheduler

from controlnext_video.sampler import FrameNoise, StochasticOptions, sample_windows, window_denoiser_of
from controlnext_video.toy import GaussianFrames, GaussianMixtureFrames
from controlnext_video.windows import plan_windows

# The released ControlNeXt-SVD scheduler (reference/controlnext-svd-v2.md, section 5).
SVD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="v_prediction", timestep_type="continuous", use_karras_sigmas=True, sigma_min=0.002,
    sigma_max=700.0, timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
    final_sigmas_type="zero",
)
# (steps, corrector_steps, snr, churn)
CONFIGS = [
    *((steps, 0, 0.0, 0.0) for steps in (3, 4, 5, 7, 9, 13, 25)),
    *((steps, k, snr, 0.0) for steps in (3, 4, 5) for k in (1, 2) for snr in (0.16, 0.3)),
    *((steps, 0, 0.0, churn) for steps in (4, 5) for churn in (1.0, 4.0)),
    (4, 1, 0.16, 1.0),
    (5, 1, 0.3, 1.0),
]
DATA = {"variances 0.25-4": 0.25, "variances 0.001-4": 0.001}


def scheduler(steps: int) -> EulerDiscreteScheduler:
    s = EulerDiscreteScheduler.from_config(SVD_SCHEDULER)
    s.set_timesteps(steps)
    return s


def run(toy: GaussianFrames | GaussianMixtureFrames, frames: int, window: int, overlap: int, steps: int, corrector_steps: int, snr: float,
        churn: float, seed: int) -> tuple[int, dict[str, float]]:
    s = scheduler(steps)
    plan = plan_windows(frames, window, overlap)
    latents = torch.randn(1, frames, *toy.frame_shape, generator=torch.Generator().manual_seed(seed))
    options = StochasticOptions(corrector_steps=corrector_steps, corrector_snr=snr, s_churn=churn)
    out = sample_windows(window_denoiser_of(toy.window_denoiser(), s), latents * s.init_noise_sigma, s, plan,
                         stochastic=options, noise=FrameNoise(seed, tuple(range(frames))))
    return options.model_evaluations(s.sigmas), toy.errors(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4096, help="frames = independent samples")
    parser.add_argument("--frame-shape", type=int, nargs=3, default=(4, 4, 4), metavar=("C", "H", "W"))
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--overlap", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    print(f"{args.frames} frames of {'x'.join(map(str, args.frame_shape))}, windows of {args.window} overlapping by "
          f"{args.overlap}, Euler on the released scheduler (Karras sigmas 0.002..700)\n")
    print("| data | steps | corrector_steps | snr | churn | model evals | W2 | mean err | cov err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, min_variance in DATA.items():
        toy = GaussianFrames.random(args.frame_shape, seed=0, min_variance=min_variance)
        exact = toy.mean + (torch.randn(args.frames, toy.mean.numel(), dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(args.seed))
                            * toy.variances.sqrt()) @ toy.basis.T
        e = toy.errors(exact)
        print(f"| {name} | exact samples | - | - | - | - | {e['w2']:.3f} | {e['mean_error']:.3f} | {e['cov_error']:.3f} |")
        for steps, k, snr, churn in CONFIGS:
            evals, e = run(toy, args.frames, args.window, args.overlap, steps, k, snr, churn, args.seed)
            print(f"| {name} | {steps} | {k} | {snr if k else '-'} | {churn if churn else '-'} | {evals} | "
                  f"{e['w2']:.3f} | {e['mean_error']:.3f} | {e['cov_error']:.3f} |", flush=True)
    mixture = GaussianMixtureFrames.random(args.frame_shape, seed=0)
    print("\nMixture of 3 Gaussians (weights 0.5/0.3/0.2):\n")
    print("| steps | corrector_steps | snr | churn | model evals | W2 modes | weights | cov err |")
    print("|---|---|---|---|---|---|---|---|")
    e = mixture.errors(mixture.sample(args.frames, args.seed))
    print(f"| exact samples | - | - | - | - | {e['w2']:.3f} | {e['weight_error']:.3f} | {e['cov_error']:.3f} |")
    for steps, k, snr, churn in CONFIGS:
        evals, e = run(mixture, args.frames, args.window, args.overlap, steps, k, snr, churn, args.seed)
        print(f"| {steps} | {k} | {snr if k else '-'} | {churn if churn else '-'} | {evals} | {e['w2']:.3f} | "
              f"{e['weight_error']:.3f} | {e['cov_error']:.3f} |", flush=True)
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
