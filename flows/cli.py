"""The `controlnext-video` command: one entry point, typed subcommands.

Subcommands import their packages lazily so `--help` stays fast and a missing optional
extra fails with an install hint only for the command that needs it.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="controlnext-video",
    help="Animate a reference image with the motion of a driving video (ControlNeXt-SVD).",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
