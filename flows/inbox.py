"""The `inbox` flow: renders the submissions dropped in a folder or bucket prefix.

Layout and rules: `storage.inbox` (incoming/, processing/, done/, failed/). Upload the inputs
first and `job.json` last: a submission counts once its `job.json` exists. Each run claims every
complete submission (moving it to `processing/`) and renders them one after the other. Each
submission is handled in isolation: whatever goes wrong with one (bad JSON, a path leading out
of its folder, an unknown setting, a failed render) moves it to `failed/` with `reason.txt`, and
the others still run. Submissions left in `processing/` by an inbox run that died are taken up
again by the next run. Run the deployment with concurrency 1 so two inbox runs never claim the
same submission.

`watch_inbox` (the `watch-inbox` command) starts a run when submissions arrive, once per set of
waiting submissions, so an empty inbox makes no runs.

A submission sets render settings only; where the job's files go, the model and the dispatch are
the deployment's (its parameters), never the submitter's. The job id is derived from the
content, so two submissions of the same name never share or overwrite each other's job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from prefect import flow, get_run_logger
from pydantic import ValidationError

from storage import ArtifactStore
from storage.inbox import DONE, FAILED, INCOMING, PROCESSING, REASON_FILE, RESULT_FILE, Inbox, SubmissionError
from storage.layout import OUTPUT_NAMES, safe_name

from .render import render
from .request import RenderRequest

# Settings the deployment owns: paths on the workers, where results go, how the job is dispatched.
DEPLOYMENT_SETTINGS = ("output", "store", "model", "job_id", "dwpose_models", "dispatch", "segment_deployment")


def submission_request(box: Inbox, name: str, defaults: dict) -> RenderRequest:
    """The request of a claimed submission; its input files resolve inside its folder."""
    settings = box.read_job(PROCESSING, name)
    for field in DEPLOYMENT_SETTINGS:
        if field in settings:
            raise SubmissionError(f"job.json may not set {field!r}: it is set by the inbox deployment "
                                  f"(the result goes to {DONE}/<name>/ and the job's store folder)")
    for field in ("reference", "driving"):
        if field not in settings:
            raise SubmissionError(f"job.json does not name the {field} file")
        settings[field] = box.input_location(PROCESSING, name, settings[field], field)
    try:
        return RenderRequest.model_validate({**defaults, **settings})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'job.json'}: {e['msg']}" for e in exc.errors())
        raise SubmissionError(f"invalid settings in job.json: {problems}") from exc


def deliver_to_submission(box: Inbox, name: str, request: RenderRequest, result: dict) -> None:
    """Copy the output (a file, or a PNG folder) and `result.json` into the submission folder."""
    store = ArtifactStore(request.store)
    output_key = result["encoded"]["output_key"]
    output_name = OUTPUT_NAMES[request.output_format]
    for key in store.list(output_key) or [output_key]:
        filename = output_name if key == output_key else f"{output_name}/{key.rsplit('/', 1)[-1]}"
        with store.open_read(key) as source:
            box.write_stream(PROCESSING, name, filename, source)
    record = dict(result["encoded"], job_id=result["job_id"], output=output_name,
                  missing_pose_frames=result.get("missing_pose_frames", []))
    box.write_text(PROCESSING, name, RESULT_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def process_submission(box: Inbox, name: str, defaults: dict) -> tuple[str, str | None]:
    """Render one claimed submission and file it under done/ or failed/.

    Returns where it was filed (`done/<name>` or, when that is taken, `done/<name>-2`...) and the
    reason it failed (None when rendered).
    """
    try:
        request = submission_request(box, name, defaults)
        state = render.with_options(flow_run_name=f"inbox-{safe_name(name)}")(request, return_state=True)
        if not state.is_completed():
            raise SubmissionError(f"render {state.name.lower()}: {state.message}")
        deliver_to_submission(box, name, request, state.result())
    except Exception as exc:  # one bad submission must not stop the others
        reason = str(exc) if isinstance(exc, SubmissionError) else f"{type(exc).__name__}: {exc}"
        box.write_text(PROCESSING, name, REASON_FILE, reason + "\n")
        return f"{FAILED}/{box.move(name, PROCESSING, FAILED)}", reason
    return f"{DONE}/{box.move(name, PROCESSING, DONE)}", None


@flow(name="inbox", log_prints=True)
def inbox(inbox_url: str, store: str = "", model: str = "", dispatch: str = "auto", dwpose_models: str = "") -> dict:
    """Render every submission waiting in the inbox; returns the names rendered and failed."""
    logger = get_run_logger()
    box = Inbox(inbox_url)
    defaults = {k: v for k, v in dict(store=store, model=model, dispatch=dispatch,
                                      dwpose_models=dwpose_models).items() if v}
    for name in box.names(INCOMING):
        claimed = box.move(name, INCOMING, PROCESSING)
        logger.info("claimed submission %r", claimed)
    rendered, failed = [], []
    for name in box.names(PROCESSING):
        try:
            folder, reason = process_submission(box, name, defaults)
        except Exception as exc:  # even filing it failed (storage): leave it in processing/ for the next run
            logger.error("submission %r could not be filed: %s: %s", name, type(exc).__name__, exc)
            failed.append(name)
            continue
        if reason is None:
            rendered.append(name)
            logger.info("submission %r rendered: %s", name, folder)
        else:
            failed.append(name)
            logger.error("submission %r failed (%s): %s", name, folder, reason)
    return dict(rendered=rendered, failed=failed)


def start_inbox_run(box: Inbox, deployment: str) -> str | None:
    """Start a run of the inbox `deployment` if complete submissions wait in incoming/, once per
    set of them (the idempotency key is their fingerprint); returns the run's id, or None."""
    from prefect.deployments import run_deployment

    names = box.names(INCOMING)
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    run = run_deployment(deployment, timeout=0, as_subflow=False, flow_run_name=f"inbox: {shown}",
                         idempotency_key=f"inbox:{box.fingerprint(INCOMING)}")
    return str(run.id)


def watch_inbox(deployment: str, *, every: float = 30.0, rounds: int | None = None,
                log: Callable[[str], None] = print) -> None:
    """Look at the inbox of `deployment` (its `inbox_url` parameter) every `every` seconds and start
    a run when submissions wait (`start_inbox_run`); `rounds` looks (None: forever)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        box = Inbox(client.read_deployment_by_name(deployment).parameters["inbox_url"])
    log(f"watching {box.url}/{INCOMING}/ every {every:g} s for {deployment}")
    last = None
    while rounds is None or rounds > 0:
        run_id = start_inbox_run(box, deployment)
        if run_id and run_id != last:
            log(f"submissions waiting: started inbox run {run_id}")
        last = run_id or last
        rounds = None if rounds is None else rounds - 1
        if rounds != 0:
            time.sleep(every)
