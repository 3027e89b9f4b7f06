"""Noise levels for training: the official cosine-interpolated log-SNR schedule.

The ControlNeXt-SVD v2 training code draws each sample's noise level sigma from "simple
diffusion"'s interpolated cosine schedule: a uniform `t` in [0, 1] is mapped to a log-SNR by
interpolating (with weight `t`) between two shifted cosine schedules, one shifted for a noise
resolution of 32 and one for 64 at an image resolution of 64, between the log-SNRs of
`sigma_max` (t = 0) and `sigma_min` (t = 1), all measured relative to `sigma_data`. The official
sampler stratifies the uniforms over the batch (sample `i` of `n` in `[i/n, (i+1)/n)`);
`batch.make_batch` does the same over a step's global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """The official noise-level distribution (all defaults are the release's).

    Attributes:
        image_d: the image resolution the shifts are relative to.
        noise_d_low: noise resolution of the schedule weighted by `t` (low noise end).
        noise_d_high: noise resolution of the schedule weighted by `1 - t`.
        sigma_data: data standard deviation; used only to place the log-SNR range.
        sigma_min: smallest noise level (t = 1).
        sigma_max: largest noise level (t = 0).
    """

    image_d: float = 64.0
    noise_d_low: float = 32.0
    noise_d_high: float = 64.0
    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 700.0

    def __post_init__(self) -> None:
        for name in ("image_d", "noise_d_low", "noise_d_high", "sigma_data", "sigma_min", "sigma_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"NoiseSchedule.{name} must be a positive number, got {value!r}")
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below sigma_max ({self.sigma_max})")

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """Noise levels for uniforms `u` in [0, 1] (monotonically decreasing in `u`).

        Shapes: any -> same (float64 inside, returned in `u`'s dtype).
        """
        t = u.double()
        # Log-SNRs of the range ends, relative to sigma_data.
        logsnr_at_0 = -2 * math.log(self.sigma_max / self.sigma_data)
        logsnr_at_1 = -2 * math.log(self.sigma_min / self.sigma_data)
        low = _shifted_cosine_logsnr(t, self.noise_d_low / self.image_d, logsnr_at_0, logsnr_at_1)
        high = _shifted_cosine_logsnr(t, self.noise_d_high / self.image_d, logsnr_at_0, logsnr_at_1)
        logsnr = torch.lerp(low, high, t)
        return (torch.exp(-logsnr / 2) * self.sigma_data).to(u.dtype)


def _shifted_cosine_logsnr(t: torch.Tensor, ratio: float, logsnr_at_0: float, logsnr_at_1: float) -> torch.Tensor:
    """Cosine log-SNR schedule shifted by `2 ln(ratio)`, spanning [logsnr_at_0, logsnr_at_1]."""
    shift = 2 * math.log(ratio)
    angle_0 = math.atan(math.exp(-0.5 * (logsnr_at_0 - shift)))
    angle_1 = math.atan(math.exp(-0.5 * (logsnr_at_1 - shift)))
    return -2 * torch.log(torch.tan(angle_0 + t * (angle_1 - angle_0))) + shift
