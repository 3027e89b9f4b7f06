"""The job report: a markdown artifact in the Prefect UI and `output/report.md` in the job folder.

It shows a contact sheet (output frames beside their poses) and, when the store is an object
store, presigned download links to the outputs, also published as link artifacts of the job's run.
"""

from __future__ import annotations

import base64

from .progress import artifact_key
from .stages import JobContext, write_contact_sheet

# Frame numbers a log line or the report lists before summarising.
MAX_LISTED_FRAMES = 40


def frames_text(frames: list[int]) -> str:
    """`3, 4, 5, 9` (at most `MAX_LISTED_FRAMES` numbers, then the count of the rest)."""
    shown = ", ".join(map(str, frames[:MAX_LISTED_FRAMES]))
    return shown + (f" and {len(frames) - MAX_LISTED_FRAMES} more" if len(frames) > MAX_LISTED_FRAMES else "")


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def gpus_text(record: dict) -> str:
    """The processes that rendered a segment together: `1`, `2 × NVIDIA H100 80GB HBM3`, or a list."""
    devices = record.get("devices") or []
    if len(devices) < 2:
        return "1"
    kinds = sorted(set(devices))
    return f"{len(devices)} × {kinds[0]}" if len(kinds) == 1 else ", ".join(devices)


def sampler_text(request) -> str:
    """The sampler and its cost: `Sampler: Euler, 25 steps, Langevin corrector 1 step per level
    (snr 0.16), no churn: 49 model evaluations per window (1.96 per step; plain Euler 1).`"""
    from controlnext_video.sampler import corrector_cost

    steps, corrector = request.steps, request.corrector_steps
    parts = [f"Euler, {steps} steps"]
    parts.append(f"Langevin corrector {corrector} step{'s' if corrector != 1 else ''} per level "
                 f"(snr {request.corrector_snr:g})" if corrector else "no corrector")
    parts.append(f"churn {request.s_churn:g} for sigma in [{request.s_tmin:g}, {request.s_tmax:g}], noise "
                 f"{request.s_noise:g}" if request.s_churn else "no churn")
    evaluations = corrector_cost(steps, corrector)
    return (f"Sampler: {', '.join(parts)}: {evaluations} model evaluations per window "
            f"({evaluations / steps:.3g} per step; plain Euler 1).")


def _missing_poses(missing: list[int], total: int) -> str:
    if not missing:
        return "Every output frame has a pose."
    return (f"**{len(missing)} of {total} output frames have no pose** (no person found, or a gap too long to "
            f"fill; they were rendered with a black pose image): {frames_text(missing)}.")


def outputs(summary: dict) -> dict[str, str]:
    """The job's outputs a person downloads, by name: store keys."""
    return {"video": summary["encoded"]["output_key"], "side-by-side preview": summary["encoded"]["side_by_side"],
            "pose preview": summary["pose_preview"],
            **{f"{name} preview": key for name, key in summary.get("condition_previews", {}).items()}}


def download_links(job: JobContext, keys: dict[str, str]) -> dict[str, str]:
    """Presigned HTTP links to the given artifacts (a PNG sequence: to its `sequence.json`), for
    the browsers of `CONTROLNEXT_LINK_ENDPOINT`; empty for stores without HTTP access."""
    links = {}
    for what, key in keys.items():
        link = job.store.http_url(key, endpoint_url=job.env.link_endpoint or None)
        if link and not job.store.exists(key):  # a PNG sequence: a folder, described by its sequence.json
            link = job.store.http_url(f"{key}/sequence.json", endpoint_url=job.env.link_endpoint or None)
        if link:
            links[what] = link
    return links


def report_markdown(job: JobContext, summary: dict, links: dict[str, str], contact_sheet: str) -> str:
    """The report; `contact_sheet` is the picture's address (a data URI, or a path beside the report)."""
    request, store, layout = job.request, job.store, job.layout
    ingest, encoded = summary["ingest"], summary["encoded"]
    video = ingest["video"]
    segment_rows = []
    for index, start, stop in summary["segments"]:
        record = store.read_json(layout.segment_record(index))
        segment_rows.append([index, f"{start}-{stop - 1}", record.get("worker", "?"),
                             summary["attempts"].get(index, summary["attempts"].get(str(index), 0)),
                             gpus_text(record), record.get("load_seconds", "?"), record.get("render_seconds", "?")])
    settings = request.model_dump(exclude={"reference", "driving", "store", "output"})
    parts = [
        f"# Render {summary['job_id']}",
        f"![Output frames beside their poses]({contact_sheet})",
        "## Inputs",
        _table(["input", "location", "sha256"], [
            ["reference", request.reference, ingest["reference_sha256"][:16]],
            ["driving clip", request.driving, ingest["driving_sha256"][:16]],
        ]),
        f"Driving clip: {video.get('width')}x{video.get('height')}, {ingest['source_fps']} fps, "
        f"{video.get('frame_count')} frames, audio: {'yes' if ingest['has_audio'] else 'no'}. "
        f"Output: {ingest['num_frames']} frames at {ingest['output_fps']} fps (stride {request.stride}).",
        _missing_poses(summary.get("missing_pose_frames", []), ingest["num_frames"]),
        *(f"**Warning:** {note}" for note in ingest.get("notes", [])),
        "## Settings",
        _table(["setting", "value"], [[k, v] for k, v in settings.items()]),
        sampler_text(request),
        "## Timings",
        _table(["stage", "seconds"], [[k, v] for k, v in summary["timings"].items()]),
        "## Segments",
        _table(["segment", "frames", "worker", "attempts", "GPUs", "load s", "render s"], segment_rows),
        "## Outputs",
        _table(["what", "where", "download"], [
            [what, store.url(key), f"[download]({links[what]})" if what in links else "-"]
            for what, key in outputs(summary).items()
        ] + [["delivered to", encoded.get("delivered") or "(job folder only)", "-"]]),
        *(["Download links stay valid for 7 days."] if links else []),
        f"{encoded['frames']} frames, {encoded['fps']} fps, {encoded['duration']:.3f} s, "
        "audio: " + (f"{encoded['audio_seconds']:.3f} s" if encoded["audio_seconds"] is not None else "none") + ".",
    ]
    return "\n\n".join(parts) + "\n"


def write_report(job: JobContext, summary: dict) -> tuple[str, dict[str, str]]:
    """Write the report to the job folder and publish it as a markdown artifact (the contact sheet
    inside it) with a link artifact per download; returns the report's key and the links."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact

    sheet = write_contact_sheet(job, summary["ingest"]["num_frames"])
    links = download_links(job, outputs(summary))
    key = job.layout.report
    job.store.write_text(key, report_markdown(job, summary, links, sheet.rsplit("/", 1)[-1]))
    picture = "data:image/jpeg;base64," + base64.b64encode(job.store.read_bytes(sheet)).decode()
    create_markdown_artifact(report_markdown(job, summary, links, picture), key=artifact_key(summary["job_id"], "report"),
                             description=f"render report for {summary['job_id']}")
    for what, link in links.items():
        create_link_artifact(link, link_text=f"{what} of {summary['job_id']}", description=f"download the {what}")
    return key, links
