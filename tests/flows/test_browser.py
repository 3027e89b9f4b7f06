"""The Prefect UI as a studio's front door, in a real browser: headless Chromium (Debian's package)
driven by Playwright.

The cluster starts as the README says: a Prefect server with the UI and PostgreSQL behind it, an
S3 object store, `setup-cluster`, a CPU worker and a GPU worker (on the CPU, tiny model). Inputs go
in with `controlnext-video upload`; the `render/farm` form is filled in with the required fields
only. Screenshots of the form, a running job and the report land in `outputs/browser/` (CI keeps
them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import BUCKET, REPO_ROOT

pytestmark = pytest.mark.browser

SCREENSHOTS = REPO_ROOT / "outputs" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
JOB_TIMEOUT = 900
STEPS = 16
# The cluster's defaults for this test (a studio sets its own on the deployment): small frames for
# the CPU, three segments of 8 frames, enough steps to watch the progress move.
FAST_DEFAULTS = dict(height=96, width=64, steps=STEPS, window=4, overlap=1, decode_chunk_size=4, segment_length=8,
                     segment_overlap=2, max_frames=16)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not installed (CI installs Debian's chromium: see .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield page
    page.close()


@pytest.fixture(scope="module")
def studio(postgres, object_store, tiny_model, clip_inputs, tmp_path_factory):
    """The cluster, the uploaded inputs' URLs and the render/farm deployment's id."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.localcluster import PROJECT_DIR, LocalCluster

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("studio")
    public = object_store["AWS_ENDPOINT_URL"].replace("127.0.0.1", "localhost")  # the store as browsers reach it
    env = dict(object_store, CONTROLNEXT_STORE=f"s3://{BUCKET}/prod", CONTROLNEXT_MODEL_DIR=str(tiny_model),
               CONTROLNEXT_WORK_DIR=str(work / "scratch"), CONTROLNEXT_LINK_ENDPOINT=public)
    cluster = LocalCluster(work / "home", work / "logs", database_url=postgres, extra_env=env, ui=True).start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: cluster.url}):
            cluster.setup(inbox=f"s3://{BUCKET}/inbox")
            cluster.start_worker("cpu", "studio-cpu")
            cluster.start_worker("gpu", "studio-gpu-0")
            upload = subprocess.run([sys.executable, "-m", "flows.cli", "upload", *map(str, clip_inputs)],
                                    env=cluster.env, cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
            urls = [line.split("\t")[0] for line in upload.stdout.splitlines()]
            with get_client(sync_client=True) as client:
                farm = client.read_deployment_by_name("render/farm")
                defaults = dict(farm.parameters["request"], **FAST_DEFAULTS)
                client.update_deployment(farm.id, DeploymentUpdate(parameters={"request": defaults}))
            yield cluster, urls, str(farm.id)
    finally:
        cluster.stop()


def farm_runs(deployment_id: str) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def open_form(page, studio) -> None:
    cluster, _, deployment_id = studio
    page.goto(f"{cluster.ui_url}/v2/deployments/deployment/{deployment_id}/run", wait_until="networkidle")
    page.get_by_label("Reference", exact=True).wait_for()


def screenshot(page, name: str, element=None) -> None:
    (element or page).screenshot(path=str(SCREENSHOTS / name))


def test_the_form_refuses_an_empty_request_and_a_broken_rule_before_a_run_exists(studio, page):
    cluster, urls, deployment_id = studio
    open_form(page, studio)
    assert page.get_by_label("Model (Optional)", exact=True).input_value() == cluster.env["CONTROLNEXT_MODEL_DIR"]
    assert page.get_by_label("Store (Optional)", exact=True).input_value() == f"s3://{BUCKET}/prod"
    screenshot(page, "01-form.png")

    page.get_by_role("button", name="Submit").click()
    missing = page.get_by_text("'reference' is a required property", exact=True)
    missing.wait_for()
    missing.scroll_into_view_if_needed()
    screenshot(page, "02-empty-form-refused.png")
    assert page.get_by_text("'driving' is a required property", exact=True).is_visible()

    page.get_by_label("Reference", exact=True).fill(urls[0])
    page.get_by_label("Driving", exact=True).fill(urls[1])
    page.get_by_label("Overlap (Optional)", exact=True).fill(str(FAST_DEFAULTS["window"]))  # overlap == window
    page.wait_for_timeout(2000)  # the form checks a changed value after a second
    page.get_by_role("button", name="Submit").click()
    refused = page.get_by_text(f"{FAST_DEFAULTS['window']} is greater than the maximum of {FAST_DEFAULTS['window'] - 1}",
                               exact=True)
    refused.wait_for()
    refused.scroll_into_view_if_needed()
    screenshot(page, "03-overlap-refused.png")
    page.wait_for_timeout(2000)
    assert farm_runs(deployment_id) == []  # refused before a run exists


def test_a_job_from_the_form_renders_on_the_gpu_pool_with_progress_and_a_report(studio, page):
    cluster, urls, deployment_id = studio
    open_form(page, studio)
    page.get_by_label("Reference", exact=True).fill(urls[0])
    page.get_by_label("Driving", exact=True).fill(urls[1])
    screenshot(page, "04-form-filled.png")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(rf".*/deployments/deployment/{deployment_id}(\?.*)?$"))
    (run,) = farm_runs(deployment_id)

    seen = watch_progress(page, cluster, run.id)
    job = finished(run.id, cluster)
    assert job.state.is_completed(), f"{job.state.message}\n{cluster.log_tail()}"
    total = len(segment_runs(job)) * STEPS
    during = sorted({done for done in seen if 0 < done < total})
    assert len(during) >= 2 and any(done % STEPS for done in during), seen  # it moved inside segments
    assert {r.work_pool_name for r in segment_runs(job)} == {"gpu"}
    assert all(re.fullmatch(r"job-[0-9a-f]{16}-segments?-[0-9-]+-try-1", r.name) for r in segment_runs(job))
    check_report(page, cluster, job)


