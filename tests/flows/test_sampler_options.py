"""The sampler's stochastic options in the request: pixel settings, passed to the pipeline by
name, stated with their cost in the job report (plain functions, no Prefect server)."""

from __future__ import annotations

import inspect
import json

from flows.report import sampler_text
from flows.request import CHURN_FIELDS, CHURN_TMAX, CORRECTOR_FIELDS, CORRECTOR_SNR, RenderRequest

INPUTS = dict(reference="ref.png", driving="clip.mp4", model="models/m", store="/tmp/store")


def test_sampler_options_are_pixel_settings_that_count_only_when_on():
    base = RenderRequest(**INPUTS)
    for field in CORRECTOR_FIELDS + CHURN_FIELDS:
        assert field not in RenderRequest.NON_PIXEL_FIELDS
        assert field not in base.pixel_settings()  # off: the identity of before
    assert base.sampler_settings() == {}
    assert RenderRequest(**INPUTS, corrector_snr=0.3).pixel_settings() == base.pixel_settings()  # no corrector steps
    corrected = RenderRequest(**INPUTS, corrector_steps=1)
    assert corrected.sampler_settings() == dict(corrector_steps=1, corrector_snr=CORRECTOR_SNR)
    assert corrected.pixel_settings() != base.pixel_settings()
    assert RenderRequest(**INPUTS, corrector_steps=1, corrector_snr=0.3).pixel_settings() != corrected.pixel_settings()
    churned = RenderRequest(**INPUTS, s_churn=1.0, s_tmin=0.5)
    assert churned.sampler_settings() == dict(s_churn=1.0, s_tmin=0.5, s_tmax=CHURN_TMAX, s_noise=1.0)


def test_sampler_settings_are_pipeline_arguments_with_the_library_defaults(shared_dir):
    from controlnext_video.pipeline import ControlNeXtSVDPipeline
    from controlnext_video.sampler import DEFAULT_CORRECTOR_SNR

    parameters = inspect.signature(ControlNeXtSVDPipeline.__call__).parameters
    request = RenderRequest(**INPUTS, corrector_steps=2, s_churn=1.0)
    assert set(request.sampler_settings()) <= set(parameters)
    assert CORRECTOR_SNR == DEFAULT_CORRECTOR_SNR == parameters["corrector_snr"].default
    config = json.loads((shared_dir / "fixtures" / "controlnext-svd-tiny" / "scheduler" / "scheduler_config.json").read_text())
    assert CHURN_TMAX > config["sigma_max"]  # the default upper bound bounds nothing


def test_the_report_states_the_sampler_and_its_cost():
    assert sampler_text(RenderRequest(**INPUTS)) == (
        "Sampler: Euler, 25 steps, no corrector, no churn: 25 model evaluations per window (1 per step; plain Euler 1).")
    text = sampler_text(RenderRequest(**INPUTS, steps=10, corrector_steps=2, corrector_snr=0.2, s_churn=1.5))
    assert text == ("Sampler: Euler, 10 steps, Langevin corrector 2 steps per level (snr 0.2), churn 1.5 for sigma in "
                    "[0, 1000], noise 1: 28 model evaluations per window (2.8 per step; plain Euler 1).")
