"""The stages of a fine-tuning run as plain functions (the `finetune` flow's tasks wrap them): glue
between the artifact store, the render path's pose code and `controlnext_video.training`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from storage import ArtifactStore
from storage.layout import cache_key, safe_name
from storage.store import sha256_file
from storage.transfer import deliver, fetch, list_files, local_copy

from .settings import Environment

# Steps between two refreshes of the loss-curve image.
CURVE_EVERY = 10
# Denoising steps of a validation render (it shows learning, not final quality).
VALIDATION_STEPS = 4


def prepare_clips(request) -> list[dict]:
    """Copy every clip into the store (content-addressed), probe it, and detect its poses at every
    frame with the render path's code and detection cache; return a record per clip."""
    from pose import openpose_json
    from pose.conditions import FRAME_CONDITIONS, ConditionSettings, condition_digest, iter_clip_maps
    from pose.pipeline import detect_driving
    from storage.chunks import ChunkedFrames, ChunkedFramesWriter

    from controlnext_video.video import probe

    from .finetune import VIDEO_SUFFIXES

    store, scratch = ArtifactStore(request.store), Environment.read().scratch("finetune-clips")
    settings = request.pose_settings()
    settings.check_model_files()
    records = []
    for name, url in list_files(request.clips, VIDEO_SUFFIXES):
        local = fetch(url, scratch, f"training clip {name}")
        digest = sha256_file(local)
        key = cache_key("clips", digest, safe_name(name))
        if not store.exists(key):
            store.put_file(local, key)
        info = probe(local)
        detections = cache_key("poses", settings.detection_digest(digest, stride=1, max_frames=None), "detected.json")
        if not store.exists(detections):
            detected = detect_driving(local, settings, stride=1, max_frames=None)
            path = scratch / f"{digest}.json"
            openpose_json.write_sequence(detected, path)
            store.put_file(path, detections)
        conditions = {}
        for condition in (c for c in request.conditions if c in FRAME_CONDITIONS):
            maps_key = cache_key("conditions", condition_digest(
                digest, condition, ConditionSettings(), height=info.height, width=info.width, stride=1,
                max_frames=None), condition)
            if not ChunkedFrames.exists(store, maps_key):  # streamed, written in chunks: any clip length
                with ChunkedFramesWriter(store, maps_key) as maps:
                    for _, condition_map in iter_clip_maps(local, condition, height=info.height, width=info.width,
                                                           stride=1, max_frames=None):
                        maps.append(condition_map)
            conditions[condition] = maps_key
        records.append(dict(name=name, sha256=digest, key=key, detections=detections, frames=info.frame_count,
                            conditions=conditions))
    if not records:
        raise ValueError(f"no video clips ({', '.join(VIDEO_SUFFIXES)}) under {request.clips}")
    return records


def training_clip(store: ArtifactStore, record: dict, settings, scratch: Path,
                  conditions: tuple[str, ...] = ("pose",), condition_types: tuple[str, ...] | None = None):
    """A `VideoClip` of a prepared clip: its frames streamed from the file, its control pictures
    (smoothed poses drawn by the render path's renderer, edges, masks), its hands' boxes for the
    loss weights.

    `condition_types` None: a single-condition module, the one picture of `conditions[0]`;
    otherwise a multi-condition module's types, the pictures stacked in that order, black for
    the types not in `conditions` (as the render path gives them)."""
    from pose import openpose_json
    from pose.conditions import FRAME_CONDITION_TYPES
    from pose.render import render_pose
    from pose.smooth import fill_gaps, smooth_sequence
    from storage.chunks import ChunkedFrames

    from controlnext_video.training import HandBox, VideoClip

    poses = fill_gaps(openpose_json.read_sequence(local_copy(store, record["detections"], scratch)), settings.max_gap)
    if settings.smoothing is not None:
        poses = smooth_sequence(poses, settings.smoothing)
    hands = [[box for box in (HandBox.from_keypoints(f.left_hand), HandBox.from_keypoints(f.right_hand)) if box]
             for f in poses.frames]
    # a chunk at a time, from a local copy of each chunk (training reads them again and again)
    maps = {name: ChunkedFrames(store, key, cache_chunks=4, read=lambda k: local_copy(store, k, scratch).read_bytes())
            for name, key in record.get("conditions", {}).items()}

    def picture(name: str, i: int) -> np.ndarray:
        if name == "pose":
            return render_pose(poses[i], poses.height, poses.width)
        return FRAME_CONDITION_TYPES[name].render(maps[name][i])

    if condition_types is None and len(conditions) != 1:
        raise ValueError(f"conditions {list(conditions)}: the model's control module takes one condition")
    black = np.zeros((poses.height, poses.width, 3), np.uint8)

    def pictures(i: int) -> np.ndarray:
        if condition_types is None:
            return picture(conditions[0], i)
        return np.concatenate([picture(name, i) if name in conditions else black for name in condition_types], axis=2)

    return VideoClip(local_copy(store, record["key"], scratch), render_pose=pictures, hands=hands)


