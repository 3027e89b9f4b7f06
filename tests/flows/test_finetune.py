"""The `finetune` flow end to end in-process (tiny model, the demo clip): train, monitor, resume,
export, and render with the result."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import small_request

pytestmark = pytest.mark.heavy

TINY = dict(steps=4, batch_size=1, learning_rate=1e-3, warmup_steps=1, height=64, width=64, sample_n_frames=3,
            frame_interval=2, checkpoint_every=2, validation_every=2, gradient_checkpointing=False, seed=3)
# Largest weight difference between a two-process run and a one-process run of the same global
# batch after 2 steps at learning rate 1e-3: the gradients' float32 sums run in another order, and
# AdamW's first steps (about lr * sign(g)) magnify that for near-zero gradients. Measured 1.03e-5,
# 1% of one step (`tests/training/test_engine.py` shows 1e-5 with a large epsilon, where the
# update is proportional to the gradient).
WEIGHT_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def finetuned(prefect_server, tiny_model, clip_inputs, tmp_path_factory):
    from flows.finetune import finetune
    from flows.request import FinetuneRequest

    _, driving = clip_inputs
    root = tmp_path_factory.mktemp("finetune")
    (root / "clips").mkdir()
    (root / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(root / "clips"), model=str(tiny_model), store=str(root / "store"),
                              out=str(root / "model"), **TINY)
    return request, finetune(request), root


def test_finetune_writes_a_model_directory_with_its_card(finetuned):
    from controlnext_video.model_dir import check_model_dir

    request, result, root = finetuned
    assert result["steps"] == 4 and result["resumed_from"] == 0 and np.isfinite(result["final_loss"])
    card = json.loads((root / "model" / "training.json").read_text())
    assert card["steps"] == 4 and len(card["losses"]) == 4 and list(card["data"]) == ["take-1.mp4"]
    assert card["trainable_parameters"] == result["trainable_parameters"] > 0
    check_model_dir(root / "model")  # a complete model directory


def test_monitoring_images_and_resume(finetuned, prefect_server):
    from PIL import Image

    from flows.finetune import finetune, run_prefix

    request, result, root = finetuned
    runs = root / "store" / run_prefix(result["run_id"])
    assert Image.open(runs / "loss.png").size == (640, 320)
    videos = sorted(p.name for p in (runs / "validation").iterdir())
    assert videos == ["step-0000002.mp4", "step-0000004.mp4"]
    again = finetune(request)  # the same request: the finished run is found, nothing trains again
    assert again["run_id"] == result["run_id"] and again["resumed_from"] == 4
    assert again["final_loss"] == result["final_loss"]


def test_the_finetuned_model_renders(finetuned, clip_inputs, tmp_path):
    from flows.render import render

    request, result, root = finetuned
    reference, driving = clip_inputs
    rendered = render(small_request(reference, driving, root / "model", tmp_path / "store", max_frames=8,
                                    output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8 and (tmp_path / "tuned.mp4").stat().st_size > 0


def test_loss_curve_and_validation_example():
    import io

    from PIL import Image

    from controlnext_video.training import moving_disc_clip
    from controlnext_video.training.monitor import loss_curve_png, validation_example

    image = Image.open(io.BytesIO(loss_curve_png([1.0, 0.8, 0.9, 0.5])))
    assert image.size == (640, 320) and image.format == "PNG"
    assert Image.open(io.BytesIO(loss_curve_png([]))).size == (640, 320)
    frames, poses = validation_example(moving_disc_clip(12, 48, 0), 5, 32, 64)
    assert frames.shape == poses.shape == (5, 32, 64, 3) and frames.dtype == np.uint8


def test_every_finetune_field_is_an_option():
    import typer

    from flows.cli import app
    from flows.request import FinetuneRequest

    params = {p.name: p for p in typer.main.get_command(app).commands["finetune"].params}
    for field in FinetuneRequest.model_fields:
        assert "--" + field.replace("_", "-") in params[field].opts, field


def test_a_controlnet_model_directory_finetunes_and_renders(prefect_server, clip_inputs, tmp_path):
    """The control design follows the model directory: a ControlNet base fine-tunes as a ControlNet
    branch, and the render flow renders with it, with no setting in either request."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.factory import save_tiny_model
    from flows.finetune import finetune
    from flows.render import render
    from flows.request import FinetuneRequest

    reference, driving = clip_inputs
    base = save_tiny_model(tmp_path / "base", seed=0, control_type="controlnet")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(tmp_path / "clips"), model=str(base), store=str(tmp_path / "store"),
                              out=str(tmp_path / "model"), **dict(TINY, steps=2, validation_every=0))
    result = finetune(request)
    assert np.isfinite(result["final_loss"])
    tuned = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "model")
    assert tuned.controlnext.control_type == "controlnet"
    rendered = render(small_request(reference, driving, tmp_path / "model", tmp_path / "render-store", max_frames=8,
                                    output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8 and (tmp_path / "tuned.mp4").stat().st_size > 0


def test_a_multi_condition_model_finetunes_on_pose_and_edges_with_dropout(prefect_server, clip_inputs, tmp_path):
    """The flow extracts the clips' edges (cached), stacks them with the poses in the module's order
    and trains with condition dropout; the result renders a request with both conditions."""
    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.factory import save_tiny_model
    from flows.finetune import finetune
    from flows.render import render
    from flows.request import FinetuneRequest

    reference, driving = clip_inputs
    base = save_tiny_model(tmp_path / "base", seed=0, control_type="controlnext-multi")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    request = FinetuneRequest(clips=str(tmp_path / "clips"), model=str(base), store=str(tmp_path / "store"),
                              out=str(tmp_path / "model"), conditions=["pose", "edges"], condition_dropout=0.5,
                              **dict(TINY, steps=2, validation_every=0))
    result = finetune(request)
    assert np.isfinite(result["final_loss"])
    assert list((tmp_path / "store" / "cache" / "conditions").rglob("edges/index.json"))
    tuned = ControlNeXtSVDPipeline.from_pretrained(tmp_path / "model")
    assert tuned.controlnext.control_type == "controlnext-multi"
    rendered = render(small_request(reference, driving, tmp_path / "model", tmp_path / "render-store", max_frames=8,
                                    conditions=["pose", "edges"], output=str(tmp_path / "tuned.mp4")))
    assert rendered["encoded"]["frames"] == 8


def test_two_training_processes_from_the_flow_give_the_update_of_one_and_resume_with_one(
        prefect_server, tiny_model, clip_inputs, tmp_path):
    """processes=2: the flow launches two gloo processes through accelerate; with the same global
    batch their run is the one-process run (losses and weights), process 0's progress reaches the
    run's artifact, and the run resumes from its checkpoint with one process."""
    import torch
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from controlnext_video import ControlNeXtSVDPipeline
    from flows.finetune import finetune
    from flows.request import FinetuneRequest

    _, driving = clip_inputs
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "take-1.mp4").write_bytes(driving.read_bytes())
    common = dict(TINY, steps=2, batch_size=2, validation_every=0, seed=11, clips=str(tmp_path / "clips"),
                  model=str(tiny_model))
    two = finetune(FinetuneRequest(store=str(tmp_path / "two"), out=str(tmp_path / "model-two"), processes=2, **common))
    assert two["processes"] == 2 and two["steps"] == 2
    with get_client(sync_client=True) as client:
        progress = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[f"{two['run_id']}-training"])))
    assert progress and max(a.data for a in progress) == 100.0 and "step 2/2" in progress[-1].description
    one = finetune(FinetuneRequest(store=str(tmp_path / "one"), out=str(tmp_path / "model-one"), processes=1, **common))
    assert one["run_id"] == two["run_id"] and one["processes"] == 1  # the process count is not part of the run
    cards = [json.loads((tmp_path / m / "training.json").read_text()) for m in ("model-one", "model-two")]
    assert cards[1]["processes"] == 2
    np.testing.assert_allclose(cards[1]["losses"], cards[0]["losses"], rtol=1e-5)
    pipes = [ControlNeXtSVDPipeline.from_pretrained(tmp_path / m) for m in ("model-one", "model-two")]
    states = [{**p.controlnext.state_dict(), **{f"unet.{k}": v for k, v in p.unet.state_dict().items()}} for p in pipes]
    worst = max((states[0][k] - states[1][k]).abs().max().item() for k in states[0])
    assert worst <= WEIGHT_TOLERANCE, worst
    assert any(not torch.equal(v, pipes[0].controlnext.state_dict()[k]) for k, v in
               ControlNeXtSVDPipeline.from_pretrained(tiny_model).controlnext.state_dict().items())  # it trained
    resumed = finetune(FinetuneRequest(store=str(tmp_path / "two"), out=str(tmp_path / "model-three"), processes=1,
                                       **dict(common, steps=3)))
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 3


