"""Batches are a pure function of (clips, settings, seed, step, example indices)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from controlnext_video.training import BatchSettings, NoiseSchedule, make_batch
from controlnext_video.training.batch import clip_for_example, derive_seed

from controlnext_video.training.synthetic import moving_disc_clip

SETTINGS = BatchSettings(height=32, width=32, sample_n_frames=3, frame_interval=2)


@pytest.fixture(scope="module")
def clips():
    return [moving_disc_clip(12, 48, 0), moving_disc_clip(12, 48, 1)]


@pytest.fixture(scope="module")
def pipe():
    from controlnext_video.factory import build_tiny_pipeline

    return build_tiny_pipeline(seed=0)


def test_batch_is_independent_of_how_a_step_is_split(pipe, clips):
    """Examples 0..3 of a step are the same whether drawn together or one by one (so the
    number of processes and accumulation rounds does not change what a step sees)."""
    together = make_batch(pipe, clips, SETTINGS, seed=3, step=5, indices=range(4), global_batch_size=4)
    apart = [make_batch(pipe, clips, SETTINGS, seed=3, step=5, indices=[i], global_batch_size=4) for i in range(4)]
    for name in together.__dataclass_fields__:
        assert torch.equal(getattr(together, name), torch.cat([getattr(b, name) for b in apart])), name
    again = make_batch(pipe, clips, SETTINGS, seed=3, step=5, indices=[2], global_batch_size=4)
    assert torch.equal(again.latents, apart[2].latents)
    other_step = make_batch(pipe, clips, SETTINGS, seed=3, step=6, indices=[2], global_batch_size=4)
    assert not torch.equal(other_step.noise, apart[2].noise)


def test_batch_shapes_and_stratified_noise_levels(pipe, clips):
    batch = make_batch(pipe, clips, SETTINGS, seed=0, step=0, indices=range(2), global_batch_size=2)
    assert batch.latents.shape == (2, 3, 4, 4, 4) and batch.noise.shape == batch.latents.shape
    assert batch.reference_latents.shape == (2, 4, 4, 4)
    assert batch.image_embeddings.shape == (2, 1, 32)
    assert batch.pose_frames.shape == (2, 3, 3, 32, 32) and batch.loss_weights.shape == (2, 3, 1, 32, 32)
    # Example 0 draws its uniform in [0, 1/2), example 1 in [1/2, 1): sigma falls with u.
    middle = NoiseSchedule().sigmas(torch.tensor([0.5])).item()
    assert batch.sigmas[0] >= middle >= batch.sigmas[1]


def test_dropout_zeroes_conditioning_per_example(pipe, clips):
    """With probability 1/3 every sample loses its embedding, its reference latents, or both."""
    settings = dataclasses.replace(SETTINGS, conditioning_dropout=1 / 3)
    batch = make_batch(pipe, clips, settings, seed=0, step=0, indices=range(6), global_batch_size=6)
    kept_embedding = batch.image_embeddings.flatten(1).abs().sum(1) > 0
    kept_reference = batch.reference_latents.flatten(1).abs().sum(1) > 0
    assert not bool((kept_embedding & kept_reference).any())
    no_dropout = dataclasses.replace(SETTINGS, conditioning_dropout=0.0)
    plain = make_batch(pipe, clips, no_dropout, seed=0, step=0, indices=range(6), global_batch_size=6)
    assert bool((plain.image_embeddings.flatten(1).abs().sum(1) > 0).all())


def test_every_clip_once_per_epoch():
    for epoch in range(3):
        order = [clip_for_example(5, epoch * 5 + i, seed=1) for i in range(5)]
        assert sorted(order) == list(range(5))
    assert [clip_for_example(5, i, seed=1) for i in range(5)] != [clip_for_example(5, i, seed=2) for i in range(5)]


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2)
    assert len({derive_seed(0, s, i) for s in range(20) for i in range(20)}) == 400
    assert 0 <= derive_seed("epoch", 3) < 2**63


def test_bad_requests_are_refused(pipe, clips):
    with pytest.raises(ValueError, match="outside the global batch"):
        make_batch(pipe, clips, SETTINGS, seed=0, step=0, indices=[2], global_batch_size=2)
    with pytest.raises(ValueError, match="no training clips"):
        make_batch(pipe, [], SETTINGS, seed=0, step=0, indices=[0], global_batch_size=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        BatchSettings(height=30)
