"""One source of truth for the options: every request field is a `render` option, the `poses`
command takes the pose fields, and both give the same poses (plain functions, no Prefect server)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.request import RenderRequest

from .conftest import small_request

# A value other than the default for every field of the request.
NON_DEFAULT = dict(
    reference="ref.png", driving="clip.mp4", model="models/other", store="s3://bucket/renders", output="out.mov",
    job_id="shot-7", height=512, width=320, steps=12, guidance_min=2.0, guidance_max=3.5, control_scale=0.8,
    window=16, overlap=4, decode_chunk_size=4, seed=42, stride=1, max_frames=100, pose_backend="dwpose",
    dwpose_models="models/dwpose", align="retarget", root_motion="frame", smooth=False, max_gap=2,
    segment_length=48, segment_overlap=6, dispatch="deployment", segment_deployment="render-segment/other",
    priority="rush", max_in_flight=3, segments_per_run=2, max_attempts=5, output_format="prores", crf=20,
    audio=False, device="cuda:1", dtype="float16", compile=True, channels_last=True, gpu_memory_gib=22.0,
    gpus_per_segment=4, rank_timeout=30.0, corrector_steps=2, corrector_snr=0.3, s_churn=1.5, s_tmin=0.05,
    s_tmax=50.0, s_noise=1.003, conditions=["pose", "edges"],
)


def cli_args(values: dict) -> list[str]:
    args = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):  # a repeated option
            args += [part for item in value for part in (flag, str(item))]
        else:
            args += [flag, str(value)]
    return args


def test_every_request_field_is_a_render_option(monkeypatch):
    from flows import cli

    assert set(NON_DEFAULT) == set(RenderRequest.model_fields)  # a new field needs a value here
    captured = []

    def run(request):
        captured.append(request)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "_run_render", run)
    result = CliRunner().invoke(cli.app, ["render", *cli_args(NON_DEFAULT)])
    assert result.exit_code == 0, result.output
    assert captured == [RenderRequest(**NON_DEFAULT)]
    # the request's validation is the CLI's: cross-field rules and bounds
    result = CliRunner().invoke(cli.app, ["render", "--reference", "r.png", "--driving", "d.mp4", "--overlap", "30"])
    assert result.exit_code == 2 and "overlap (30) must be smaller than window (24)" in result.output
    result = CliRunner().invoke(cli.app, ["render", "--reference", "r.png", "--driving", "d.mp4", "--height", "100"])
    assert result.exit_code == 2 and "--height: Input should be a multiple of 8" in result.output
    options = render_options()
    for field, info in RenderRequest.model_fields.items():
        assert "--" + field.replace("_", "-") in options[field].opts, field
        assert info.description in options[field].help, field
    assert "--format" in options["output_format"].opts and "guidance" in options


def test_poses_command_and_render_give_identical_pose_files(tiny_model, clip_inputs, tmp_path):
    from flows import stages
    from flows.cli import app

    reference, driving = clip_inputs
    settings = dict(max_gap=1, smooth=False, root_motion="frame", stride=2, max_frames=20, height=96, width=64)
    out = tmp_path / "poses"
    result = CliRunner().invoke(app, ["poses", "--driving", str(driving), "--reference", str(reference),
                                      "--out", str(out), "--no-preview", *cli_args(settings)])
    assert result.exit_code == 0, result.output

    request = small_request(reference, driving, tiny_model, tmp_path / "store", **settings)
    ingest = stages.ingest(request)
    job = stages.JobContext.open(request.store, ingest.job_id)
    stages.align(job, stages.detect_poses(job, ingest, lambda done, total: None))
    for name, key in (("aligned_poses.json", job.layout.aligned_poses),
                      ("driving_poses.json", job.layout.driving_poses),
                      ("reference_pose.json", job.layout.reference_pose)):
        assert job.store.read_bytes(key) == (out / name).read_bytes(), name
    # other settings, other poses: the settings do reach both paths
    again = CliRunner().invoke(app, ["poses", "--driving", str(driving), "--reference", str(reference),
                                     "--out", str(tmp_path / "smooth"), "--no-preview",
                                     *cli_args(dict(settings, smooth=True))])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "smooth" / "aligned_poses.json").read_bytes() != (out / "aligned_poses.json").read_bytes()


def render_options() -> dict:
    """The `render` command's click options by parameter name."""
    import typer

    from flows.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands["render"].params}


@pytest.mark.parametrize("field", ["pose_backend", "align", "root_motion", "output_format", "dispatch", "dtype"])
def test_choices_come_from_the_request(field):
    from flows.cli import app

    choices = RenderRequest.model_fields[field].annotation.__args__
    result = CliRunner().invoke(app, ["render", "--reference", "r.png", "--driving", "d.mp4",
                                      "--" + field.replace("_", "-"), "nonsense"])
    assert result.exit_code == 2 and all(repr(choice) in result.output for choice in choices), result.output


def test_overrides_may_name_any_field_even_model():
    from flows.options import request_from_options
    from flows.request import FinetuneRequest

    request = request_from_options({"steps": 3, "unknown": 1}, reference="r.png", driving="d.mp4", model="m")
    assert isinstance(request, RenderRequest) and (request.model, request.steps) == ("m", 3)
    tuned = request_from_options({}, FinetuneRequest, clips="c", model="m", steps=5)
    assert isinstance(tuned, FinetuneRequest) and (tuned.model, tuned.steps) == ("m", 5)
