"""The `controlnext-video` command: one entry point, typed subcommands.

Subcommands import their packages lazily so `--help` stays fast and a missing optional
extra fails with an install hint only for the command that needs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
