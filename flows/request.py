"""The requests of the flows (render, finetune): each one typed, validated parameter, shown as a
form in the Prefect UI.

The inputs are required (the form refuses to run without them); every other field has a valid
default (Prefect issue #16184: an invalid default silently resets a form) and a description; the
form stays flat, its fields in the order a person fills them in.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pose.conditions import DEFAULT_CONDITIONS, ConditionName, check_conditions

from .liveness import SEGMENT_DEPLOYMENT
from .settings import Environment

# Fields of earlier versions, dropped when a stored request is read back.
RETIRED_FIELDS = ("stale_after_seconds",)
# Longest cross-fade between segments: more than the longest segment the design plans (240 frames)
# is never useful, and the bound keeps the form's overlap rule short (see `form_schema`).
MAX_SEGMENT_OVERLAP = 240
# Fields where 0 means "planned automatically" (the form's cross-field rules leave 0 to the model).
AUTO_ZERO = frozenset({"segment_length"})
# Defaults of the sampler's stochastic options (`controlnext_video.sampler.StochasticOptions`); the
# churn's upper sigma bound is finite here (a form and JSON have no infinity) and above the released
# schedule's largest sigma (700), so it bounds nothing.
CORRECTOR_SNR = 0.16
CHURN_TMAX = 1000.0
CORRECTOR_FIELDS = ("corrector_steps", "corrector_snr")
CHURN_FIELDS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


def positioned(schema: dict) -> None:
    """Give every field of a request model's JSON schema its position, the declaration order: the
    Prefect UI form sorts fields by position (a field without one counts as 0)."""
    for position, field in enumerate(schema["properties"].values()):
        field["position"] = position


def render_form_schema(schema: dict) -> None:
    """The render request's form: positions, and the cross-field rules of `RenderRequest._check`,
    so the Prefect server refuses a request that breaks one before a run exists, naming the field.

    The rules sit under `dependentSchemas`, keyed on the field they constrain, so they apply when
    that field is given; a field left out counts with its default, as in the model.
    """
    positioned(schema)
    properties = schema["properties"]
    rules: dict[str, list[dict]] = {}
    for smaller, larger in (("overlap", "window"), ("segment_overlap", "segment_length")):
        rules.setdefault(smaller, []).extend(_smaller_than(properties, smaller, larger))
        at_least = {"minimum": properties[smaller]["default"] + 1}
        if larger in AUTO_ZERO:  # 0 (auto) plans a length the model checks on the worker
            at_least = {"anyOf": [{"const": 0}, at_least]}
        rules.setdefault(larger, []).append({"if": _absent(smaller), "then": {"properties": {larger: at_least}}})
    rules.setdefault("pose_backend", []).append(
        {"if": _given("pose_backend", {"const": "dwpose"}),
         "then": {"required": ["dwpose_models"], "properties": {"dwpose_models": {"minLength": 1}}}})
    rules.setdefault("root_motion", []).append(
        {"if": _given("align", {"enum": ["linear", "none"]}),
         "then": {"properties": {"root_motion": {"const": "body"}}}})
    schema["dependentSchemas"] = {field: {"allOf": clauses} for field, clauses in rules.items()}


def _given(field: str, condition: dict) -> dict:
    """A schema matching an object whose `field` is present and meets `condition` (unlike
    `{"properties": ...}`, which an object without the field also meets)."""
    return {"not": {"properties": {field: {"not": condition}}}}


def _absent(field: str) -> dict:
    """A schema matching an object without `field`."""
    return {"not": {"required": [field]}}


def _smaller_than(properties: dict, smaller: str, larger: str) -> list[dict]:
    """`smaller < larger` in JSON schema, which cannot compare two fields: for every value `v` the
    larger field can take up to the smaller's maximum, "larger == v implies smaller <= v - 1" (one
    clause applies, so one error names the field); and the larger's default when it is left out."""
    values = range(max(properties[larger]["minimum"], 1 if larger in AUTO_ZERO else 0),
                   properties[smaller]["maximum"] + 1)
    clauses = [{"if": _given(larger, {"const": v}), "then": {"properties": {smaller: {"maximum": v - 1}}}}
               for v in values]
    return clauses + [{"if": _absent(larger),
                       "then": {"properties": {smaller: {"maximum": properties[larger]["default"] - 1}}}}]