class RunMonitor:
    """Progress, the loss curve and validation renders of a run, as the steps go."""

    def __init__(self, store: ArtifactStore, prefix: str, request, pipe, validation, reporter, log) -> None:
        self.store, self.prefix, self.request, self.pipe = store, prefix, request, pipe
        self.validation, self.reporter, self.log = validation, reporter, log
        self.losses: list[float] = []

    def on_step(self, report) -> None:
        self.losses.append(report.loss)
        self.reporter.update(report.step / report.total_steps,
                             f"step {report.step}/{report.total_steps}: loss {report.loss:.4f}")
        if report.step % CURVE_EVERY == 0 or report.step == report.total_steps:
            self.write_curve()
        every = self.request.validation_every
        if every and report.step % every == 0 and report.step != report.total_steps:
            self.validate(report.step)

    def write_curve(self, losses=None) -> str:
        from controlnext_video.training.monitor import loss_curve_png

        key = f"{self.prefix}/loss.png"
        self.store.write_bytes(key, loss_curve_png(losses if losses is not None else self.losses))
        return key

    def validate(self, step: int) -> str:
        from controlnext_video.training.monitor import validation_frames
        from controlnext_video.video import write_video

        frames, poses = self.validation
        pairs = validation_frames(self.pipe, frames, poses, steps=VALIDATION_STEPS, seed=self.request.seed)
        path = Environment.read().scratch("finetune-validation") / f"step-{step:07d}.mp4"
        write_video(path, iter(pairs), 8)
        key = f"{self.prefix}/validation/{path.name}"
        self.store.put_file(path, key)
        self.log(f"validation at step {step}: {self.store.url(key)} (ground truth | render)")
        return key


def train_and_export(request, run_id: str, clips: list[dict], reporter, log: Callable[[str], None], *,
                     device: str | None = None, main_process: bool = True) -> dict | None:
    """Train (resuming the run's latest checkpoint), then write the model directory and deliver it.

    One of several training processes (`flows.finetune_ranks`) passes its own `device`; all but
    the main one return None once training ends (the main one reports, validates and exports)."""
    import torch

    from controlnext_video import ControlNeXtSVDPipeline
    from controlnext_video.placement import resolve_device
    from controlnext_video.training import export_model, train, training_card
    from controlnext_video.training.monitor import validation_example

    from .finetune import run_prefix

    store, prefix = ArtifactStore(request.store), run_prefix(run_id)
    scratch = Environment.read().scratch("finetune", run_id)
    device = device or resolve_device(request.device)
    config = request.training_config(device)
    pipe = ControlNeXtSVDPipeline.from_pretrained(request.model, torch_dtype=torch.float32, device=device)
    condition_types = getattr(pipe.controlnext.config, "condition_types", None)
    condition_types = None if condition_types is None else tuple(condition_types)
    if condition_types is not None and not set(request.conditions) <= set(condition_types):
        raise ValueError(f"conditions {request.conditions}: the model's control module takes {list(condition_types)}")
    sources = [training_clip(store, record, request.pose_settings(), scratch, tuple(request.conditions),
                             condition_types) for record in clips]
    # only the main process validates (the others' `on_step` is never called)
    validation = validation_example(sources[0], request.sample_n_frames, request.height,
                                    request.width) if main_process else None
    monitor = RunMonitor(store, prefix, request, pipe, validation, reporter, log)
    result = train(pipe, sources, config, store=store, prefix=f"{prefix}/checkpoints", progress=monitor.on_step)
    if not main_process:
        return None
    if result.resumed_from:
        log(f"resumed from step {result.resumed_from}")
    curve = monitor.write_curve(result.losses)
    validation_key = monitor.validate(result.steps)
    card = training_card(config, result, base_model=request.model, data={c["name"]: c["sha256"] for c in clips})
    model_key = export_model(pipe, request.model, store, f"{prefix}/model", card=card)
    delivered = deliver(store, model_key, request.out) if request.out else None
    return dict(model_key=model_key, delivered=delivered, steps=result.steps, final_loss=result.final_loss,
                trainable_parameters=result.trainable_parameters, loss_curve=curve, validation=validation_key,
                resumed_from=result.resumed_from, processes=result.processes)
