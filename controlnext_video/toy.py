"""A distribution whose exact denoiser is known, to check samplers against the truth.

Each latent frame `(C, h, w)` is drawn independently from a Gaussian `N(mean, U diag(variances) U^T)`;
at noise level sigma the exact denoiser is `D(x; sigma) = mean + U diag(v / (v + sigma^2)) U^T (x - mean)`.
A clip of N frames is N independent samples, so one call of the real sampler (windows, fusion,
scheduler) on many frames gives the sampled distribution, compared with the true one by the
2-Wasserstein distance between Gaussians and the errors of the first two moments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .windows import Window


@dataclass(frozen=True)
class GaussianFrames:
    """Frames `(C, h, w)` from `N(mean, basis diag(variances) basis^T)` (float64, flattened frame)."""

    frame_shape: tuple[int, ...]
    mean: torch.Tensor  # (d,)
    basis: torch.Tensor  # (d, d), orthonormal columns
    variances: torch.Tensor  # (d,)

    @classmethod
    def random(cls, frame_shape: Sequence[int], seed: int, min_variance: float = 1e-3,
               max_variance: float = 4.0) -> GaussianFrames:
        """A random mean (unit scale), a random rotation and variances log-spaced between the bounds."""
        d = int(np.prod(frame_shape))
        generator = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        variances = torch.logspace(np.log10(min_variance), np.log10(max_variance), d, dtype=torch.float64)
        mean = torch.randn(d, generator=generator, dtype=torch.float64)
        return cls(tuple(frame_shape), mean, basis, variances)

    @property
    def covariance(self) -> torch.Tensor:
        return (self.basis * self.variances) @ self.basis.T

    def denoised(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The exact D(x; sigma). Shapes: `(1, N, *frame_shape)` -> the same, in x's dtype."""
        flat = x.reshape(-1, self.mean.numel()).to(torch.float64) - self.mean
        shrink = self.variances / (self.variances + sigma**2)
        out = self.mean + ((flat @ self.basis) * shrink) @ self.basis.T
        return out.reshape(x.shape).to(x.dtype)

    def window_denoiser(self):
        """The exact denoiser as the sampler's `SigmaDenoiser` (see `sampler.window_denoiser_of`)."""
        def denoise(x: torch.Tensor, sigma: float, windows: Sequence[Window]) -> list[torch.Tensor]:
            return [self.denoised(x[:, w.start : w.stop], sigma) for w in windows]

        return denoise

    def errors(self, frames: torch.Tensor) -> dict[str, float]:
        """How far the frames' distribution is from the true one: `w2` (2-Wasserstein between the
        Gaussian fitted to the frames and the true Gaussian), `mean_error` (norm of the mean's
        error) and `cov_error` (Frobenius norm of the covariance's error, relative to the true one's).

        Shapes: frames `(1, N, *frame_shape)` or `(N, *frame_shape)`, N > 1.
        """
        samples = frames.reshape(-1, self.mean.numel()).to(torch.float64)
        mean = samples.mean(0)
        cov = torch.cov(samples.T)
        truth = self.covariance
        return dict(w2=gaussian_w2(mean, cov, self.mean, truth),
                    mean_error=float((mean - self.mean).norm()),
                    cov_error=float((cov - truth).norm() / truth.norm()))


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T


def gaussian_w2(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """2-Wasserstein distance between `N(mean_a, cov_a)` and `N(mean_b, cov_b)`:
    `sqrt(|ma - mb|^2 + tr(A + B - 2 (B^1/2 A B^1/2)^1/2))`."""
    root_b = _sqrt_psd(cov_b)
    cross = _sqrt_psd(root_b @ cov_a @ root_b)
    squared = (mean_a - mean_b).pow(2).sum() + torch.trace(cov_a + cov_b - 2 * cross)
    return float(squared.clamp_min(0).sqrt())