class RenderRequest(BaseModel):
    """A render: the reference image and the driving clip (required), where the result goes, the
    model, then the generation settings and, last, the advanced ones."""

    # The docstring is the UI form's heading. Fields are declared in the order a person fills them
    # in; `render_form_schema` gives the form that order and the cross-field rules.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=render_form_schema)

    # inputs and output
    reference: str = Field(min_length=1, description="Reference image (path or store URL, e.g. from "
                                                     "`controlnext-video upload`): the character to animate.")
    driving: str = Field(min_length=1, description="Driving video (path or store URL): the motion to perform.")
    output: str = Field("", description="Where to copy the final video (path or URL); empty: the job's output/ "
                                        "(the report links to it).")
    output_format: Literal["mp4", "prores", "png"] = Field(
        "mp4", description="H.264 MP4, ProRes 422 HQ MOV, or a PNG sequence.")
    audio: bool = Field(True, description="Carry the driving clip's audio into the output.")
    model: str = Field(default_factory=lambda: Environment.read().model_dir,
                       description="Model directory on the GPU workers (SVD layout + ControlNeXt files).")
    store: str = Field(default_factory=lambda: Environment.read().store,
                       description="Artifact store root: a local folder or an s3:// URL shared by all workers.")
    priority: Literal["rush", "default", "batch"] = Field("default", description="Work queue of the segment runs.")

    # generation
    height: int = Field(1024, ge=64, le=4096, multiple_of=8, description="Output height in pixels.")
    width: int = Field(576, ge=64, le=4096, multiple_of=8, description="Output width in pixels.")
    steps: int = Field(25, ge=1, le=200, description="Denoising steps.")
    guidance_min: float = Field(3.0, ge=0.0, le=20.0, description="Guidance at each window's first frame.")
    guidance_max: float = Field(3.0, ge=0.0, le=20.0, description="Guidance at each window's last frame.")
    control_scale: float = Field(1.0, ge=0.0, le=5.0, description="Strength of the pose control (1 = reference).")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Random seed: same request and seed, same video.")
    stride: int = Field(2, ge=1, le=16, description="Use every stride-th driving frame; output fps = source / stride.")
    max_frames: int = Field(0, ge=0, description="Render at most this many output frames (0: the whole clip).")

    conditions: list[ConditionName] = Field(
        default_factory=lambda: list(DEFAULT_CONDITIONS),
        description="What the motion is taken from: pose (skeletons on the reference body), edges (Canny edges "
                    "of the driving frames) and/or mask (the driver's person mask); edges and mask keep the "
                    "clip's framing. The model's control module must have been trained on them.")

    # poses
    pose_backend: Literal["mediapipe", "dwpose"] = Field("mediapipe", description="Pose detector.")
    dwpose_models: str = Field("", description="Folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (DWPose only).")
    align: Literal["retarget", "linear", "none"] = Field(
        "retarget", description="Fit of the driving poses to the reference body: per-bone retargeting (default), "
                                "the reference's whole-clip linear fit, or none.")
    root_motion: Literal["body", "frame", "none"] = Field(
        "body", description="retarget only: how far the body travels: as many body lengths as the driver (body), "
                            "the same fraction of the frame (frame), or in place (none).")
    smooth: bool = Field(True, description="Temporal smoothing of the poses (One Euro, zero lag).")
    max_gap: int = Field(4, ge=0, le=1000, description="Longest run of frames without a detected pose (in sampled "
                                                       "frames) that is interpolated; longer gaps stay empty.")

    # advanced: sampler (stochastic options, off by default: the reference sampler)
    corrector_steps: int = Field(
        0, ge=0, le=10,
        description="Langevin corrector steps after each denoising step (predictor-corrector sampling); each costs "
                    "one more model evaluation per window and step. 0: none (the reference sampler).")
    corrector_snr: float = Field(
        CORRECTOR_SNR, ge=0.0, le=1.0,
        description="The corrector's target signal-to-noise ratio: its step size is 2 (snr |z| / |score|)^2 per "
                    "frame (Song et al.).")
    s_churn: float = Field(
        0.0, ge=0.0, le=100.0,
        description="Karras churn: noise added before each step whose sigma is between s_tmin and s_tmax, raising sigma "
                    "by min(s_churn / steps, 0.414) of itself (no extra model evaluation). 0: none.")
    s_tmin: float = Field(0.0, ge=0.0, le=CHURN_TMAX, description="Smallest sigma at which churn applies.")
    s_tmax: float = Field(CHURN_TMAX, ge=0.0, le=CHURN_TMAX,
                          description="Largest sigma at which churn applies (the default bounds nothing).")
    s_noise: float = Field(1.0, ge=0.0, le=2.0, description="Scale of the churn's noise.")

    # advanced: windows and segments
    window: int = Field(24, ge=2, le=128, description="Frames per temporal window (the model was trained on 24).")
    overlap: int = Field(6, ge=1, le=127, description="Frames shared by neighbouring windows (smaller than window).")
    decode_chunk_size: int = Field(8, ge=1, le=128,
                                   description="Frames the VAE decodes together (more: smoother, more memory).")
    segment_length: int = Field(
        72, ge=0, le=2000,
        description="Frames per segment (one segment run each, on one GPU or fused over several). 0: auto, about "
                    "72 frames per GPU of gpus_per_segment (1 when that is 0), with a window count that divides "
                    "over the GPUs.")
    segment_overlap: int = Field(8, ge=0, le=MAX_SEGMENT_OVERLAP,
                                 description="Frames shared and cross-faded between segments (smaller than "
                                             "segment_length).")

    # advanced: dispatch
    dispatch: Literal["auto", "local", "deployment"] = Field(
        "auto", description="deployment: fan segments out to the GPU pool; local: render them in the job's own "
                            "process; auto: deployment when the job runs as a deployment (the UI, the inbox, "
                            "scripts), local otherwise (the command line).")
    segment_deployment: str = Field(SEGMENT_DEPLOYMENT, description="Deployment that renders a segment.")
    max_in_flight: int = Field(4, ge=1, le=256, description="Segment runs in flight at once.")
    segments_per_run: int = Field(
        0, ge=0, le=64,
        description="Segments one render-segment run renders in turn, loading the model once (a render farm's "
                    "chunk size). 0: auto, the job spread evenly over max_in_flight runs, at most 4 per run.")
    max_attempts: int = Field(3, ge=1, le=10, description="Tries per segment when a worker crashes or is lost.")
    gpus_per_segment: int = Field(
        0, ge=0, le=64,
        description="GPUs of the worker that render one segment together, fused at every denoising step (the "
                    "same pictures as one GPU, faster): at most this many of the worker's GPUs (worker --gpus). "
                    "0: all of them.")
    rank_timeout: float = Field(
        60.0, ge=5.0, le=3600.0,
        description="Seconds a GPU process of a multi-GPU segment run waits for the others at a denoising step "
                    "before the run fails (a dead or hung GPU process); its segments are then resubmitted. With "
                    "compile, the first step compiles on every GPU: allow for it.")
    job_id: str = Field("", pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                        description="Job identifier; empty: derived from the request's content (re-submitting "
                                    "the same request resumes the same job).")

    # advanced: encoding and workers
    crf: int = Field(18, ge=0, le=51, description="H.264 quality (lower is better).")
    device: str = Field("auto", description="Torch device on the workers: auto, cuda, cuda:N or cpu.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Compute precision: auto = bfloat16 on GPU, float32 on CPU.")
    compile: bool = Field(
        False, description="torch.compile the UNet blocks on the workers (GPU). The first run on a worker pays the "
                           "compilation; compiled kernels are cached on disk (TORCHINDUCTOR_CACHE_DIR) for later runs.")
    channels_last: bool = Field(False, description="Channels-last convolution weights on the workers (GPU).")
    gpu_memory_gib: float = Field(
        0.0, ge=0.0, le=1024.0,
        description="Cap on the GPU memory a worker uses, in GiB (0: the whole card). Windows per UNet call are "
                    "planned under it and the allocator enforces it: to share a card, or to keep a plan that fits "
                    "smaller cards.")

    @model_validator(mode="after")
    def _check(self) -> "RenderRequest":
        if self.overlap >= self.window:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than window ({self.window})")
        if self.segment_length == 1:
            raise ValueError("segment_length must be at least 2 (or 0: auto)")
        if self.segment_overlap >= self.planned_segment_length():
            raise ValueError(
                f"segment_overlap ({self.segment_overlap}) must be smaller than segment_length "
                f"({self.planned_segment_length()}{' planned automatically' if not self.segment_length else ''})"
            )
        if self.pose_backend == "dwpose" and not self.dwpose_models:
            raise ValueError("pose_backend 'dwpose' needs dwpose_models: a folder with yolox_l.onnx and dw-ll_ucoco_384.onnx")
        if self.align != "retarget" and self.root_motion != "body":
            raise ValueError(f"root_motion applies to align 'retarget' only, not {self.align!r}")
        check_conditions(self.conditions)
        return self

    def planned_segment_length(self) -> int:
        """`segment_length`, or (0) the automatic one for `gpus_per_segment` GPUs (1 when 0)."""
        from controlnext_video.windows import auto_segment_length

        if self.segment_length:
            return self.segment_length
        return auto_segment_length(self.window, self.overlap, self.gpus_per_segment or 1)

    @classmethod
    def from_stored(cls, data: dict) -> "RenderRequest":
        """A request read back from a job folder (fields of earlier versions dropped)."""
        return cls.model_validate({k: v for k, v in data.items() if k not in RETIRED_FIELDS})

    def pose_settings(self):
        """The request's `pose.settings.PoseSettings` (the same the `poses` command builds)."""
        from pose.settings import PoseSettings
        from pose.smooth import SmoothingConfig

        options = dict(max_gap=self.max_gap, smoothing=SmoothingConfig() if self.smooth else None,
                       align=self.align, root_motion=self.root_motion)
        if self.pose_backend == "dwpose":
            return PoseSettings.dwpose(self.dwpose_models, **options)
        return PoseSettings(**options)

    # Settings that do not change the pictures: where the job goes, how it is dispatched and run.
    NON_PIXEL_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "job_id", "output", "dispatch", "segment_deployment", "priority", "max_in_flight", "segments_per_run",
        "max_attempts", "store", "gpu_memory_gib", "compile", "channels_last", "gpus_per_segment", "rank_timeout",
    })

    def pixel_settings(self) -> dict:
        """The settings that decide the pictures (part of the job's identity); an automatic
        segment length counts as the length it plans. The corrector's settings count only with
        corrector steps, the churn's only with churn: off, they change nothing (and a request
        that leaves them off keeps the identity it had before they existed). The default
        conditions (pose alone) are left out too, for the same reason."""
        settings = self.model_dump(exclude={*self.NON_PIXEL_FIELDS, *CORRECTOR_FIELDS, *CHURN_FIELDS})
        settings = dict(settings, **self.sampler_settings(), segment_length=self.planned_segment_length())
        if tuple(self.conditions) == DEFAULT_CONDITIONS:
            del settings["conditions"]
        return settings

    def sampler_settings(self) -> dict:
        """The stochastic sampler options in force, as pipeline arguments (empty: the reference sampler)."""
        fields = (CORRECTOR_FIELDS if self.corrector_steps else ()) + (CHURN_FIELDS if self.s_churn else ())
        return {name: getattr(self, name) for name in fields}


