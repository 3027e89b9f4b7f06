"""The job report: a markdown artifact in the Prefect UI and `output/report.md` in the job folder."""

from __future__ import annotations

from .progress import artifact_key
from .stages import JobContext

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


def _missing_poses(missing: list[int], total: int) -> str:
    if not missing:
        return "Every output frame has a pose."
    return (f"**{len(missing)} of {total} output frames have no pose** (no person found, or a gap too long to "
            f"fill; they were rendered with a black pose image): {frames_text(missing)}.")


def report_markdown(job: JobContext, summary: dict) -> str:
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
        "## Timings",
        _table(["stage", "seconds"], [[k, v] for k, v in summary["timings"].items()]),
        "## Segments",
        _table(["segment", "frames", "worker", "attempts", "GPUs", "load s", "render s"], segment_rows),
        "## Outputs",
        _table(["what", "where"], [
            ["video", store.url(encoded["output_key"])],
            ["side-by-side preview", store.url(encoded["side_by_side"])],
            ["pose preview", store.url(summary["pose_preview"])],
            ["delivered to", encoded.get("delivered") or "(job folder only)"],
        ]),
        f"{encoded['frames']} frames, {encoded['fps']} fps, {encoded['duration']:.3f} s, "
        "audio: " + (f"{encoded['audio_seconds']:.3f} s" if encoded["audio_seconds"] is not None else "none") + ".",
    ]
    return "\n\n".join(parts) + "\n"


def write_report(job: JobContext, summary: dict) -> str:
    """Write the report to the job folder and publish it as a markdown artifact; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    markdown = report_markdown(job, summary)
    key = job.layout.report
    job.store.write_text(key, markdown)
    create_markdown_artifact(markdown, key=artifact_key(summary["job_id"], "report"),
                             description=f"render report for {summary['job_id']}")
    return key
