"""The `controlnext-video` command: one entry point, typed subcommands.

Subcommands import their packages lazily so `--help` stays fast and a missing optional
extra fails with an install hint only for the command that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.localcluster import prefect_executable

app = typer.Typer(
    name="controlnext-video",
    help="Animate a reference image with the motion of a driving video (ControlNeXt-SVD).",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Animate a reference image with the motion of a driving video (ControlNeXt-SVD)."""


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


@app.command("poses")
def poses_command(
    driving: Annotated[Path, typer.Option("--driving", help="Driving video (the motion).")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference image (the character).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for the pose JSON and the preview.")],
    backend: Annotated[str, typer.Option(help="Pose detector: mediapipe (built in) or dwpose.")] = "mediapipe",
    det_model: Annotated[Path | None, typer.Option(help="dwpose: path of yolox_l.onnx.")] = None,
    pose_model: Annotated[Path | None, typer.Option(help="dwpose: path of dw-ll_ucoco_384.onnx.")] = None,
    device: Annotated[str, typer.Option(help="dwpose: auto (CUDA when available), cpu or cuda.")] = "auto",
    stride: Annotated[int, typer.Option(min=1, help="Use every stride-th driving frame.")] = 2,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Use at most this many driving frames.")] = None,
    height: Annotated[int, typer.Option(min=16, help="Output height in pixels.")] = 1024,
    width: Annotated[int, typer.Option(min=16, help="Output width in pixels.")] = 576,
    align: Annotated[
        str, typer.Option(help="Alignment: retarget (per-bone), linear (the reference's fit) or none.")
    ] = "retarget",
    root_motion: Annotated[
        str, typer.Option(help="retarget: body travel scaled by body size (body), frame size (frame), or none.")
    ] = "body",
    smooth: Annotated[bool, typer.Option(help="Temporal smoothing (One Euro, zero lag).")] = True,
    max_gap: Annotated[int, typer.Option(min=0, help="Longest detection gap (in sampled frames) to interpolate.")] = 4,
    preview: Annotated[bool, typer.Option(help="Write preview.mp4.")] = True,
    preview_height: Annotated[int, typer.Option(min=16, help="Height of each preview panel.")] = 512,
    per_frame_json: Annotated[bool, typer.Option(help="Also write one OpenPose file per aligned frame.")] = False,
) -> None:
    """Detect, smooth and align poses; write OpenPose JSON and a side-by-side preview video."""
    from pose.errors import PoseError
    from pose.preview import make_pose_preview
    from pose.smooth import SmoothingConfig

    try:
        result = make_pose_preview(
            driving, reference, out,
            backend=backend, det_model=det_model, pose_model=pose_model, device=device,
            stride=stride, max_frames=max_frames, height=height, width=width, align=align, root_motion=root_motion,
            max_gap=max_gap, smoothing=SmoothingConfig() if smooth else None,
            preview=preview, preview_height=preview_height, per_frame_json=per_frame_json,
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


GUIDANCE_HELP = "Guidance scale (both ends of the per-window ramp; see --guidance-min/--guidance-max)."


def _request_from_options(**options) -> "RenderRequest":
    from pydantic import ValidationError

    from flows.request import RenderRequest

    fields = {k: v for k, v in options.items() if v is not None}
    try:
        return RenderRequest(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
        typer.echo(f"error: invalid options: {problems}", err=True)
        raise typer.Exit(code=2) from exc


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
    import os

    _check_model(request)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", EMBEDDED_SERVER_TIMEOUT_SECONDS)
    from flows.interrupt import RenderInterrupted, stop_on_signals
    from flows.progress import add_listener, remove_listener
    from flows.render import render

    bars = _Bars()
    add_listener(bars)
    try:
        with stop_on_signals():
            state = render(request, return_state=True)
    except KeyboardInterrupt as exc:
        bars.close()
        typer.echo("render stopped: finished segments are kept; run the same command again to resume", err=True)
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
        typer.echo(f"error: the render {state.name.lower()}: {state.message}", err=True)
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
def render_command(
    reference: Annotated[str, typer.Option("--reference", help="Reference image (path or store URL).")],
    driving: Annotated[str, typer.Option("--driving", help="Driving video (path or store URL).")],
    model: Annotated[str, typer.Option("--model", help="Model directory (see download-weights).")],
    output: Annotated[str, typer.Option("--output", help="Where to write the video (path or URL).")],
    height: Annotated[int | None, typer.Option(help="Output height (multiple of 8).")] = None,
    width: Annotated[int | None, typer.Option(help="Output width (multiple of 8).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help=GUIDANCE_HELP)] = None,
    guidance_min: Annotated[float | None, typer.Option(help="Guidance at each window's first frame.")] = None,
    guidance_max: Annotated[float | None, typer.Option(help="Guidance at each window's last frame.")] = None,
    window: Annotated[int | None, typer.Option(help="Frames per temporal window.")] = None,
    overlap: Annotated[int | None, typer.Option(help="Frames shared by neighbouring windows.")] = None,
    stride: Annotated[int | None, typer.Option(help="Use every stride-th driving frame.")] = None,
    max_frames: Annotated[int | None, typer.Option(help="Render at most this many frames.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    pose_backend: Annotated[str | None, typer.Option(help="mediapipe or dwpose.")] = None,
    dwpose_models: Annotated[str | None, typer.Option(help="Folder with the DWPose ONNX files.")] = None,
    align: Annotated[str | None, typer.Option(help="retarget, linear or none.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cuda, cuda:N or cpu.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, float16 or bfloat16.")] = None,
    control_scale: Annotated[float | None, typer.Option(help="Pose control strength.")] = None,
    decode_chunk_size: Annotated[int | None, typer.Option(help="Frames decoded together.")] = None,
    segment_length: Annotated[int | None, typer.Option(help="Frames per segment.")] = None,
    segment_overlap: Annotated[int | None, typer.Option(help="Frames shared between segments.")] = None,
    output_format: Annotated[str | None, typer.Option("--format", help="mp4, prores or png.")] = None,
    crf: Annotated[int | None, typer.Option(help="H.264 quality (lower is better).")] = None,
    audio: Annotated[bool, typer.Option(help="Carry the driving clip's audio.")] = True,
    store: Annotated[str | None, typer.Option(help="Artifact store root (folder or s3:// URL).")] = None,
    dispatch: Annotated[str | None, typer.Option(help="local, or deployment (GPU work pool).")] = None,
    priority: Annotated[str | None, typer.Option(help="deployment: rush, default or batch work queue.")] = None,
    max_in_flight: Annotated[int | None, typer.Option(help="deployment: segment runs in flight at once.")] = None,
    segments_per_run: Annotated[
        int | None, typer.Option(help="deployment: segments per render-segment run, the model loaded once (0: auto).")
    ] = None,
    gpu_memory_gib: Annotated[float | None, typer.Option(help="Cap on the GPU memory used, in GiB (0: no cap).")] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the UNet (GPU; cached on disk).")
    ] = None,
    channels_last: Annotated[
        bool | None, typer.Option("--channels-last/--no-channels-last", help="Channels-last convolutions (GPU).")
    ] = None,
    job_id: Annotated[str | None, typer.Option(help="Job id (default: derived from the request).")] = None,
) -> None:
    """Render a video: the reference performs the driving clip's motion."""
    if guidance is not None:
        guidance_min = guidance if guidance_min is None else guidance_min
        guidance_max = guidance if guidance_max is None else guidance_max
    request = _request_from_options(
        reference=reference, driving=driving, model=model, output=output, height=height, width=width,
        steps=steps, guidance_min=guidance_min, guidance_max=guidance_max, window=window, overlap=overlap,
        stride=stride, max_frames=max_frames, seed=seed, pose_backend=pose_backend, dwpose_models=dwpose_models,
        align=align, device=device, dtype=dtype, control_scale=control_scale, decode_chunk_size=decode_chunk_size,
        segment_length=segment_length, segment_overlap=segment_overlap, output_format=output_format, crf=crf,
        audio=audio, store=store, dispatch=dispatch, priority=priority, max_in_flight=max_in_flight,
        segments_per_run=segments_per_run, gpu_memory_gib=gpu_memory_gib, compile=compile,
        channels_last=channels_last, job_id=job_id,
    )
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
) -> None:
    """Run the whole job on this machine with a tiny random model and sample inputs (no downloads)."""
    from controlnext_video.factory import save_tiny_model
    from flows.demo import DEMO_REQUEST, make_demo_inputs

    typer.echo(TINY_MODEL_NOTE + "\n")
    model = out / "tiny-model"
    if not (model / "model_index.json").is_file():
        typer.echo(f"building the tiny model in {model}")
        save_tiny_model(model)
    reference, driving = make_demo_inputs(out / "inputs")
    typer.echo(f"sample inputs: {reference} (astronaut photo), {driving} (moving photo with a tone track)")
    request = _request_from_options(reference=str(reference), driving=str(driving), model=str(model),
                                    store=str(out / "store"), output=str(out / "demo.mp4"), **DEMO_REQUEST)
    _print_result(_run_render(request), request.store)
    typer.echo("\n" + TINY_MODEL_NOTE)


# Studio priority tiers: work queues of both pools, 1 is served first.
PRIORITY_QUEUES = {"rush": 1, "default": 5, "batch": 10}
WORK_POOLS = ("cpu", "gpu")


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the API and UI.")] = 4200,
) -> None:
    """Run a Prefect server (API and UI) for a cluster: `prefect server start`."""
    import os

    prefect = prefect_executable()
    os.execv(prefect, [prefect, "server", "start", "--host", host, "--port", str(port)])


def create_pools_and_queues() -> None:
    """The `cpu` and `gpu` process work pools, each with the rush/default/batch priority queues."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkQueueCreate, WorkQueueUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for pool in WORK_POOLS:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
            for queue, priority in PRIORITY_QUEUES.items():
                try:
                    existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
                    client.update_work_queue(existing.id, priority=priority)
                except ObjectNotFound:
                    client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)


@app.command("setup-cluster")
def setup_cluster_command(
    inbox: Annotated[str, typer.Option(help="Inbox root (folder or s3:// URL) for the scheduled inbox flow.")] = "inbox",
    project_dir: Annotated[Path, typer.Option(help="Project folder on the workers.")] = Path("."),
) -> None:
    """Create the work pools, priority queues and deployments (prefect.yaml) on the Prefect server."""
    import os
    import subprocess

    create_pools_and_queues()
    project_dir = project_dir.resolve()
    env = dict(os.environ, CONTROLNEXT_PROJECT_DIR=str(project_dir), CONTROLNEXT_INBOX=inbox)
    subprocess.run([prefect_executable(), "--no-prompt", "deploy", "--all"], cwd=project_dir, env=env, check=True)
    typer.echo("work pools cpu and gpu, queues rush/default/batch, deployments render/default, "
               "render-segment/gpu and inbox/scheduled are ready")


@app.command("worker")
def worker_command(
    pool: Annotated[str, typer.Option(help="Work pool: gpu (segments) or cpu (jobs and inbox).")] = "gpu",
    gpu: Annotated[int | None, typer.Option(help="GPU index this worker owns (sets CUDA_VISIBLE_DEVICES).")] = None,
    name: Annotated[str | None, typer.Option(help="Worker name (default: host-pool[-gpuN]).")] = None,
    limit: Annotated[int, typer.Option(help="Runs at once (keep 1 per GPU).")] = 1,
    healthcheck: Annotated[bool, typer.Option(help="Serve /health on port 8080 (for container healthchecks).")] = False,
) -> None:
    """Start a Prefect process worker; on a GPU machine run one per GPU with --gpu N."""
    import os
    import socket

    name = name or f"{socket.gethostname()}-{pool}" + (f"-gpu{gpu}" if gpu is not None else "")
    env = dict(os.environ, WORKER_ID=name)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    args = [prefect_executable(), "worker", "start", "--pool", pool, "--name", name, "--limit", str(limit),
            "--type", "process"] + (["--with-healthcheck"] if healthcheck else [])
    os.execve(args[0], args, env)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
