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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
