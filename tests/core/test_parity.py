"""The pipeline reproduces the published ControlNeXt-SVD v2 inference.

The golden fixture (made by the reference code with the tiny fixture model) pins one case; an
independent literal statement of the reference algorithm (oracle.py), itself checked against the
fixture, pins other window sizes, overlaps, guidance ranges, sizes and control scales.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from controlnext_video import ControlNeXtSVDPipeline

from .conftest import initial_latents, random_inputs
from .oracle import reference_latents

TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def case(shared_dir):
    root = shared_dir / "fixtures" / "parity" / "case-a"
    from safetensors.torch import load_file

    cfg = json.loads((root / "case.json").read_text())
    expected = load_file(str(root / "expected.safetensors"))
    ref = np.asarray(Image.open(root / "ref.png").convert("RGB"))
    poses = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "poses").glob("*.png"))])
    return cfg, expected, ref, poses


@pytest.fixture(scope="module")
def fixture_pipe(shared_dir):
    return ControlNeXtSVDPipeline.from_pretrained(shared_dir / "fixtures" / "controlnext-svd-tiny")


def call_kwargs(cfg):
    return dict(
        height=cfg["height"], width=cfg["width"], num_inference_steps=cfg["num_inference_steps"],
        min_guidance_scale=cfg["min_guidance_scale"], max_guidance_scale=cfg["max_guidance_scale"],
        window_size=cfg["window_size"], overlap=cfg["overlap"], decode_chunk_size=cfg["decode_chunk_size"],
        fps_id=cfg["conditioning"]["fps_id"], motion_bucket_id=cfg["conditioning"]["motion_bucket_id"],
        noise_aug_strength=cfg["conditioning"]["noise_aug_strength"],
    )


def test_fixture_latents_and_frames(case, fixture_pipe):
    cfg, expected, ref, poses = case
    assert fixture_pipe.dtype == torch.float32  # fp16 files loaded into an fp32 pipeline
    kwargs = call_kwargs(cfg)
    gen = torch.Generator().manual_seed(cfg["generator_seed"])
    latents = fixture_pipe(ref, poses, latents=expected["initial_latents"], generator=gen, output_type="latent", **kwargs)
    assert latents.shape == expected["final_latents"].shape
    assert (latents - expected["final_latents"]).abs().max().item() < TOLERANCE
    gen = torch.Generator().manual_seed(cfg["generator_seed"])
    frames = fixture_pipe(ref, poses, latents=expected["initial_latents"], generator=gen, **kwargs)
    assert frames.shape == tuple(expected["frames"].shape) and frames.dtype == np.float32
    assert np.abs(frames - expected["frames"].numpy()).max() < TOLERANCE


def test_fixture_model_saved_and_reloaded_gives_the_same_latents(case, fixture_pipe, tmp_path):
    """The released layout through `save_pretrained` (diffusers layout) and back: bit for bit."""
    cfg, expected, ref, poses = case
    fixture_pipe.save_pretrained(tmp_path / "saved")
    reloaded = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "saved")
    results = [
        pipe(ref, poses, latents=expected["initial_latents"], generator=torch.Generator().manual_seed(cfg["generator_seed"]),
             output_type="latent", **call_kwargs(cfg))
        for pipe in (fixture_pipe, reloaded)
    ]
    assert torch.equal(*results)


def test_oracle_reproduces_fixture(case, fixture_pipe):
    cfg, expected, ref, poses = case
    got = reference_latents(
        fixture_pipe, ref, poses, latents=expected["initial_latents"],
        generator=torch.Generator().manual_seed(cfg["generator_seed"]), steps=cfg["num_inference_steps"],
        min_g=cfg["min_guidance_scale"], max_g=cfg["max_guidance_scale"], window=cfg["window_size"],
        overlap=cfg["overlap"],
    )
    assert (got - expected["final_latents"]).abs().max().item() < TOLERANCE


@pytest.mark.parametrize(
    "n, height, width, window, overlap, min_g, max_g, control_scale",
    [
        (10, 128, 64, 4, 2, 3.0, 3.0, 1.0),   # the fixture's settings on the fixture model
        pytest.param(11, 128, 64, 4, 2, 3.0, 3.0, 1.0, marks=pytest.mark.heavy),   # last window moved back
        pytest.param(9, 64, 64, 5, 1, 1.0, 2.5, 1.0, marks=pytest.mark.heavy),     # guidance ramp, overlap 1
        pytest.param(13, 64, 128, 6, 3, 2.0, 3.5, 0.5, marks=pytest.mark.heavy),   # landscape, control scale
        pytest.param(7, 64, 64, 3, 2, 3.0, 3.0, 1.0, marks=pytest.mark.heavy),     # high overlap
        (5, 64, 64, 8, 2, 1.5, 3.0, 1.0),     # clip shorter than the window
        (4, 64, 64, 4, 1, 3.0, 3.0, 2.0),     # exactly one window
    ],
)
def test_pipeline_matches_reference_algorithm(fixture_pipe, n, height, width, window, overlap, min_g, max_g, control_scale):
    ref, poses = random_inputs(n, height, width, seed=n)
    init = initial_latents(fixture_pipe, n, height, width, seed=n)
    common = dict(window_size=window, overlap=overlap, min_guidance_scale=min_g, max_guidance_scale=max_g,
                  control_scale=control_scale, num_inference_steps=3)
    ours = fixture_pipe(ref, poses, latents=init, generator=torch.Generator().manual_seed(5), output_type="latent", **common)
    theirs = reference_latents(
        fixture_pipe, ref, poses, latents=init, generator=torch.Generator().manual_seed(5), steps=3,
        min_g=min_g, max_g=max_g, window=window, overlap=overlap, control_scale=control_scale,
    )
    assert (ours - theirs).abs().max().item() < TOLERANCE


def test_no_guidance_equals_unit_guidance(tiny_pipe):
    """min = max = 1 skips the unconditional pass; the result is the guided one with scale 1."""
    n, h, w = 6, 64, 64
    ref, poses = random_inputs(n, h, w)
    init = initial_latents(tiny_pipe, n, h, w)
    fast = tiny_pipe(ref, poses, latents=init, num_inference_steps=2, window_size=4, overlap=1,
                     min_guidance_scale=1.0, max_guidance_scale=1.0, output_type="latent",
                     generator=torch.Generator().manual_seed(0))
    full = reference_latents(tiny_pipe, ref, poses, latents=init, generator=torch.Generator().manual_seed(0),
                             steps=2, min_g=1.0, max_g=1.0, window=4, overlap=1)
    assert (fast - full).abs().max().item() < TOLERANCE


def test_generator_order_matches_diffusers(tiny_pipe):
    """The generator feeds the reference's noise augmentation first, then the initial latents."""
    n, h, w = 5, 64, 64
    ref, poses = random_inputs(n, h, w)
    kwargs = dict(num_inference_steps=2, window_size=4, overlap=1, output_type="latent")
    drawn = tiny_pipe(ref, poses, generator=torch.Generator().manual_seed(42), **kwargs)
    gen = torch.Generator().manual_seed(42)
    torch.randn((1, 3, h, w), generator=gen)  # the noise augmentation's draw
    init = torch.randn(tiny_pipe.latent_shape(n, h, w), generator=gen)
    given = tiny_pipe(ref, poses, generator=torch.Generator().manual_seed(42), latents=init, **kwargs)
    assert torch.equal(drawn, given)
