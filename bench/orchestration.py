"""Orchestration overhead: seconds per segment spent outside rendering, in-process and distributed.

    python bench/orchestration.py [--seconds 4] [--segment-length 8] [--workers 2]

Starts its own Prefect server (and, for the distributed modes, process workers on a `gpu` pool),
renders the same small job (tiny model, CPU) once per mode, and reads every segment run's
timings back from Prefect and from the segment records. Modes: in-process; distributed with one
segment per render-segment run; distributed with the automatic segments per run (the job spread
over the runs in flight, each loading the model once). Per segment (a run's times shared among
its segments):
  render      the segment's own work: pose rendering, denoising, decoding, writing frames
  load        loading the pipeline (once per process)
  in-run      the rest of the run's time (engine, process start, store, artifacts)
  dispatch    from the run's creation to its start (queueing and worker pick-up)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def segment_timings(job_id: str, store_url: str) -> list[dict]:
    """One row per segment: its render time and its share of its run's other times."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from storage import ArtifactStore, JobLayout

    store, layout = ArtifactStore(store_url), JobLayout(job_id)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=f"{job_id}-segment")))
    rows = []
    for run in runs:
        if not (run.state and run.state.is_completed() and run.start_time and run.end_time):
            continue
        segments = run.parameters["segments"]
        records = [store.read_json(layout.segment_record(k)) for k in segments]
        render = sum(r["render_seconds"] for r in records)
        load = sum(r["load_seconds"] for r in records)
        total = (run.end_time - run.start_time).total_seconds()
        share = len(segments)
        for record in records:
            rows.append(dict(
                segment=record["segment"], render=record["render_seconds"], load=load / share,
                in_run=(total - render - load) / share, dispatch=(run.start_time - run.created).total_seconds() / share,
            ))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="driving clip length")
    parser.add_argument("--segment-length", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-orchestration-"))
    from flows.localcluster import LocalCluster

    cluster = LocalCluster(work / "home", work / "logs", extra_env=dict(CONTROLNEXT_WORK_DIR=str(work / "scratch")))
    cluster.start()
    os.environ.update(PREFECT_API_URL=cluster.url, CONTROLNEXT_WORK_DIR=str(work / "scratch"))
    try:
        from controlnext_video.factory import save_tiny_model
        from flows.demo import make_demo_inputs
        from flows.render import render
        from flows.request import RenderRequest

        model = save_tiny_model(work / "model")
        reference, driving = make_demo_inputs(work / "inputs", seconds=args.seconds)
        cluster.setup()
        for i in range(args.workers):
            cluster.start_worker("gpu", f"bench-gpu-{i}")
        print(f"clip {args.seconds:.0f} s, segments of {args.segment_length} frames, {args.workers} workers (CPU)")
        print(f"{'mode':<18} {'segments':>8} {'render s':>9} {'load s':>7} {'in-run s':>9} {'dispatch s':>10} "
              f"{'outside/seg':>11} {'stage wall':>10}")
        modes = (("in-process", "local", 0), ("distributed 1/run", "deployment", 1),
                 ("distributed auto", "deployment", 0))
        for label, mode, per_run in modes:
            request = RenderRequest(
                reference=str(reference), driving=str(driving), model=str(model), store=str(work / f"store-{mode}-{per_run}"),
                height=96, width=64, steps=2, window=4, overlap=1, stride=2, decode_chunk_size=4,
                segment_length=args.segment_length, segment_overlap=2, dispatch=mode, segments_per_run=per_run,
                max_in_flight=args.workers, job_id=f"bench-{mode}-{per_run}",
            )
            start = time.perf_counter()
            result = render(request)
            wall = time.perf_counter() - start
            rows = segment_timings(result["job_id"], request.store)
            mean = {k: statistics.mean(r[k] for r in rows) for k in ("render", "load", "in_run", "dispatch")}
            outside = mean["load"] + mean["in_run"] + mean["dispatch"]
            print(f"{label:<18} {len(rows):>8} {mean['render']:>9.2f} {mean['load']:>7.2f} {mean['in_run']:>9.2f} "
                  f"{mean['dispatch']:>10.2f} {outside:>11.2f} {result['timings']['render']:>10.1f}  (job {wall:.0f} s)")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
