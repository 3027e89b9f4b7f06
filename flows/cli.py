"""The `controlnext-video` command: one entry point, typed subcommands.

Subcommands import their packages lazily so `--help` stays fast and a missing optional
extra fails with an install hint only for the command that needs it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from flows.liveness import DEFAULT_LOST_AFTER_SECONDS
from flows.localcluster import prefect_executable
from flows.options import request_from_options, request_parameters, with_request_options
from flows.request import FinetuneRequest, RenderRequest

app = typer.Typer(
    name="controlnext-video",
    help="Animate a reference image with the motion of a driving video (ControlNeXt-SVD).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Animate a reference image with the motion of a driving video (ControlNeXt-SVD)."""


def _param(name: str, annotation, option, default=...) -> inspect.Parameter:
    """A command option that is not a request field."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, option])


@app.command("download-weights")
def download_weights_command(
    out_dir: Annotated[Path, typer.Argument(help="Folder to create the model in.")],
    variant: Annotated[str, typer.Option(help="SVD component precision: fp16 or fp32.")] = "fp16",
    keep_bin: Annotated[
        bool, typer.Option("--keep-bin", help="Keep the released .bin pickles instead of converting to fp16 safetensors.")
    ] = False,
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hugging Face token (SVD is gated).")] = None,
) -> None:
    """Download SVD img2vid-XT 1.1 and the ControlNeXt-SVD v2 weights (needs internet)."""
    from controlnext_video.hub import DownloadError, download_weights

    try:
        download_weights(out_dir, variant=variant, to_safetensors=not keep_bin, token=token, log=typer.echo)
    except DownloadError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc


POSE_FIELDS = ("stride", "max_frames", "height", "width", "pose_backend", "dwpose_models", "align", "root_motion",
               "smooth", "max_gap")


@app.command("poses")
@with_request_options(POSE_FIELDS, extra=[
    _param("driving", Path, typer.Option("--driving", help="Driving video (the motion).")),
    _param("reference", Path, typer.Option("--reference", help="Reference image (the character).")),
    _param("out", Path, typer.Option("--out", help="Output folder for the pose JSON and the preview.")),
    _param("device", str, typer.Option(help="dwpose: auto (CUDA when available), cpu or cuda."), "auto"),
    _param("preview", bool, typer.Option(help="Write preview.mp4."), True),
    _param("preview_height", int, typer.Option(min=16, help="Height of each preview panel."), 512),
    _param("per_frame_json", bool, typer.Option(help="Also write one OpenPose file per aligned frame."), False),
])
def poses_command(**options) -> None:
    """Detect, smooth and align poses exactly as `render` does (the same settings give the same
    aligned poses); write OpenPose JSON and a side-by-side preview video."""
    from dataclasses import replace

    from pose.errors import PoseError
    from pose.preview import make_pose_preview

    request = request_from_options(options, reference=str(options["reference"]), driving=str(options["driving"]))
    try:
        result = make_pose_preview(
            options["driving"], options["reference"], options["out"],
            replace(request.pose_settings(), device=options["device"]),
            stride=request.stride, max_frames=request.max_frames or None, height=request.height, width=request.width,
            preview=options["preview"], preview_height=options["preview_height"],
            per_frame_json=options["per_frame_json"],
        )
    except PoseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"{result.frames} pose frames written to {result.out_dir}")
    for label, frames in (
        ("filled (interpolated)", result.filled_frames),
        ("missing (no pose, rendered black)", result.missing_frames),
        ("with several people (one followed)", result.multi_person_frames),
    ):
        if frames:
            shown = ", ".join(map(str, frames[:20])) + (" ..." if len(frames) > 20 else "")
            typer.echo(f"frames {label}: {shown}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    if result.preview is not None:
        typer.echo(f"preview: {result.preview}")


CONDITION_FIELDS = ("stride", "max_frames", "height", "width", "conditions")


@app.command("conditions")
@with_request_options(CONDITION_FIELDS, extra=[
    _param("driving", Path, typer.Option("--driving", help="Driving video (the motion).")),
    _param("reference", Path, typer.Option("--reference", help="Reference image (the character).")),
    _param("out", Path, typer.Option("--out", help="Output folder for the previews and maps.")),
    _param("maps_png", bool, typer.Option(help="Also write every map as a PNG under <out>/<condition>/."), False),
])
def conditions_command(**options) -> None:
    """Extract the edges and person masks of a driving clip exactly as `render` does (the same
    framing, extractors and settings): per condition a side-by-side preview video and the
    reference's map, to check before spending GPU time."""
    from pose.conditions import make_condition_preview
    from pose.errors import PoseError

    defaults = {} if options.get("conditions") else dict(conditions=["edges", "mask"])  # the frame conditions
    request = request_from_options(options, reference=str(options["reference"]), driving=str(options["driving"]),
                                   **defaults)
    try:
        result = make_condition_preview(
            options["driving"], options["reference"], options["out"], request.conditions, stride=request.stride,
            max_frames=request.max_frames or None, height=request.height, width=request.width,
            maps_png=options["maps_png"])
    except PoseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    typer.echo(f"{result.frames} frames of {', '.join(result.previews)} written to {result.out_dir}")
    for name, path in result.previews.items():
        typer.echo(f"{name} preview: {path}")


