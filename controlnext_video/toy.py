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


class _ExactDenoiser:
    """A toy with an analytic `denoised(x, sigma)` (defined by each toy), offered to the real sampler."""

    def window_denoiser(self):
        """The exact denoiser as the sampler's `SigmaDenoiser` (see `sampler.window_denoiser_of`)."""
        def denoise(x: torch.Tensor, sigma: float, windows: Sequence[Window]) -> list[torch.Tensor]:
            return [self.denoised(x[:, w.start : w.stop], sigma) for w in windows]

        return denoise


@dataclass(frozen=True)
class GaussianFrames(_ExactDenoiser):
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


@dataclass(frozen=True)
class GaussianMixtureFrames(_ExactDenoiser):
    """Frames from a mixture of Gaussians: component k (a `GaussianFrames`) with probability
    `weights[k]`. The exact denoiser is the posterior-weighted sum of the components' own:
    `D(x; sigma) = sum_k p(k | x, sigma) D_k(x; sigma)`, with `p(k | x, sigma)` proportional to
    `weights[k] N(x; mean_k, cov_k + sigma^2 I)`. Several modes test what one Gaussian cannot:
    whether a sampler puts the right share of samples in each mode, not only their spread."""

    frame_shape: tuple[int, ...]
    weights: torch.Tensor  # (K,), summing to 1
    components: tuple[GaussianFrames, ...]

    @classmethod
    def random(cls, frame_shape: Sequence[int], seed: int, weights: Sequence[float] = (0.5, 0.3, 0.2),
               min_variance: float = 0.25, max_variance: float = 1.0) -> GaussianMixtureFrames:
        """Components from `GaussianFrames.random` (seeds derived from `seed`): means of unit-scale
        random numbers, so any two are about sqrt(2 d) apart (11 for d = 64), far more than a
        component's spread (at most sqrt(max_variance))."""
        total = float(sum(weights))
        components = tuple(GaussianFrames.random(frame_shape, seed=1000 * seed + k, min_variance=min_variance,
                                                 max_variance=max_variance) for k in range(len(weights)))
        return cls(tuple(frame_shape), torch.tensor([w / total for w in weights], dtype=torch.float64), components)

    def log_posterior(self, flat: torch.Tensor, sigma: float) -> torch.Tensor:
        """log p(k | x, sigma) of flattened frames. Shapes: `(n, d)` float64 -> `(n, K)`."""
        scores = []
        for weight, component in zip(self.weights, self.components):
            spread = component.variances + sigma**2
            projected = (flat - component.mean) @ component.basis
            scores.append(torch.log(weight) - 0.5 * ((projected**2 / spread).sum(1) + torch.log(spread).sum()))
        scores = torch.stack(scores, dim=1)
        return scores - torch.logsumexp(scores, dim=1, keepdim=True)

    def denoised(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The exact D(x; sigma). Shapes: `(1, N, *frame_shape)` -> the same, in x's dtype."""
        flat = x.reshape(-1, self.components[0].mean.numel()).to(torch.float64)
        posterior = self.log_posterior(flat, sigma).exp()
        out = sum(posterior[:, k : k + 1] * c.denoised(flat, sigma).reshape(flat.shape)
                  for k, c in enumerate(self.components))
        return out.reshape(x.shape).to(x.dtype)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """n exact samples. Shapes: -> `(n, d)` float64."""
        generator = torch.Generator().manual_seed(seed)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.components[0].mean.numel(), dtype=torch.float64, generator=generator)
        out = torch.empty_like(noise)
        for k, c in enumerate(self.components):
            chosen = labels == k
            out[chosen] = c.mean + (noise[chosen] * c.variances.sqrt()) @ c.basis.T
        return out

    def errors(self, frames: torch.Tensor) -> dict[str, float]:
        """How far the frames' distribution is from the mixture: each frame is given to its most
        likely component (the modes are far apart, so this is unambiguous for samples near one);
        `weight_error` is the total variation between the shares of frames per component and the
        weights, `w2` the weight-averaged 2-Wasserstein distance between each component and the
        Gaussian fitted to its frames (inf when a component got fewer than 2 frames), `cov_error`
        likewise averaged from `GaussianFrames.errors`.

        Shapes: frames `(1, N, *frame_shape)` or `(N, *frame_shape)`."""
        samples = frames.reshape(-1, self.components[0].mean.numel()).to(torch.float64)
        labels = self.log_posterior(samples, 0.0).argmax(1)
        shares = torch.bincount(labels, minlength=len(self.components)).to(torch.float64) / len(samples)
        errors = dict(weight_error=float(0.5 * (shares - self.weights).abs().sum()), w2=0.0, cov_error=0.0)
        for k, (weight, component) in enumerate(zip(self.weights.tolist(), self.components)):
            mine = samples[labels == k]
            if len(mine) < 2:
                return dict(errors, w2=float("inf"), cov_error=float("inf"))
            e = component.errors(mine)
            errors["w2"] += weight * e["w2"]
            errors["cov_error"] += weight * e["cov_error"]
        return errors
