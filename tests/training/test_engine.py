"""The training loop: exact resume after a kill, settings checks, what changes, the same update
however a step's batch is split."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from controlnext_video.training import BatchSettings, CheckpointError, TrainingConfig, train

from controlnext_video.training.synthetic import moving_disc_clip

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "tests" / "training" / "train_script.py"
DATA = BatchSettings(height=32, width=32, sample_n_frames=3, frame_interval=2)
# AdamW's first step is lr * g / (|g| + eps): for gradients near eps a rounding-level difference
# flips a whole step. A large eps makes the update proportional to the gradient, so comparing
# weights compares the accumulated gradients.
COMPARABLE_EPS = 1e-2


def run_script(settings: dict, *, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable]), str(SCRIPT), json.dumps(settings)]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.mark.heavy
def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL between checkpoints, run again: the weights equal an uninterrupted run's, bit for bit."""
    common = dict(store=str(tmp_path / "store"), steps=5, checkpoint_every=2)
    whole = run_script({**common, "prefix": "whole", "out": str(tmp_path / "whole.safetensors")})
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = run_script({**common, "prefix": "cut", "out": str(tmp_path / "cut.safetensors"), "kill_at": 3})
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut.safetensors").exists()
    resumed = run_script({**common, "prefix": "cut", "out": str(tmp_path / "cut.safetensors")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    record = json.loads((tmp_path / "cut.safetensors.json").read_text())
    assert record["resumed_from"] == 2
    assert record["losses"] == json.loads((tmp_path / "whole.safetensors.json").read_text())["losses"]
    expected, got = read_weights(tmp_path / "whole.safetensors"), read_weights(tmp_path / "cut.safetensors")
    assert expected.keys() == got.keys()
    changed = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not changed, changed[:5]


@pytest.mark.heavy
def test_two_processes_give_the_update_of_one(tmp_path):
    """Two gloo processes launched by accelerate, one example each, against one process with
    both examples: the same global batch, the same update."""
    common = dict(store=str(tmp_path / "store"), steps=2, batch_size=2, adam_epsilon=COMPARABLE_EPS)
    one = run_script({**common, "prefix": "one", "out": str(tmp_path / "one.safetensors")})
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port())]
    two = run_script({**common, "prefix": "two", "out": str(tmp_path / "two.safetensors")}, launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two.safetensors.json").read_text())["processes"] == 2
    expected, got = read_weights(tmp_path / "one.safetensors"), read_weights(tmp_path / "two.safetensors")
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= 1e-5


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def clips():
    return [moving_disc_clip(12, 48, 0), moving_disc_clip(12, 48, 1)]


def _config(**changes) -> TrainingConfig:
    settings = dict(steps=2, learning_rate=1e-3, warmup_steps=0, mixed_precision="no", gradient_checkpointing=False,
                    checkpoint_every=1, data=DATA)
    return TrainingConfig(**{**settings, **changes})


def _snapshot(pipe) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()}
    return state | {f"controlnext.{k}": v.clone() for k, v in pipe.controlnext.state_dict().items()}


@pytest.mark.parametrize("mode", ["none", "selective"])
def test_only_the_selected_parameters_change(tiny_pipe, clips, tmp_path, mode):
    from storage import ArtifactStore

    before = _snapshot(tiny_pipe)
    reports = []
    result = train(tiny_pipe, clips, _config(unet_training=mode), store=ArtifactStore(tmp_path), prefix="run",
                   progress=reports.append)
    after = _snapshot(tiny_pipe)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert {k for k in changed if k.startswith("controlnext.")} == {k for k in before if k.startswith("controlnext.")}
    unet_changed = {k for k in changed if k.startswith("unet.")}
    if mode == "none":
        assert not unet_changed
    else:
        assert unet_changed and all(".to_v." in k or ".to_out." in k for k in unet_changed)
    assert [r.step for r in reports] == [1, 2] and all(r.checkpoint for r in reports)
    assert len(result.losses) == 2 and result.trainable_parameters > 0
    # The pipeline comes back frozen and without hooks, ready to render.
    assert not any(p.requires_grad for p in tiny_pipe.unet.parameters())
    assert not tiny_pipe.unet.down_blocks[0]._forward_hooks


