"""The long-video sampler: per-step fusion of overlapping windows (k-diffusion style).

A sampler is a plain function of a window denoiser, the current latents and a scheduler whose
timesteps are set. At each timestep every window is denoised from the current global latents;
the guided model outputs are averaged per frame over the windows that keep that frame, and the
public `scheduler.step` is called once for the whole clip.

This equals the reference, which steps each window separately (resetting the scheduler's private
step index) and averages the stepped latents: for a fixed input an Euler step is affine in the
model output, so averaging outputs then stepping gives the same latents, without touching
scheduler internals.

Given a `torch.distributed` process group, the windows of each step are split over its ranks and
their outputs exchanged, with the same result as one process bit for bit
(`controlnext_video.distributed`).

Two stochastic options, both off by default (`StochasticOptions`): a Langevin corrector after
each Euler step (predictor-corrector sampling, Song et al. 2021), whose score comes from the
same fused denoiser, `(D(x; sigma) - x) / sigma**2`; and Karras et al.'s churn (2022, Algorithm
2), which adds noise before a step and evaluates the model at the raised sigma. Their fresh
noise is drawn per frame from `(seed, clip-global frame index, step, sub-step)` (`FrameNoise`),
so a frame gets the same noise whatever the window or segment plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .distributed import WindowSplit, all_gather_uneven, check_same_on_all_ranks, rank_and_size, split_windows
from .memory import is_out_of_memory
from .noise import CHURN_NOISE, CORRECTOR_NOISE, keyed_noise
from .windows import Window, WindowPlan

# (scaled latents (1, N, C, h, w), timestep, windows) -> one guided model output
# (1, window.size, C, h, w) per window, in order.
WindowDenoiser = Callable[[torch.Tensor, torch.Tensor, Sequence[Window]], Sequence[torch.Tensor]]
# (step index, timestep, latents after the step) -> the latents to go on from
StepEnd = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


# Song et al.'s signal-to-noise ratio for the Langevin corrector of VE SDEs (their CIFAR-10 value).
DEFAULT_CORRECTOR_SNR = 0.16
# Karras et al.: churn adds at most this much noise per step, gamma <= sqrt(2) - 1 (sigma at most doubles in variance).
MAX_CHURN_GAMMA = math.sqrt(2.0) - 1.0


@dataclass(frozen=True)
class StochasticOptions:
    """The sampler's stochastic options; the defaults leave it deterministic, bit for bit.

    corrector_steps: Langevin steps after each Euler step whose target sigma is above zero
        (each one model evaluation per window).
    corrector_snr: the corrector's target signal-to-noise ratio; the step size is
        `eps = 2 * (snr * ||z|| / ||score||)**2` per frame (`langevin_step`).
    s_churn, s_tmin, s_tmax, s_noise: Karras et al.'s churn: at a step whose sigma lies in
        `[s_tmin, s_tmax]`, sigma is raised to `sigma * (1 + gamma)`, `gamma = min(s_churn /
        steps, sqrt(2) - 1)`, by adding noise scaled by `s_noise`, before the model is evaluated
        (no extra model evaluation). `s_tmin > s_tmax` is an empty range: no step churns.
    """

    corrector_steps: int = 0
    corrector_snr: float = DEFAULT_CORRECTOR_SNR
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.corrector_steps, int) or self.corrector_steps < 0:
            raise ValueError(f"corrector_steps must be an integer >= 0, got {self.corrector_steps!r}")
        for name in ("corrector_snr", "s_churn", "s_tmin", "s_noise"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if math.isnan(self.s_tmax) or self.s_tmax < 0:
            raise ValueError(f"s_tmax must be a number >= 0, got {self.s_tmax!r}")

    @property
    def active(self) -> bool:
        """Whether the sampler draws fresh noise (False: the deterministic sampler)."""
        return self.corrector_steps > 0 or self.s_churn > 0

    def churn_gamma(self, sigma: float, num_steps: int) -> float:
        """Karras et al.'s gamma at a step from `sigma`, out of `num_steps` steps."""
        if self.s_churn <= 0 or not self.s_tmin <= sigma <= self.s_tmax:
            return 0.0
        return min(self.s_churn / num_steps, MAX_CHURN_GAMMA)

    def model_evaluations(self, sigmas: Sequence[float]) -> int:
        """Model evaluations per window over a whole call, for the schedule `sigmas` (the
        scheduler's, one more than the steps): one per step, plus `corrector_steps` after every
        step that ends above sigma 0."""
        sigmas = [float(s) for s in sigmas]
        return len(sigmas) - 1 + self.corrector_steps * sum(1 for s in sigmas[1:] if s > 0)


