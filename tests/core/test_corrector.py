"""The sampler's Langevin corrector and churn: off by default (bit for bit), proven on a toy whose
exact denoiser is known, and keyed by the clip-global frame index (independent of the plan)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from controlnext_video.noise import CORRECTOR_NOISE
from controlnext_video.sampler import (
    FrameNoise,
    SigmaParameterization,
    StochasticOptions,
    corrector_cost,
    sample_windows,
    window_denoiser_of,
)
from controlnext_video.segments import plan_segments
from controlnext_video.toy import GaussianFrames, GaussianMixtureFrames, gaussian_w2
from controlnext_video.windows import plan_windows

from . import ranks
from .conftest import initial_latents, random_inputs

FRAME = (4, 2, 2)


@pytest.fixture(scope="module")
def svd_scheduler_config(shared_dir):
    """The released model's scheduler: Euler, v-prediction, continuous timesteps, Karras sigmas."""
    return json.loads((shared_dir / "fixtures" / "controlnext-svd-tiny" / "scheduler" / "scheduler_config.json").read_text())


def scheduler_for(config: dict, steps: int) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return scheduler


def toy_sample(toy: GaussianFrames, config: dict, steps: int, plan, seed: int = 1, frame_indices=None, **options):
    """The real sampler on the toy's exact denoiser: frames drawn from the model's distribution."""
    scheduler = scheduler_for(config, steps)
    latents = torch.randn(1, plan.num_frames, *toy.frame_shape, generator=torch.Generator().manual_seed(seed))
    indices = tuple(range(plan.num_frames)) if frame_indices is None else tuple(frame_indices)
    return sample_windows(window_denoiser_of(toy.window_denoiser(), scheduler), latents * scheduler.init_noise_sigma,
                          scheduler, plan, stochastic=StochasticOptions(**options), noise=FrameNoise(seed, indices))


# ------------------------------------------------------------------------------- defaults and the seam


def test_options_at_their_defaults_are_the_deterministic_sampler_bit_for_bit():
    for frames, window, overlap, per_batch in ranks.SAMPLER_CASES:
        latents = torch.randn(1, frames, 2, 3, 3, generator=torch.Generator().manual_seed(frames))
        plan = plan_windows(frames, window, overlap)
        plain = sample_windows(ranks.fake_denoiser(), latents, ranks.euler_scheduler(3), plan, windows_per_batch=per_batch)
        for off in (StochasticOptions(), StochasticOptions(corrector_snr=0.3, s_tmin=1.0, s_tmax=5.0, s_noise=1.1)):
            assert torch.equal(plain, sample_windows(ranks.fake_denoiser(), latents, ranks.euler_scheduler(3), plan,
                                                     windows_per_batch=per_batch, stochastic=off,
                                                     noise=FrameNoise(0, tuple(range(frames)))))
    assert not StochasticOptions().active and StochasticOptions(s_churn=0.5).active