class FinetuneRequest(BaseModel):
    """A fine-tuning run: clips, base model, what trains and how long; a form in the Prefect UI."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=positioned)

    clips: str = Field(min_length=1, description="Folder or store URL holding the training clips (videos of the character).")
    model: str = Field(default_factory=lambda: Environment.read().model_dir,
                       description="Base model directory (SVD layout + ControlNeXt files) on the GPU worker.")
    out: str = Field("", description="Where to copy the fine-tuned model directory (folder or URL); empty: the "
                                     "run's folder in the store only.")
    store: str = Field(default_factory=lambda: Environment.read().store,
                       description="Artifact store root: checkpoints, the model directory, monitoring images.")
    steps: int = Field(1000, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(1, ge=1, le=1024, description="Examples per optimizer step.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=1024, description="Rounds each step's batch is split into.")
    learning_rate: float = Field(1e-5, gt=0, le=1.0, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(500, ge=0, description="Learning-rate warm-up steps.")
    unet_training: Literal["none", "selective", "all"] = Field(
        "selective", description="UNet parameters that train besides the control module: none, a small selected "
                                 "part (attention value/output projections), or all.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 on a GPU, none on the CPU.")
    gradient_checkpointing: bool = Field(True, description="Recompute UNet activations in the backward pass (less "
                                                           "memory, more time).")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints (a rerun resumes from the last).")
    keep_checkpoints: int = Field(2, ge=1, le=100, description="Checkpoints kept.")
    validation_every: int = Field(0, ge=0, description="Steps between validation renders (0: at the end only).")
    height: int = Field(1024, ge=64, le=4096, multiple_of=8, description="Training height in pixels.")
    width: int = Field(576, ge=64, le=4096, multiple_of=8, description="Training width in pixels.")
    sample_n_frames: int = Field(14, ge=2, le=128, description="Frames per training example.")
    frame_interval: int = Field(3, ge=1, le=64, description="Frame interval inside a clip.")
    conditioning_dropout: float = Field(0.1, ge=0.0, le=1.0, description="Conditioning dropout probability.")
    conditions: list[ConditionName] = Field(
        default_factory=lambda: list(DEFAULT_CONDITIONS),
        description="What the control module learns to follow: pose, edges and/or mask (as render takes them; "
                    "several need a multi-condition model, control type controlnext-multi).")
    condition_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Several conditions: probability of blacking out each one in an example "
                                         "(at least one kept), so that any subset renders.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of every random draw of the run.")
    pose_backend: Literal["mediapipe", "dwpose"] = Field("mediapipe", description="Pose detector.")
    dwpose_models: str = Field("", description="Folder with yolox_l.onnx and dw-ll_ucoco_384.onnx (DWPose only).")
    smooth: bool = Field(True, description="Temporal smoothing of the poses (as render does).")
    max_gap: int = Field(4, ge=0, le=1000, description="Longest detection gap (frames) that is interpolated.")
    device: str = Field("auto", description="Torch device: auto, cuda, cuda:N or cpu.")
    processes: int = Field(
        1, ge=0, le=64, description="Processes training together (DDP through accelerate, the same update as one): "
                                    "on a GPU worker one per GPU, 0 = all the worker's GPUs (worker --gpus); on the "
                                    "CPU gloo processes. batch_size must be a multiple of processes x accumulation.")

    @model_validator(mode="after")
    def _check(self) -> "FinetuneRequest":
        check_conditions(self.conditions)
        if self.processes:  # 0 (the worker's GPUs) is checked when the count is known
            self.check_batch_split(self.processes)
        return self

    def check_batch_split(self, processes: int) -> None:
        """Every step's batch must split evenly over the processes and accumulation rounds."""
        if self.batch_size % (processes * self.gradient_accumulation_steps):
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of processes x "
                             f"gradient_accumulation_steps ({processes} x {self.gradient_accumulation_steps}): "
                             "each process takes an equal share of every step's batch")

    def pose_settings(self):
        from pose.settings import PoseSettings
        from pose.smooth import SmoothingConfig

        options = dict(max_gap=self.max_gap, smoothing=SmoothingConfig() if self.smooth else None)
        if self.pose_backend == "dwpose":
            return PoseSettings.dwpose(self.dwpose_models, **options)
        return PoseSettings(**options)

    def training_config(self, device: str):
        from controlnext_video.training import BatchSettings, TrainingConfig

        precision = self.mixed_precision if self.mixed_precision != "auto" else (
            "bf16" if device.startswith("cuda") else "no")
        return TrainingConfig(
            steps=self.steps, batch_size=self.batch_size, gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate, warmup_steps=self.warmup_steps, unet_training=self.unet_training,
            mixed_precision=precision, gradient_checkpointing=self.gradient_checkpointing,
            checkpoint_every=self.checkpoint_every, keep_checkpoints=self.keep_checkpoints, seed=self.seed,
            data=BatchSettings(height=self.height, width=self.width, sample_n_frames=self.sample_n_frames,
                               frame_interval=self.frame_interval, conditioning_dropout=self.conditioning_dropout,
                               condition_dropout=self.condition_dropout),
        )