class _Bars:
    """Terminal progress bars for the job's progress reports (one bar per report key)."""

    def __init__(self) -> None:
        self.bars = {}

    def __call__(self, key: str, fraction: float, text: str) -> None:
        from tqdm import tqdm

        bar = self.bars.get(key)
        if bar is None:
            bar = self.bars[key] = tqdm(total=1000, desc=key.split("-", 2)[-1][:30], unit="", leave=False,
                                        bar_format="{desc:<30} {percentage:3.0f}%|{bar}| {postfix}")
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(text[:60], refresh=True)
        if fraction >= 1.0:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


# The embedded Prefect server's start-up limit (Prefect's default, 20 s, is too short for a busy machine).
EMBEDDED_SERVER_TIMEOUT_SECONDS = "120"


def _check_model(request) -> None:
    """Fail in seconds, before any server, pose or GPU work, when the model directory is unusable."""
    from controlnext_video.model_dir import check_model_dir
    from controlnext_video.weights import WeightsError

    try:
        check_model_dir(request.model)
    except (FileNotFoundError, WeightsError) as exc:
        typer.echo(f"error: model: {exc}", err=True)
        raise typer.Exit(code=2) from exc


def _run_render(request) -> dict:
    from flows.render import render

    _check_model(request)
    return _run_flow(render, request, "render")


def _run_flow(flow, request, what: str) -> dict:
    """Run a flow in this process with terminal progress bars; stop cleanly on Ctrl-C/SIGTERM."""
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EMBEDDED_SERVER_TIMEOUT_SECONDS)
    from flows.interrupt import RenderInterrupted, stop_on_signals
    from flows.progress import add_listener, remove_listener

    bars = _Bars()
    add_listener(bars)
    try:
        with stop_on_signals():
            state = flow(request, return_state=True)
    except KeyboardInterrupt as exc:
        bars.close()
        typer.echo(f"{what} stopped: finished work is kept; run the same command again to resume", err=True)
        raise typer.Exit(code=exc.exit_code if isinstance(exc, RenderInterrupted) else 130) from None
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        typer.echo("error: the embedded Prefect server did not start in time (a busy machine?). Set "
                   "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher (seconds; this command's default is "
                   f"{os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS']}), or point PREFECT_API_URL at "
                   "a running server (controlnext-video serve).", err=True)
        raise typer.Exit(code=1) from None
    finally:
        remove_listener(bars)
        bars.close()
    if not state.is_completed():
        typer.echo(f"error: the {what} {state.name.lower()}: {state.message}", err=True)
        raise typer.Exit(code=1)
    return state.result()


def _print_result(result: dict, store: str) -> None:
    from storage import ArtifactStore

    store_ = ArtifactStore(store)
    encoded = result["encoded"]
    typer.echo(f"job {result['job_id']}: {encoded['frames']} frames at {encoded['fps']} fps, "
               f"{encoded['duration']:.2f} s, audio: " + (f"{encoded['audio_seconds']:.2f} s" if encoded["audio_seconds"] is not None else "none"))
    typer.echo(f"  video:        {encoded.get('delivered') or store_.url(encoded['output_key'])}")
    typer.echo(f"  side by side: {store_.url(encoded['side_by_side'])}")
    typer.echo(f"  pose preview: {store_.url(result['pose_preview'])}")
    typer.echo(f"  report:       {store_.url(result['report'])}")


@app.command("render")
@with_request_options([f for f in RenderRequest.model_fields if f not in ("reference", "driving")],
                      extra=[*request_parameters(("reference", "driving"), required=("reference", "driving")),
                             _param("guidance", float | None, typer.Option(
                                 help="Guidance scale at both ends of the per-window ramp (sets --guidance-min "
                                      "and --guidance-max unless they are given)."), None)])
