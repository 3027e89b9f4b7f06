from __future__ import annotations

import pytest

from storage import JobLayout, cache_key, check_key, safe_name


def test_job_layout_matches_the_design() -> None:
    job = JobLayout("20261122-101500-ab12cd34")
    root = "jobs/20261122-101500-ab12cd34"
    assert job.prefix == root
    assert job.request == f"{root}/request.json"
    assert job.identity == f"{root}/identity.json" and job.status == f"{root}/status.json"
    assert job.ingest == f"{root}/ingest.json" and job.plan == f"{root}/plan.json"
    assert job.aligned_poses == f"{root}/poses/aligned_poses.json"
    assert job.output_frame(7) == f"{root}/output/frames/frame_000007.png"  # one frame naming scheme
    assert job.output_video("prores") == f"{root}/output/output.mov"
    with pytest.raises(ValueError, match="output format must be one of mp4, prores, png"):
        job.output_video("gif")
    assert job.input("driving.mp4") == f"{root}/inputs/driving.mp4"
    assert job.pose("poses.json") == f"{root}/poses/poses.json"
    assert job.segment(3) == f"{root}/segments/0003"
    assert job.segment_record(3) == f"{root}/segments/0003/record.json"
    assert job.segment_frame(12, 7) == f"{root}/segments/0012/frames/frame_000007.png"
    assert job.output_file("video.mp4") == f"{root}/output/video.mp4"
    # Every key the layout builds is a valid store key.
    for key in (job.request, job.input("ref.png"), job.segment_frame(0, 0), job.report, job.output_video("png"),
                job.reference_image, job.pose_preview, job.blend_record, job.encode_record, job.side_by_side):
        assert check_key(key) == key


def test_segment_keys_sort_in_render_order() -> None:
    job = JobLayout("j")
    keys = [job.segment_record(k) for k in (10, 2, 1, 100)]
    assert sorted(keys) == [job.segment_record(k) for k in (1, 2, 10, 100)]


@pytest.mark.parametrize("job_id", ["", "../x", "a/b", "-lead", "a b", "x" * 129, 5])
def test_bad_job_ids(job_id: object) -> None:
    with pytest.raises(ValueError, match="job id must be"):
        JobLayout(job_id)  # type: ignore[arg-type]


def test_bad_names_and_indices() -> None:
    job = JobLayout("j")
    with pytest.raises(ValueError, match="input name must be a plain file name"):
        job.input("../../etc/passwd")
    with pytest.raises(ValueError, match="segment index must be an int in"):
        job.segment(-1)
    with pytest.raises(ValueError, match="frame index must be an int >= 0"):
        job.segment_frame(0, -1)


def test_cache_keys_are_content_addressed() -> None:
    digest = "ab" * 32
    assert cache_key("poses-mediapipe", digest, "poses.json") == f"cache/poses-mediapipe/{digest}/poses.json"
    with pytest.raises(ValueError, match="cache digest must be"):
        cache_key("poses", "not-a-hash", "poses.json")


def test_upload_and_report_keys() -> None:
    from storage.layout import upload_key

    digest = "cd" * 32
    assert upload_key(digest, "actor.png") == f"uploads/{digest[:16]}/actor.png"
    with pytest.raises(ValueError, match="upload digest must be"):
        upload_key("nope", "actor.png")
    with pytest.raises(ValueError, match="plain file name"):
        upload_key(digest, "a b.png")
    layout = JobLayout("j1")
    assert layout.segment_progress(3) == "jobs/j1/segments/0003/progress.json"
    assert layout.contact_sheet == "jobs/j1/output/contact_sheet.jpg"


def test_safe_name() -> None:
    assert safe_name("Take 3 (final).MOV") == "Take_3_final.MOV"
    assert safe_name("/uploads/Zoë's clip.mp4") == "Zoe_s_clip.mp4"
    with pytest.raises(ValueError, match="no usable characters"):
        safe_name("///")