def segment_runs(job) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    job_tag = next(tag for tag in job.tags if tag.startswith("job:"))
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[job_tag])))
    return [r for r in runs if r.id != job.id]


def finished(run_id, cluster):
    from prefect import get_client

    deadline = time.monotonic() + JOB_TIMEOUT
    with get_client(sync_client=True) as client:
        while not (run := client.read_flow_run(run_id)).state.is_final():
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(2)
    return run


def watch_progress(page, cluster, run_id) -> list[int]:
    """The job's progress as its run's Artifacts tab shows it, looked at until the job ends: the
    denoising steps done at each look. Screenshots of the job's run while it renders."""
    from prefect import get_client

    seen, shots = [], set()
    deadline = time.monotonic() + JOB_TIMEOUT
    with get_client(sync_client=True) as client:
        while not client.read_flow_run(run_id).state.is_final():
            assert time.monotonic() < deadline, cluster.log_tail()
            page.goto(f"{cluster.ui_url}/v2/runs/flow-run/{run_id}?tab=Artifacts", wait_until="networkidle")
            card = page.get_by_text(re.compile(r"rendering: \d+/\d+ denoising steps"))
            if card.count():
                done = int(re.search(r"rendering: (\d+)/", card.first.inner_text()).group(1))
                seen.append(done)
                if done and "05-job-rendering.png" not in shots:
                    screenshot(page, "05-job-rendering.png")
                    page.goto(f"{cluster.ui_url}/v2/runs/flow-run/{run_id}?tab=SubflowRuns", wait_until="networkidle")
                    screenshot(page, "06-segments-on-the-gpu-pool.png")
                    shots.add("05-job-rendering.png")
    return seen


def check_report(page, cluster, job) -> None:
    """The report artifact shows the contact sheet and download links that work."""
    import httpx
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from storage import ArtifactStore

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[job.id])))
    (report,) = [a for a in artifacts if (a.key or "").endswith("-report")]
    assert len([a for a in artifacts if a.key is None]) == 3  # the link artifacts: video and both previews
    page.goto(f"{cluster.ui_url}/v2/artifacts/artifact/{report.id}", wait_until="networkidle")
    sheet = page.get_by_role("img", name="Output frames beside their poses")
    sheet.wait_for()
    assert sheet.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(page, "07-report.png")
    links = page.get_by_role("link", name="download", exact=True)
    assert links.count() == 3
    video = links.first.get_attribute("href")
    assert video.startswith(cluster.env["CONTROLNEXT_LINK_ENDPOINT"])
    job_id = report.key.removesuffix("-report")
    expected = ArtifactStore(f"s3://{BUCKET}/prod").read_bytes(f"jobs/{job_id}/output/output.mp4")
    assert httpx.get(video).content == expected