@pytest.mark.parametrize("svd", [True, False], ids=["svd-continuous-v", "discrete-epsilon"])
def test_parameterization_agrees_with_the_scheduler(svd, svd_scheduler_config):
    config = svd_scheduler_config if svd else dict(use_karras_sigmas=True)
    scheduler = scheduler_for(config, 6)
    param = SigmaParameterization.of(scheduler)
    assert param.continuous == svd
    for sigma, t in zip(scheduler.sigmas[:-1].tolist(), scheduler.timesteps.tolist(), strict=True):
        assert param.timestep(sigma) == pytest.approx(t, rel=1e-4, abs=1e-3)
        assert param.sigma(t) == pytest.approx(sigma, rel=1e-3)
    x, d = torch.randn(2, 1, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    for sigma in (0.01, 1.0, 300.0):
        assert torch.allclose(param.denoised(param.model_output(d, x, sigma), x, sigma), d, atol=1e-4)
    # the denoised estimate is the scheduler's own: one Euler step from it equals scheduler.step
    t = scheduler.timesteps[0]
    output = torch.randn(1, 3, 4, 2, generator=torch.Generator().manual_seed(1))
    sigma, sigma_next = scheduler.sigmas[:2].tolist()
    ours = x + (x - param.denoised(output, x, sigma)) * ((sigma_next - sigma) / sigma)
    scheduler.scale_model_input(x, t)
    assert torch.allclose(ours, scheduler.step(output, t, x, return_dict=False)[0], rtol=1e-5, atol=1e-4)


def test_the_explicit_loop_with_a_corrector_of_size_zero_is_the_deterministic_sampler(svd_scheduler_config):
    """snr 0 makes every Langevin step a no-op: the k-diffusion-style loop the corrector runs in
    then matches the scheduler-stepped one (up to rounding), windows and fusion included."""
    toy = GaussianFrames.random(FRAME, seed=0, min_variance=0.25)
    plan = plan_windows(40, 8, 3)
    plain = toy_sample(toy, svd_scheduler_config, 4, plan)
    explicit = toy_sample(toy, svd_scheduler_config, 4, plan, corrector_steps=1, corrector_snr=0.0)
    assert torch.allclose(plain, explicit, rtol=1e-4, atol=1e-4)


def test_a_schedule_ending_above_zero_is_corrected_at_its_last_sigma_too():
    scheduler = EulerDiscreteScheduler(final_sigmas_type="sigma_min")
    scheduler.set_timesteps(3)
    options = StochasticOptions(corrector_steps=2)
    assert scheduler.sigmas[-1] > 0 and options.model_evaluations(scheduler.sigmas) == 3 + 2 * 3
    calls = []

    def denoise(scaled, t, windows):
        calls.append(float(t))
        return [torch.sin(scaled[:, w.start : w.stop]) for w in windows]

    out = sample_windows(denoise, torch.randn(1, 4, 2, 3, 3, generator=torch.Generator().manual_seed(0)), scheduler,
                         plan_windows(4, 4, 1), stochastic=options, noise=FrameNoise(0, (0, 1, 2, 3)))
    assert len(calls) == 9 and torch.isfinite(out).all()
    assert calls[-1] == pytest.approx(SigmaParameterization.of(scheduler).timestep(float(scheduler.sigmas[-1])))


def test_bad_options_are_named():
    for bad, name in ((dict(corrector_steps=-1), "corrector_steps"), (dict(corrector_snr=-0.1), "corrector_snr"),
                      (dict(s_churn=math.nan), "s_churn"), (dict(s_tmax=-1.0), "s_tmax")):
        with pytest.raises(ValueError, match=name):
            StochasticOptions(**bad)
    with pytest.raises(ValueError, match="noise"):
        sample_windows(ranks.fake_denoiser(), torch.zeros(1, 4, 2, 3, 3), ranks.euler_scheduler(2), plan_windows(4, 4, 1),
                       stochastic=StochasticOptions(corrector_steps=1))


def test_cost_is_one_evaluation_per_step_plus_the_corrector(svd_scheduler_config):
    sigmas = scheduler_for(svd_scheduler_config, 25).sigmas
    assert StochasticOptions().model_evaluations(sigmas) == 25 == corrector_cost(25, 0)
    assert StochasticOptions(corrector_steps=2, s_churn=1.0).model_evaluations(sigmas) == 25 + 2 * 24
    assert corrector_cost(25, 2) == 73


# ------------------------------------------------------------------------------- the toy with an exact answer


def test_exact_sampling_has_a_small_error():
    toy = GaussianFrames.random(FRAME, seed=0, min_variance=0.25)
    frames = toy.mean + (torch.randn(4000, toy.mean.numel(), dtype=torch.float64) * toy.variances.sqrt()) @ toy.basis.T
    assert toy.errors(frames)["w2"] < 0.3
    assert gaussian_w2(toy.mean, toy.covariance, toy.mean, toy.covariance) == pytest.approx(0.0, abs=1e-6)
    assert gaussian_w2(toy.mean, toy.covariance, toy.mean + 3, toy.covariance) == pytest.approx(3 * 4.0, rel=1e-6)


def test_corrector_lowers_the_distribution_error_at_equal_steps_and_equal_evaluations(svd_scheduler_config):
    """384 frames (independent samples), windows of 16 overlapping by 4, the released
    scheduler at 4 steps: 4 Euler steps + 1 Langevin step at each of the 3 inner levels (7 model
    evaluations per window) beat plain Euler at 4 steps and at 7 steps."""
    toy = GaussianFrames.random(FRAME, seed=0, min_variance=0.25)
    plan = plan_windows(384, 16, 4)
    euler_4 = toy.errors(toy_sample(toy, svd_scheduler_config, 4, plan))["w2"]
    euler_7 = toy.errors(toy_sample(toy, svd_scheduler_config, 7, plan))["w2"]
    corrected = toy.errors(toy_sample(toy, svd_scheduler_config, 4, plan, corrector_steps=1))["w2"]
    assert StochasticOptions(corrector_steps=1).model_evaluations(scheduler_for(svd_scheduler_config, 4).sigmas) == 7
    assert corrected < 0.8 * euler_7 < euler_4, (corrected, euler_7, euler_4)


def test_the_mixtures_exact_denoiser_and_errors():
    toy = GaussianMixtureFrames.random(FRAME, seed=0)
    means = torch.stack([c.mean for c in toy.components])
    far = toy.denoised(torch.zeros(1, 1, *FRAME), 1e4).reshape(-1)  # all noise: the mixture's mean
    assert torch.allclose(far.double(), (toy.weights[:, None] * means).sum(0), atol=1e-3)
    near = toy.denoised(means[1].reshape(1, 1, *FRAME).float(), 1e-3).reshape(-1)  # no noise: the point itself
    assert torch.allclose(near.double(), means[1], atol=1e-4)
    exact = toy.errors(toy.sample(4000, seed=1))
    assert exact["weight_error"] < 0.02 and exact["w2"] < 0.5
    one_mode = toy.errors(toy.components[0].mean.expand(100, -1))  # every frame in the first mode
    assert one_mode["w2"] == float("inf") and one_mode["weight_error"] == pytest.approx(0.5)


def test_on_a_mixture_the_corrector_sharpens_each_mode_but_moves_no_frame_between_modes(svd_scheduler_config):
    """Three modes weighted 0.5/0.3/0.2, 1024 frames, 4 steps: the corrector's Langevin steps at
    fixed sigma lower the error inside each mode (as on one Gaussian) but, with modes far apart
    relative to the inner sigmas, leave the shares of the modes as 4 Euler steps made them; only
    more steps fix those (they are decided at the high noise levels)."""
    toy = GaussianMixtureFrames.random((4, 4, 4), seed=0)  # 64 numbers a frame: modes about 11 apart
    plan = plan_windows(1024, 16, 4)
    euler_4, euler_7, euler_25, corrected = (
        toy.errors(toy_sample(toy, svd_scheduler_config, steps, plan, corrector_steps=k))
        for steps, k in ((4, 0), (7, 0), (25, 0), (4, 1)))
    assert corrected["w2"] < 0.8 * euler_7["w2"] < euler_4["w2"], (corrected, euler_7, euler_4)
    assert abs(corrected["weight_error"] - euler_4["weight_error"]) < 0.03, (corrected, euler_4)
    assert euler_25["weight_error"] < 0.5 * euler_4["weight_error"], (euler_25, euler_4)


# ------------------------------------------------------------------------------- independence of the plan


def test_fresh_noise_depends_on_the_global_frame_step_and_sub_step_only():
    like = torch.zeros(1, 3, *FRAME)
    a = FrameNoise(7, (0, 5, 6)).draw(CORRECTOR_NOISE, 2, 1, like)
    b = FrameNoise(7, (6, 9, 5)).draw(CORRECTOR_NOISE, 2, 1, like)
    assert torch.equal(a[:, 1], b[:, 2]) and torch.equal(a[:, 2], b[:, 0])
    for other in (FrameNoise(7, (0, 5, 6)).draw(CORRECTOR_NOISE, 3, 1, like),
                  FrameNoise(7, (0, 5, 6)).draw(CORRECTOR_NOISE, 2, 0, like),
                  FrameNoise(8, (0, 5, 6)).draw(CORRECTOR_NOISE, 2, 1, like)):
        assert not torch.equal(a[:, 1], other[:, 1])


@pytest.mark.parametrize("options", [dict(corrector_steps=2), dict(s_churn=2.0, s_tmax=50.0),
                                     dict(corrector_steps=1, s_churn=1.0)], ids=["corrector", "churn", "both"])
def test_a_frame_gets_the_same_noise_in_one_segment_or_several(options, svd_scheduler_config):
    """The toy's exact denoiser treats each frame on its own, so a frame's result depends only on
    its initial and fresh noise: rendered in one segment or in several, with windows split
    differently, a frame must come out the same; with local frame indices it does not."""
    toy = GaussianFrames.random(FRAME, seed=0, min_variance=0.25)
    clip = 30
    whole = plan_segments(clip, clip, 0).segments[0]
    latents_of = {}
    for segments, window in ((plan_segments(clip, clip, 0), 8), (plan_segments(clip, 12, 4), 5)):
        for segment in segments.segments:
            indices = segment.noise_indices
            plan = plan_windows(len(indices), window, 2)
            initial = torch.cat([torch.randn(1, 1, *FRAME, generator=torch.Generator().manual_seed(100 + i)) for i in indices],
                                dim=1)
            scheduler = scheduler_for(svd_scheduler_config, 5)
            out = sample_windows(window_denoiser_of(toy.window_denoiser(), scheduler), initial * scheduler.init_noise_sigma,
                                 scheduler, plan, stochastic=StochasticOptions(**options), noise=FrameNoise(3, indices))
            for j, index in enumerate(indices):
                latents_of.setdefault(index, []).append(out[0, j])
            if segment.start > 0:  # the same segment with indices local to it: other noise, other frames
                local = sample_windows(window_denoiser_of(toy.window_denoiser(), scheduler_for(svd_scheduler_config, 5)),
                                       initial * scheduler.init_noise_sigma, scheduler_for(svd_scheduler_config, 5),
                                       plan, stochastic=StochasticOptions(**options),
                                       noise=FrameNoise(3, tuple(range(len(indices)))))
                assert not torch.allclose(local[0, 1:], out[0, 1:], atol=1e-3)
    assert sorted(latents_of) == list(whole.noise_indices)
    for index, versions in latents_of.items():
        assert len(versions) >= 2
        for version in versions[1:]:
            assert torch.allclose(version, versions[0], rtol=1e-5, atol=1e-5), index


# ------------------------------------------------------------------------------- the pipeline


def test_pipeline_corrector_and_churn(tiny_pipe):
    """On: other latents than the default call's, the same on a second call (the noise seed is the
    generator's), and the cost reported. (Off, the sampler is the deterministic one: tested above
    on the sampler, and by the parity tests on the pipeline.)"""
    n, h, w = 4, 32, 32
    ref, poses = random_inputs(n, h, w)
    args = dict(num_inference_steps=2, window_size=3, overlap=1, output_type="latent")

    def call(**options):
        return tiny_pipe(ref, poses, latents=initial_latents(tiny_pipe, n, h, w),
                         generator=torch.Generator().manual_seed(0), **args, **options)

    default = call()
    assert tiny_pipe.model_evaluations == 2 and tiny_pipe.model_evaluations_per_step == 1.0
    corrected = call(corrector_steps=1, s_churn=1.0)
    assert tiny_pipe.model_evaluations == 2 + 1 and tiny_pipe.model_evaluations_per_step == 1.5
    assert torch.isfinite(corrected).all() and not torch.allclose(corrected, default)
    assert torch.equal(call(corrector_steps=1, s_churn=1.0, noise_seed=0), corrected)
    with pytest.raises(ValueError, match="frame_indices"):
        call(corrector_steps=1, frame_indices=(0, 1, 2))
    with pytest.raises(ValueError, match="corrector_steps"):
        call(corrector_steps=-1)
    with pytest.raises(ValueError, match="noise_seed"):
        call(s_churn=1.0, noise_seed=-3)


def test_render_segment_keys_the_fresh_noise_by_seed_and_global_frame_indices():
    """A later segment's pipeline frames are keyed by their clip-global indices (the reference pose
    frame by 0), with the request's seed, as its initial noise is."""
    from controlnext_video.segments import render_segment

    calls = []

    class SpyPipe:
        def latent_shape(self, n, height, width):
            return (1, n, 4, height // 8, width // 8)

        def __call__(self, reference, poses, **kwargs):
            calls.append(kwargs)
            return kwargs["latents"]

        def decode_latents(self, latents, chunk, process_group=None):
            yield torch.zeros(latents.shape[1], 16, 16, 3).numpy()

    segment = plan_segments(30, 12, 4).segments[1]
    poses = [torch.zeros(16, 16, 3, dtype=torch.uint8).numpy()] * (segment.length + 1)
    frames = list(render_segment(SpyPipe(), poses[0], poses, segment, seed=9, decode_chunk_size=4, corrector_steps=1))
    assert [index for index, _ in frames] == list(range(segment.start, segment.stop))
    (kwargs,) = calls
    assert kwargs["noise_seed"] == 9 and kwargs["corrector_steps"] == 1
    assert tuple(kwargs["frame_indices"]) == segment.noise_indices == (0, *range(segment.start + 1, segment.stop + 1))