def render_command(**options) -> None:
    """Render a video: the reference performs the driving clip's motion (every option is a request field)."""
    guidance = options.pop("guidance")
    if guidance is not None:
        options["guidance_min"] = guidance if options["guidance_min"] is None else options["guidance_min"]
        options["guidance_max"] = guidance if options["guidance_max"] is None else options["guidance_max"]
    request = request_from_options(options)
    _print_result(_run_render(request), request.store)


TINY_MODEL_NOTE = (
    "NOTE: the demo uses a tiny model with random weights: its pictures are meaningless noise. It shows the\n"
    "whole job working (poses, segments, blending, exact frame rate, audio). For real results, download the\n"
    "weights on a machine with internet access (controlnext-video download-weights models/controlnext-svd) and\n"
    "run `controlnext-video render --model models/controlnext-svd ...` on a GPU."
)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the demo's model, inputs and outputs.")] = Path("demo-output"),
    finetune: Annotated[bool, typer.Option(
        help="Also fine-tune the tiny model on the demo clip (about a minute on a CPU), then render with it.")] = False,
) -> None:
    """Run the whole job on this machine with a tiny random model and sample inputs (no downloads)."""
    from controlnext_video.factory import save_tiny_model
    from flows.demo import DEMO_FINETUNE, DEMO_REQUEST, make_demo_inputs

    typer.echo(TINY_MODEL_NOTE + "\n")
    model = out / "tiny-model"
    if not (model / "model_index.json").is_file():
        typer.echo(f"building the tiny model in {model}")
        save_tiny_model(model)
    reference, driving = make_demo_inputs(out / "inputs")
    typer.echo(f"sample inputs: {reference} (astronaut photo), {driving} (moving photo with a tone track)")
    request = request_from_options({}, reference=str(reference), driving=str(driving), model=str(model),
                                   store=str(out / "store"), output=str(out / "demo.mp4"), **DEMO_REQUEST)
    _print_result(_run_render(request), request.store)
    if finetune:
        clips = out / "clips"
        clips.mkdir(exist_ok=True)
        (clips / driving.name).write_bytes(driving.read_bytes())
        tuned = _run_finetune(request_from_options(
            {}, FinetuneRequest, clips=str(clips), model=str(model), store=str(out / "store"),
            out=str(out / "finetuned-model"), **DEMO_FINETUNE))
        request = request.model_copy(update=dict(model=tuned["model"], output=str(out / "demo-finetuned.mp4")))
        _print_result(_run_render(request), request.store)
    typer.echo("\n" + TINY_MODEL_NOTE)


FINETUNE_REQUIRED = ("clips",)


@app.command("finetune")
@with_request_options(FinetuneRequest.model_fields, required=FINETUNE_REQUIRED, model=FinetuneRequest)
def finetune_command(**options) -> None:
    """Fine-tune the control module (and a selected part of the UNet) on a folder of clips; writes a
    model directory that `render --model` loads. Running it again resumes from the last checkpoint."""
    result = _run_finetune(request_from_options(options, FinetuneRequest))
    typer.echo(f"run {result['run_id']}: {result['steps']} steps, final loss {result['final_loss']:.4f}, "
               f"{result['trainable_parameters']:,} trainable parameters")
    typer.echo(f"  model:      {result['model']}")


def _run_finetune(request) -> dict:
    from flows.finetune import finetune

    _check_model(request)
    return _run_flow(finetune, request, "fine-tuning")


# Studio priority tiers: work queues of both pools, 1 is served first.
PRIORITY_QUEUES = {"rush": 1, "default": 5, "batch": 10}
WORK_POOLS = ("cpu", "gpu")
# Render jobs the cpu pool runs at once by default: a job mostly waits for its segments on the GPUs.
DEFAULT_CPU_JOBS = 8
DEPLOYMENTS = ("render/farm", "render-segment/gpu", "finetune/gpu", "inbox/submissions")


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = 4200,
) -> None:
    """Run a Prefect server (API and UI) for a cluster: `prefect server start`."""
    import os

    prefect = prefect_executable()
    os.execv(prefect, [prefect, "server", "start", "--host", host, "--port", str(port)])