def test_finished_runs_return_and_other_settings_are_refused(tiny_pipe, clips, tmp_path):
    from storage import ArtifactStore

    store = ArtifactStore(tmp_path)
    first = train(tiny_pipe, clips, _config(), store=store, prefix="run")
    before = _snapshot(tiny_pipe)
    again = train(tiny_pipe, clips, _config(), store=store, prefix="run", progress=pytest.fail)
    assert again.resumed_from == 2 and again.losses == first.losses
    assert all(torch.equal(v, _snapshot(tiny_pipe)[k]) for k, v in before.items())
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(tiny_pipe, clips, _config(learning_rate=5e-4), store=store, prefix="run")
    longer = train(tiny_pipe, clips, _config(steps=3), store=store, prefix="run")  # more steps: allowed
    assert longer.resumed_from == 2 and len(longer.losses) == 3
    with pytest.raises(CheckpointError, match="past the run's last step"):
        train(tiny_pipe, clips, _config(steps=2), store=store, prefix="run")


def test_accumulation_gives_the_update_of_the_whole_batch(clips, tmp_path):
    """Batch 2 in one round and in two accumulation rounds: the same update (to float rounding)."""
    from controlnext_video.factory import build_tiny_pipeline
    from storage import ArtifactStore

    results = []
    for rounds in (1, 2):
        pipe = build_tiny_pipeline(seed=0)
        config = _config(steps=1, batch_size=2, gradient_accumulation_steps=rounds, adam_epsilon=COMPARABLE_EPS)
        train(pipe, clips, config,
              store=ArtifactStore(tmp_path / str(rounds)), prefix="run")
        results.append(_snapshot(pipe))
    worst = max((results[0][k] - results[1][k]).abs().max().item() for k in results[0])
    assert worst < 1e-7  # updates are about 1e-4


def test_gradient_checkpointing_gives_the_same_update(clips, tmp_path):
    from controlnext_video.factory import build_tiny_pipeline
    from storage import ArtifactStore

    runs = []
    for checkpointing in (False, True):
        pipe = build_tiny_pipeline(seed=0)
        train(pipe, clips, _config(steps=1, adam_epsilon=COMPARABLE_EPS, gradient_checkpointing=checkpointing),
              store=ArtifactStore(tmp_path / str(checkpointing)), prefix="run")
        runs.append(_snapshot(pipe))
    assert max((runs[0][k] - runs[1][k]).abs().max().item() for k in runs[0]) < 1e-7


@pytest.mark.heavy
def test_bf16_autocast_trains_close_to_float32(tmp_path):
    """bf16 autocast (in its own process: accelerate's precision is per process), bf16 encoders,
    float32 master weights: the first losses agree with float32's to bf16 precision."""
    losses = {}
    for precision in ("no", "bf16"):
        out = tmp_path / f"{precision}.safetensors"
        run = run_script(dict(store=str(tmp_path / "store"), prefix=precision, steps=2, mixed_precision=precision,
                              out=str(out)))
        assert run.returncode == 0, run.stderr[-3000:]
        losses[precision] = json.loads(out.with_suffix(".safetensors.json").read_text())["losses"]
        weights = read_weights(out)
        assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
    assert losses["bf16"] != losses["no"]  # bf16 did run (measured: 0.5258 vs 0.5189 at step 1)
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)


def test_settings_are_checked(tiny_pipe, clips, tmp_path):
    with pytest.raises(ValueError, match="multiple of gradient_accumulation_steps"):
        _config(batch_size=3, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="mixed_precision"):
        _config(mixed_precision="fp16")
    from storage import ArtifactStore

    tiny_pipe.unet.to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        train(tiny_pipe, clips, _config(), store=ArtifactStore(tmp_path), prefix="run")