def test_the_process_count_is_checked_against_the_batch_and_the_workers_gpus(monkeypatch):
    import controlnext_video.placement
    from flows.finetune_ranks import training_processes
    from flows.request import FinetuneRequest

    with pytest.raises(ValueError, match=r"multiple of processes x gradient_accumulation_steps \(2 x 1\)"):
        FinetuneRequest(clips="clips", processes=2, batch_size=3)
    assert training_processes(FinetuneRequest(clips="c", device="cpu", processes=0), ()) == (1, ())
    assert training_processes(FinetuneRequest(clips="c", device="cpu", processes=2, batch_size=2), ("0",)) == (2, ())
    monkeypatch.setattr(controlnext_video.placement, "resolve_device", lambda device: "cuda")
    gpus = ("2", "3", "5")
    assert training_processes(FinetuneRequest(clips="c", processes=0, batch_size=3), gpus) == (3, gpus)
    assert training_processes(FinetuneRequest(clips="c", processes=2, batch_size=2), gpus) == (2, ("2", "3"))
    with pytest.raises(ValueError, match=r"processes=4: this worker has 3 GPUs \(2,3,5\)"):
        training_processes(FinetuneRequest(clips="c", processes=4, batch_size=4), gpus)


def test_a_failing_training_process_is_named_and_the_run_fails(tiny_model, tmp_path):
    """A training process that fails (here: a clip record whose file is not in the store) ends the
    launch with an error naming the process and what it raised; no result is returned."""
    from flows.finetune_ranks import TrainingProcessesFailed, launch_training
    from flows.request import FinetuneRequest

    class Reporter:
        def update(self, fraction, text):
            raise AssertionError("no step was made")

    request = FinetuneRequest(clips=str(tmp_path), model=str(tiny_model), store=str(tmp_path / "store"), processes=2,
                              **dict(TINY, batch_size=2, validation_every=0))
    missing = dict(name="gone.mp4", sha256="0" * 64, key="cache/clips/" + "0" * 64 + "/gone.mp4",
                   detections="cache/poses/" + "0" * 64 + "/detected.json", frames=12, conditions={})
    lines = []
    with pytest.raises(TrainingProcessesFailed, match=r"process [01]: \w+: .*detected\.json") as failure:
        launch_training(request, "ft-0000000000000000", [missing], tmp_path / "scratch", 2, (), Reporter(),
                        lines.append)
    assert "run the request again to resume" in str(failure.value)
    assert lines == ["training with 2 processes on the CPU"]
