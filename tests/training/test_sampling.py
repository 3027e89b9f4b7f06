"""Noise levels and conditioning dropout follow the official training code."""

from __future__ import annotations

import math

import pytest
import torch

from controlnext_video.training import NoiseSchedule, apply_conditioning_dropout
from controlnext_video.training.dropout import dropout_keeps


def official_sigmas(t: torch.Tensor) -> torch.Tensor:
    """A literal restatement of the release's sampler (float64): image_d 64, noise_d 32 -> 64,
    sigma_data 0.5, sigmas 0.002 to 700."""
    sigma_data = 0.5
    logsnr_min = -2 * math.log(0.002 / sigma_data)
    logsnr_max = -2 * math.log(700 / sigma_data)

    def cosine(t, lo, hi):
        t_min, t_max = math.atan(math.exp(-0.5 * hi)), math.atan(math.exp(-0.5 * lo))
        return -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))

    def shifted(t, noise_d):
        shift = 2 * math.log(noise_d / 64)
        return cosine(t, logsnr_min - shift, logsnr_max - shift) + shift

    logsnr = shifted(t, 32) * (1 - t) + shifted(t, 64) * t
    return torch.exp(-logsnr / 2) * sigma_data


def test_schedule_matches_the_release():
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    ours = NoiseSchedule().sigmas(t)
    torch.testing.assert_close(ours, official_sigmas(t), rtol=1e-12, atol=0)
    assert ours[0].item() == pytest.approx(700.0, rel=1e-9)
    assert ours[-1].item() == pytest.approx(0.002, rel=1e-9)
    assert bool((ours[1:] < ours[:-1]).all())  # decreasing in t
    # float32 uniforms give float32 sigmas of the same values
    torch.testing.assert_close(NoiseSchedule().sigmas(t.float()), ours.float())


def test_schedule_median_noise_level():
    """Half of the training steps see sigma above the level of t = 0.5 (0.71)."""
    median = NoiseSchedule().sigmas(torch.tensor([0.5], dtype=torch.float64)).item()
    assert median == pytest.approx(official_sigmas(torch.tensor([0.5], dtype=torch.float64)).item())
    assert median == pytest.approx(0.7085, abs=1e-4)


@pytest.mark.parametrize("kwargs", [dict(sigma_min=0.0), dict(sigma_min=800.0), dict(image_d=-1.0)])
def test_schedule_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        NoiseSchedule(**kwargs)


def test_dropout_bands():
    """p < 0.1: embedding only; 0.1 <= p < 0.2: both; 0.2 <= p < 0.3: reference latents only."""
    p = torch.tensor([0.0, 0.099, 0.1, 0.199, 0.2, 0.299, 0.3, 0.9])
    keep_embedding, keep_reference = dropout_keeps(p, 0.1)
    assert keep_embedding.tolist() == [False, False, False, False, True, True, True, True]
    assert keep_reference.tolist() == [True, True, False, False, False, False, True, True]


def test_dropout_zeroes_the_dropped_conditioning():
    embeddings = torch.randn(4, 1, 8)
    latents = torch.randn(4, 4, 2, 2)
    p = torch.tensor([0.05, 0.15, 0.25, 0.5])
    out_embeddings, out_latents = apply_conditioning_dropout(embeddings, latents, p)
    assert [bool(e.abs().sum() > 0) for e in out_embeddings] == [False, False, True, True]
    assert [bool(x.abs().sum() > 0) for x in out_latents] == [True, False, False, True]
    assert torch.equal(out_embeddings[3], embeddings[3]) and torch.equal(out_latents[0], latents[0])
    no_dropout = apply_conditioning_dropout(embeddings, latents, p, probability=0.0)
    assert torch.equal(no_dropout[0], embeddings) and torch.equal(no_dropout[1], latents)


def test_dropout_checks_its_inputs():
    with pytest.raises(ValueError, match="one value per sample"):
        apply_conditioning_dropout(torch.zeros(2, 1, 8), torch.zeros(2, 4, 2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="probability"):
        dropout_keeps(torch.zeros(2), 0.5)
