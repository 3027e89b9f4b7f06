"""The `inbox` flow: renders the submissions dropped in a folder or bucket prefix.

Layout under the inbox root (a local folder or an fsspec URL such as `s3://bucket/inbox`):

    incoming/<name>/job.json      render settings (RenderRequest fields); `reference` and
    incoming/<name>/<files>       `driving` name files of the submission (or absolute URLs)
    processing/<name>/...         claimed by a running inbox flow
    done/<name>/...               rendered: the submission, `result.json`, the output video
    failed/<name>/...             not rendered: the submission and `reason.txt`

Upload the inputs first and `job.json` last: a submission counts once its `job.json` exists.
Each run claims every complete submission (moving it to `processing/`), renders them one after
the other, and moves each to `done/` or `failed/`. Submissions left in `processing/` by an inbox
run that died are taken up again by the next run. Run the deployment with concurrency 1 so two
inbox runs never claim the same submission.
"""

from __future__ import annotations

import json

from prefect import flow, get_run_logger
from pydantic import ValidationError

from storage import ArtifactStore

from .render import render
from .request import RenderRequest

JOB_FILE = "job.json"
INCOMING, PROCESSING, DONE, FAILED = "incoming", "processing", "done", "failed"
REASON_FILE = "reason.txt"
RESULT_FILE = "result.json"


def move(inbox: ArtifactStore, source: str, target: str) -> None:
    """Move a folder within the inbox: copy every file (over what the target holds), then delete the source."""
    for key in inbox.list(source):
        with inbox.open_read(key) as src, inbox.open_write(target + key[len(source):]) as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
    inbox.delete_prefix(source)


def submissions(inbox: ArtifactStore, state: str) -> list[str]:
    """Names of the complete submissions (those with a job file) in `state`."""
    return [name for name in inbox.children(state) if inbox.exists(f"{state}/{name}/{JOB_FILE}")]


def submission_request(inbox: ArtifactStore, name: str, defaults: dict) -> RenderRequest:
    """The request of a claimed submission; input names resolve inside its folder."""
    folder = f"{PROCESSING}/{name}"
    try:
        settings = json.loads(inbox.read_text(f"{folder}/{JOB_FILE}"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{JOB_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(settings, dict):
        raise ValueError(f"{JOB_FILE} must hold a JSON object of render settings")
    for field in ("reference", "driving"):
        value = settings.get(field)
        if not value:
            raise ValueError(f"{JOB_FILE} does not name the {field} file")
        if "://" not in value and not value.startswith("/"):
            if not inbox.exists(f"{folder}/{value}"):
                raise ValueError(f"{field} file {value!r} is not in the submission")
            settings[field] = inbox.url(f"{folder}/{value}")
    output_name = {"mp4": "output.mp4", "prores": "output.mov", "png": "output_png"}[
        settings.get("output_format", "mp4")]
    settings.setdefault("output", inbox.url(f"{DONE}/{name}/{output_name}"))
    settings.setdefault("job_id", name if len(name) <= 64 else "")
    return RenderRequest.model_validate({**defaults, **settings})


@flow(name="inbox", log_prints=True)
def inbox(inbox_url: str, store: str = "", model: str = "", dispatch: str = "local") -> dict:
    """Render every submission waiting in the inbox; returns the names rendered and failed."""
    logger = get_run_logger()
    box = ArtifactStore(inbox_url)
    defaults = {k: v for k, v in dict(store=store, model=model, dispatch=dispatch).items() if v}
    for name in submissions(box, INCOMING):
        move(box, f"{INCOMING}/{name}", f"{PROCESSING}/{name}")
        logger.info("claimed submission %s", name)
    rendered, failed = [], []
    for name in submissions(box, PROCESSING):
        try:
            request = submission_request(box, name, defaults)
        except (ValueError, ValidationError) as exc:
            reason = f"invalid submission: {exc}"
        else:
            state = render(request, return_state=True)
            reason = None if state.is_completed() else f"render {state.name.lower()}: {state.message}"
            if reason is None:
                box.write_json(f"{PROCESSING}/{name}/{RESULT_FILE}", state.result()["encoded"])
        if reason is None:
            move(box, f"{PROCESSING}/{name}", f"{DONE}/{name}")
            rendered.append(name)
            logger.info("submission %s rendered", name)
        else:
            box.write_text(f"{PROCESSING}/{name}/{REASON_FILE}", reason + "\n")
            move(box, f"{PROCESSING}/{name}", f"{FAILED}/{name}")
            failed.append(name)
            logger.error("submission %s failed: %s", name, reason)
    return dict(rendered=rendered, failed=failed)
