"""A tiny training run in its own process (for the resume and multi-process tests).

Usage: python tests/training/train_script.py '<json settings>'; writes the trained parameters
to settings["out"] (safetensors). With "kill_at", the process SIGKILLs itself right after that
step, as a preempted machine would stop.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch


def main(settings: dict) -> None:
    from safetensors.torch import save_file

    from controlnext_video.factory import build_tiny_pipeline
    from controlnext_video.training import BatchSettings, TrainingConfig, train
    from storage import ArtifactStore
    from controlnext_video.training.synthetic import moving_disc_clip

    torch.set_num_threads(1)  # the same arithmetic in every process
    pipe = build_tiny_pipeline(seed=0)
    clips = [moving_disc_clip(12, 48, 0), moving_disc_clip(12, 48, 1)]
    config = TrainingConfig(
        steps=settings["steps"], batch_size=settings.get("batch_size", 1),
        gradient_accumulation_steps=settings.get("accumulation", 1), learning_rate=1e-3, warmup_steps=2,
        adam_epsilon=settings.get("adam_epsilon", 1e-8),
        unet_training=settings.get("unet_training", "selective"),
        mixed_precision=settings.get("mixed_precision", "no"), gradient_checkpointing=False,
        checkpoint_every=settings.get("checkpoint_every", 2), seed=7,
        data=BatchSettings(height=32, width=32, sample_n_frames=3, frame_interval=2),
    )
    kill_at = settings.get("kill_at")

    def progress(report):
        if report.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    store = ArtifactStore(settings["store"])
    result = train(pipe, clips, config, store=store, prefix=settings["prefix"], progress=progress)
    state = {f"unet.{k}": v for k, v in pipe.unet.state_dict().items()}
    state |= {f"controlnext.{k}": v for k, v in pipe.controlnext.state_dict().items()}
    if int(os.environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, settings["out"])
        with open(settings["out"] + ".json", "w") as handle:
            record = {"losses": result.losses, "resumed_from": result.resumed_from, "processes": result.processes}
            json.dump(record, handle)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