def create_pools_and_queues(cpu_jobs: int = DEFAULT_CPU_JOBS) -> None:
    """The `cpu` and `gpu` process work pools, each with the rush/default/batch priority queues;
    the cpu pool runs at most `cpu_jobs` runs at once (the gpu pool: one per worker, each worker
    owning a GPU)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for pool in WORK_POOLS:
            limit = cpu_jobs if pool == "cpu" else None
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process", concurrency_limit=limit))
            except ObjectAlreadyExists:
                client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
            for queue, priority in PRIORITY_QUEUES.items():
                try:
                    existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
                    client.update_work_queue(existing.id, priority=priority)
                except ObjectNotFound:
                    client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)


def _on_workers(location: str, project_dir: Path) -> str:
    """A store or model location as the workers see it: URLs as they are, relative paths from the
    project folder (the deployments' working directory)."""
    return location if "://" in location else str((project_dir / location).resolve())


@app.command("setup-cluster")
def setup_cluster_command(
    inbox: Annotated[str, typer.Option(help="Inbox root (folder or s3:// URL) of the inbox deployment.")] = "inbox",
    project_dir: Annotated[Path, typer.Option(help="Project folder on the workers.")] = Path("."),
    cpu_jobs: Annotated[int, typer.Option(
        min=1, help="Runs the cpu pool runs at once (render jobs and the inbox): jobs mostly wait for the "
                    "GPUs, so many share a CPU worker.")] = DEFAULT_CPU_JOBS,
    lost_after: Annotated[float, typer.Option(
        help="Seconds without a heartbeat after which a claimed or running segment run is marked Crashed "
             "(its unfinished segments then go to another worker); at least 90.")] = DEFAULT_LOST_AFTER_SECONDS,
) -> None:
    """Create the work pools, priority queues, deployments (prefect.yaml) and the lost-run automation.

    The render and finetune forms default to this machine's CONTROLNEXT_MODEL_DIR and
    CONTROLNEXT_STORE (see `controlnext-video settings`): run it with the values the workers use.
    """
    import os
    import subprocess

    from flows.liveness import ensure_lost_run_automation
    from flows.settings import Environment

    create_pools_and_queues(cpu_jobs)
    project_dir, environment = project_dir.resolve(), Environment.read()
    env = dict(os.environ, CONTROLNEXT_PROJECT_DIR=str(project_dir), CONTROLNEXT_INBOX=inbox,
               CONTROLNEXT_MODEL_DIR=_on_workers(environment.model_dir, project_dir),
               CONTROLNEXT_STORE=_on_workers(environment.store, project_dir))
    subprocess.run([prefect_executable(), "--no-prompt", "deploy", "--all"], cwd=project_dir, env=env, check=True)
    ensure_lost_run_automation(lost_after)
    typer.echo(f"work pools cpu ({cpu_jobs} runs at once) and gpu, queues rush/default/batch, deployments "
               f"{', '.join(DEPLOYMENTS)}, and the lost-run automation ({lost_after:.0f} s) are ready")


@app.command("worker")
def worker_command(
    pool: Annotated[str, typer.Option(help="Work pool: gpu (segments) or cpu (jobs and inbox).")] = "gpu",
    gpus: Annotated[str | None, typer.Option(
        "--gpus", "--gpu",
        help="GPU indices this worker owns, e.g. 0 or 0,1,2,3 (sets CUDA_VISIBLE_DEVICES). With several, each "
             "segment run uses them together: one process per GPU, fused at every step (up to the request's "
             "gpus_per_segment). Without CUDA, CPU processes stand in for them.")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default: host-pool[-gpuN[-M...]]).")] = None,
    limit: Annotated[int | None, typer.Option(
        help="Runs at once: default 1 on the gpu pool (one per GPU, or per GPU set); elsewhere no limit of the "
             "worker's own (the pool's, set by setup-cluster --cpu-jobs, applies).")] = None,
    healthcheck: Annotated[bool, typer.Option(help="Serve /health on port 8080 (for container healthchecks).")] = False,
) -> None:
    """Start a Prefect process worker; on a GPU machine run one per GPU (--gpus N), or one owning
    several GPUs that render each segment together (--gpus 0,1,2,3)."""
    import os
    import socket

    indices = _gpu_list(gpus)
    name = name or f"{socket.gethostname()}-{pool}" + (f"-gpu{'-'.join(indices)}" if indices else "")
    env = dict(os.environ, WORKER_ID=name)
    if indices:
        env.update(CUDA_VISIBLE_DEVICES=",".join(indices), CONTROLNEXT_GPUS=",".join(indices))
    limit = 1 if limit is None and pool == "gpu" else limit
    args = [prefect_executable(), "worker", "start", "--pool", pool, "--name", name, "--type", "process"]
    args += (["--limit", str(limit)] if limit is not None else []) + (["--with-healthcheck"] if healthcheck else [])
    os.execve(args[0], args, env)


def _gpu_list(text: str | None) -> list[str]:
    """`0,1,2` as ["0", "1", "2"]: distinct non-negative integers."""
    if text is None:
        return []
    indices = [part.strip() for part in text.split(",")]
    if not all(i.isdigit() for i in indices) or len(set(indices)) != len(indices):
        raise typer.BadParameter(f"{text!r}: give distinct GPU indices separated by commas (0 or 0,1,2,3)",
                                 param_hint="--gpus")
    return indices


@app.command("upload")
def upload_command(
    files: Annotated[list[Path], typer.Argument(help="Files to upload: reference images, driving clips.")],
    store: Annotated[str | None, typer.Option(
        help="Artifact store root (an s3:// URL the workers read); default: CONTROLNEXT_STORE.")] = None,
) -> None:
    """Upload inputs into the artifact store and print their URLs, to paste into the UI's form
    (reference, driving). A file already uploaded is not sent again."""
    from storage import ArtifactStore
    from storage.transfer import InputNotFoundError, upload

    from flows.settings import Environment

    target = ArtifactStore(store or Environment.read().store)
    try:
        refs = [upload(target, path) for path in files]
    except InputNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    for path, ref in zip(files, refs):
        typer.echo(f"{ref.url}\t{path}")


@app.command("watch-inbox")
def watch_inbox_command(
    every: Annotated[float, typer.Option(min=1.0, help="Seconds between two looks at the inbox.")] = 30.0,
    deployment: Annotated[str, typer.Option(help="The inbox deployment (its inbox_url is the inbox watched).")]
    = "inbox/submissions",
) -> None:
    """Start a run of the inbox deployment when submissions arrive in its inbox, and only then (an
    empty inbox makes no runs). Run one, beside the server."""
    from flows.inbox import watch_inbox

    watch_inbox(deployment, every=every, log=typer.echo)


jobs_app = typer.Typer(help="List the jobs of an artifact store and delete old ones.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
STORE_OPTION = typer.Option(help="Artifact store root (folder or s3:// URL); default: CONTROLNEXT_STORE or renders.")


@jobs_app.command("list")
def jobs_list_command(store: Annotated[str | None, STORE_OPTION] = None) -> None:
    """Every job with its state (running, succeeded, failed, cancelled, unknown) and last update."""
    from storage import ArtifactStore, list_jobs

    from flows.settings import Environment

    for job in list_jobs(ArtifactStore(store or Environment.read().store)):
        when = job.updated_at.strftime("%Y-%m-%d %H:%M") if job.updated_at else "-"
        typer.echo(f"{job.job_id:<40} {job.state:<10} {when}  {job.message[:80]}")


@jobs_app.command("clean")
def jobs_clean_command(
    older_than: Annotated[str, typer.Option(help="Age of the last update: 30d, 12h or 90m.")],
    store: Annotated[str | None, STORE_OPTION] = None,
    include_unknown: Annotated[bool, typer.Option(help="Also jobs without a status (dated by their request).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be deleted.")] = False,
) -> None:
    """Delete finished jobs (succeeded, failed, cancelled) last updated before --older-than; running
    jobs are never deleted."""
    from storage import FINAL_STATES, ArtifactStore, cleanup_jobs

    from flows.settings import Environment

    states = FINAL_STATES | ({"unknown"} if include_unknown else set())
    deleted = cleanup_jobs(ArtifactStore(store or Environment.read().store), _age(older_than), states=states,
                           dry_run=dry_run)
    typer.echo(("would delete" if dry_run else "deleted") + f" {len(deleted)} job(s)" +
               (": " + ", ".join(deleted) if deleted else ""))


def _age(text: str):
    from datetime import timedelta

    units = dict(d="days", h="hours", m="minutes")
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError):
        raise typer.BadParameter(f"{text!r}: use a number and d, h or m (30d, 12h, 90m)", param_hint="--older-than")


@app.command("settings")
def settings_command() -> None:
    """The environment this machine's commands and workers read (CONTROLNEXT_*, WORKER_ID)."""
    from dataclasses import asdict

    from flows.settings import Environment

    for name, value in asdict(Environment.read()).items():
        typer.echo(f"{name:<12} {value}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