def corrector_cost(num_steps: int, corrector_steps: int) -> int:
    """Model evaluations per window of a call of `num_steps` steps on a schedule ending at sigma
    0 (the project's scheduler): `num_steps + corrector_steps * (num_steps - 1)`."""
    return num_steps + corrector_steps * (num_steps - 1)


@dataclass(frozen=True)
class FrameNoise:
    """The sampler's fresh noise: frame i's depends only on `(seed, frame_indices[i], kind, step,
    sub-step)`; `frame_indices` are clip-global (a segment's `noise_indices`)."""

    seed: int
    frame_indices: tuple[int, ...]

    def draw(self, kind: int, step: int, sub_step: int, like: torch.Tensor) -> torch.Tensor:
        """Shapes: `like` `(1, N, C, h, w)` -> noise of its shape, dtype and device."""
        noise = keyed_noise(self.seed, self.frame_indices, like.shape[2:], (kind, step, sub_step))
        return noise.to(like.device, like.dtype)


@dataclass(frozen=True)
class SigmaParameterization:
    """How an Euler-family diffusers scheduler (k-diffusion's sigma parameterisation) talks to the
    model, read from its public config: the input scaling, the timestep of a sigma, and the
    denoised estimate D(x; sigma) from a model output (and back, for a denoiser given as D).

    `continuous`: the timestep is `0.25 * log(sigma)` (SVD's v-prediction EDM setup);
    otherwise it is interpolated in log sigma over the training sigmas, as the scheduler places
    its own timesteps.
    """

    prediction_type: str
    continuous: bool
    train_log_sigmas: tuple[float, ...]

    @classmethod
    def of(cls, scheduler) -> SigmaParameterization:
        config = scheduler.config
        if not (hasattr(scheduler, "sigmas") and hasattr(scheduler, "alphas_cumprod")) or \
                config.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"the corrector and churn need an Euler-family scheduler with sigmas and an epsilon, "
                             f"v_prediction or sample prediction type; got {type(scheduler).__name__}")
        alphas = np.asarray(scheduler.alphas_cumprod, dtype=np.float64)
        continuous = config.get("timestep_type") == "continuous" and config.prediction_type == "v_prediction"
        return cls(config.prediction_type, continuous, tuple(np.log(((1 - alphas) / alphas) ** 0.5).tolist()))

    @staticmethod
    def scale(x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model's input at noise level sigma (unit variance for unit-variance data)."""
        return x / (sigma**2 + 1) ** 0.5

    def timestep(self, sigma: float) -> float:
        if self.continuous:
            return 0.25 * math.log(sigma)
        return float(np.interp(math.log(sigma), self.train_log_sigmas, np.arange(len(self.train_log_sigmas))))

    def sigma(self, timestep: float) -> float:
        if self.continuous:
            return math.exp(4.0 * timestep)
        return math.exp(float(np.interp(timestep, np.arange(len(self.train_log_sigmas)), self.train_log_sigmas)))

    def denoised(self, output: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x; sigma) from the model output at `scale(x, sigma)`."""
        if self.prediction_type == "v_prediction":
            return output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        if self.prediction_type == "epsilon":
            return x - sigma * output
        return output

    def model_output(self, denoised: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The model output that gives `denoised` (the inverse of `denoised`)."""
        if self.prediction_type == "v_prediction":
            return (denoised - x / (sigma**2 + 1)) / (-sigma / (sigma**2 + 1) ** 0.5)
        if self.prediction_type == "epsilon":
            return (x - denoised) / sigma
        return denoised


# A denoiser given as D: (latents x (1, N, C, h, w) at noise level sigma, sigma, windows) ->
# D(x; sigma) restricted to each window, (1, window.size, C, h, w).
SigmaDenoiser = Callable[[torch.Tensor, float, Sequence[Window]], Sequence[torch.Tensor]]


def window_denoiser_of(denoiser: SigmaDenoiser, scheduler) -> WindowDenoiser:
    """A `WindowDenoiser` (what the sampler calls: scaled latents, timestep -> model outputs)
    from a denoiser given as D(x; sigma), e.g. an exact one for a known distribution."""
    param = SigmaParameterization.of(scheduler)

    def denoise(scaled: torch.Tensor, t: torch.Tensor, windows: Sequence[Window]) -> list[torch.Tensor]:
        sigma = param.sigma(float(t))
        x = scaled * (sigma**2 + 1) ** 0.5
        return [param.model_output(d, x[:, w.start : w.stop], sigma) for d, w in zip(denoiser(x, sigma, windows), windows,
                                                                                      strict=True)]

    return denoise


def sample_windows(
    denoise: WindowDenoiser,
    latents: torch.Tensor,
    scheduler,
    plan: WindowPlan,
    *,
    windows_per_batch: int = 1,
    on_step_end: StepEnd | None = None,
    on_out_of_memory: Callable[[int], None] | None = None,
    process_group=None,
    stochastic: StochasticOptions | None = None,
    noise: FrameNoise | None = None,
) -> torch.Tensor:
    """Denoise `latents` over `scheduler.timesteps` with per-step window fusion.

    Shapes: latents `(1, N, C, h, w)` with `N == plan.num_frames` -> same shape.
    `on_step_end(step_index, t, latents)` is called after each step (0-based) and returns the
    latents to continue from (the same tensor, or a replacement). When a batch of several windows
    runs out of memory, the batch size is halved and the same step goes on;
    `on_out_of_memory(new_windows_per_batch)` is told (a batch of one window re-raises).

    `stochastic` adds a Langevin corrector and/or Karras churn (`StochasticOptions`); their
    fresh noise comes from `noise` (required then), keyed by the clip-global frame index. With
    the options off (None, or all at their defaults) the loop is the deterministic one, bit for
    bit: the public `scheduler.step` on the fused model outputs.

    With `process_group` (every rank calls with the same arguments and `windows_per_batch`),
    each rank denoises its share of the batches of `windows_per_batch` windows, the kept outputs
    are all-gathered every step and summed in window order on every rank: every rank returns the
    one-process result (the corrector's and churn's updates too: every rank draws the same noise
    and applies it to the same fused outputs). `on_step_end` runs on every rank and must return
    the same on all.
    """
    if latents.shape[1] != plan.num_frames:
        raise ValueError(f"latents have {latents.shape[1]} frames, the window plan {plan.num_frames}")
    if windows_per_batch < 1:
        raise ValueError(f"windows_per_batch must be at least 1, got {windows_per_batch}")
    stochastic = stochastic if stochastic is not None and stochastic.active else None
    if stochastic is not None:
        if noise is None:
            raise ValueError("the corrector and churn draw fresh noise: give `noise` (a FrameNoise)")
        if len(noise.frame_indices) != plan.num_frames:
            raise ValueError(f"noise has {len(noise.frame_indices)} frame indices, the window plan "
                             f"{plan.num_frames} frames")
    windows = plan.windows
    if process_group is None:
        exchange = None
    else:
        check_same_on_all_ranks(latents, process_group, "initial latents")
        check_same_on_all_ranks(torch.tensor([windows_per_batch]), process_group, "windows_per_batch")
        rank, world_size = rank_and_size(process_group)
        split = split_windows(len(windows), windows_per_batch, world_size)
        windows = tuple(plan.windows[i] for i in split.windows_of(rank))
        exchange = _OutputExchange(plan, split, latents, process_group)
    fused = FusedModel(denoise, plan, windows, windows_per_batch, on_out_of_memory, exchange, latents)
    if stochastic is not None:
        return _sample_stochastic(fused, latents, scheduler, stochastic, noise, on_step_end)
    for step, t in enumerate(scheduler.timesteps):
        scaled = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(fused(scaled, t), t, latents, return_dict=False)[0]
        if on_step_end is not None:
            latents = on_step_end(step, t, latents)
    return latents


class FusedModel:
    """The clip's model output at one timestep: every window denoised (this rank's, the others'
    gathered), the guided outputs averaged per frame over the windows that keep the frame.

    Shapes: scaled latents `(1, N, C, h, w)`, a timestep -> `(1, N, C, h, w)`.
    `windows_per_batch` is the batch size now in force (halved on out-of-memory, for the rest
    of the call).
    """

    def __init__(self, denoise: WindowDenoiser, plan: WindowPlan, windows: Sequence[Window], windows_per_batch: int,
                 on_out_of_memory: Callable[[int], None] | None, exchange, latents: torch.Tensor) -> None:
        self.denoise, self.plan, self.windows, self.exchange = denoise, plan, windows, exchange
        self.windows_per_batch, self.on_out_of_memory = windows_per_batch, on_out_of_memory
        self.counts = torch.tensor(plan.counts, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1, 1)

    def __call__(self, scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        outputs, self.windows_per_batch = _denoise_windows(
            self.denoise, scaled, t, self.windows, self.windows_per_batch, self.on_out_of_memory)
        if self.exchange is not None:
            outputs = self.exchange(outputs)
        total = torch.zeros_like(scaled)
        for window, output in zip(self.plan.windows, outputs, strict=True):
            total[:, window.keep_from : window.stop] += output.to(total.dtype)
        return total / self.counts


def _sample_stochastic(fused: FusedModel, latents: torch.Tensor, scheduler, options: StochasticOptions,
                       noise: FrameNoise, on_step_end: StepEnd | None) -> torch.Tensor:
    """The sampler with churn and/or a corrector, k-diffusion style: Euler steps taken here on
    the scheduler's sigmas (the scheduler's own step cannot evaluate the model at a churned
    sigma), the fused model output turned into the denoised estimate D(x; sigma) by
    `SigmaParameterization`."""
    param = SigmaParameterization.of(scheduler)
    sigmas = [float(s) for s in scheduler.sigmas]
    timesteps = scheduler.timesteps
    num_steps = len(timesteps)

    def denoised(x: torch.Tensor, sigma: float, t: torch.Tensor) -> torch.Tensor:
        return param.denoised(fused(param.scale(x, sigma), t), x, sigma)

    for step, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        gamma = options.churn_gamma(sigma, num_steps)
        if gamma > 0:
            sigma_hat = sigma * (1.0 + gamma)
            kick = options.s_noise * math.sqrt(sigma_hat**2 - sigma**2)
            latents = latents + kick * noise.draw(CHURN_NOISE, step, 0, latents)
            t_hat = torch.as_tensor(param.timestep(sigma_hat), dtype=t.dtype, device=t.device)
        else:
            sigma_hat, t_hat = sigma, t
        latents = latents + (latents - denoised(latents, sigma_hat, t_hat)) * ((sigma_next - sigma_hat) / sigma_hat)
        if sigma_next > 0:  # the last sigma is above 0 with `final_sigmas_type="sigma_min"`: no timestep of its own
            t_next = timesteps[step + 1] if step + 1 < num_steps else \
                torch.as_tensor(param.timestep(sigma_next), dtype=t.dtype, device=t.device)
            for k in range(options.corrector_steps):
                score_denoised = denoised(latents, sigma_next, t_next)
                latents = langevin_step(latents, score_denoised, sigma_next, options.corrector_snr,
                                        noise.draw(CORRECTOR_NOISE, step, k, latents))
        if on_step_end is not None:
            latents = on_step_end(step, t, latents)
    return latents


def langevin_step(x: torch.Tensor, denoised: torch.Tensor, sigma: float, snr: float, z: torch.Tensor) -> torch.Tensor:
    """One Langevin corrector step at noise level `sigma` (Song et al. 2021, Algorithm 4/5).

    The score is `(denoised - x) / sigma**2`; the step size follows the target signal-to-noise
    ratio, `eps = 2 * (snr * ||z|| / ||score||)**2`, with the norms taken per frame (over
    channels, height and width), so that a frame's step depends on that frame alone, not on
    which other frames share its window or segment; `x + eps * score + sqrt(2 eps) * z`.
    A frame whose score is zero does not move.
    Shapes: x, denoised, z `(1, N, C, h, w)`; the same out.
    """
    score = (denoised - x) / sigma**2
    score_norm = score.flatten(2).norm(dim=2)
    noise_norm = z.flatten(2).norm(dim=2)
    eps = torch.where(score_norm > 0, 2 * (snr * noise_norm / score_norm.clamp_min(1e-30)) ** 2,
                      torch.zeros_like(score_norm))
    eps = eps.view(*eps.shape, *([1] * (x.dim() - eps.dim())))
    return x + eps * score + (2 * eps).sqrt() * z


def _denoise_windows(
    denoise: WindowDenoiser,
    scaled: torch.Tensor,
    t: torch.Tensor,
    windows: Sequence[Window],
    windows_per_batch: int,
    on_out_of_memory: Callable[[int], None] | None,
) -> tuple[list[torch.Tensor], int]:
    """Each window's kept output `(1, stop - keep_from, C, h, w)`, in order, `windows_per_batch`
    windows per call (halved on out-of-memory); returns them and the batch size now in force."""
    kept = []
    done = 0
    while done < len(windows):
        batch = windows[done : done + windows_per_batch]
        try:
            outputs = denoise(scaled, t, batch)
        except Exception as exc:
            if not is_out_of_memory(exc) or windows_per_batch == 1:
                raise
            windows_per_batch //= 2
            if on_out_of_memory is not None:
                on_out_of_memory(windows_per_batch)
            continue
        for window, output in zip(batch, outputs, strict=True):
            kept.append(output[:, window.keep_from - window.start :])
        done += len(batch)
    return kept, windows_per_batch


class _OutputExchange:
    """Every rank's kept window outputs of one step, gathered on every rank in window order."""

    def __init__(self, plan: WindowPlan, split: WindowSplit, latents: torch.Tensor, process_group) -> None:
        self.group, self.dtype, self.frame_shape = process_group, latents.dtype, tuple(latents.shape[2:])
        frame_elements = latents[0, 0].numel()
        # kept frames of each window, per rank
        self.frames = [[plan.windows[i].stop - plan.windows[i].keep_from for i in split.windows_of(r)]
                       for r in range(split.world_size)]
        self.sizes = [sum(frames) * frame_elements for frames in self.frames]
        self.frame_elements = frame_elements
        self.device = latents.device

    def __call__(self, mine: list[torch.Tensor]) -> list[torch.Tensor]:
        """Shapes: this rank's `(1, kept_i, C, h, w)` -> every window's, in window order."""
        flat = torch.cat([o.to(self.dtype).reshape(-1) for o in mine]) if mine else \
            torch.empty(0, dtype=self.dtype, device=self.device)
        outputs = []
        for part, frames in zip(all_gather_uneven(flat, self.sizes, self.group), self.frames, strict=True):
            pieces = part.split([n * self.frame_elements for n in frames])
            outputs.extend(piece.view(1, n, *self.frame_shape) for piece, n in zip(pieces, frames, strict=True))
        return outputs
