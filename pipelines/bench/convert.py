"""Benchmark 3: converting the real CLUENER (ours vs the seeds' plain loop), and the server's launch to ready.

- convert: `python -m pipelines convert cluener --raw ../shared/datasets/cluener2020` (ours: row checks,
  duplicate detection, counts, atomic writes, dataset_info.json) vs `python -m pipelines.bench.seeds convert`
  (theirs: a plain loop, list form, no checks), each as its own process, timed from launch to exit (interpreter
  start included on both sides). records/s = records read (train + dev) / wall seconds. `ratio` = ours / theirs.
- launch: `pipelines.serve.start` of the tiny base + one adapter until `/v1/models` lists both: seconds to
  ready and the memory (PSS and RSS summed over the server's processes) at that moment (ours only: the seeds
  ran the same `vllm serve` by hand, so there is no other side to compare).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pipelines.bench import measure, server
from pipelines.bench.data import pick_raw, prepare

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "2"


def ours(raw: Path, work: Path, tag: str) -> dict[str, Any]:
    out = work / f"ours-{tag}"
    cmd = [sys.executable, "-m", "pipelines.data.convert", "cluener", "--raw", str(raw), "--out-dir", str(out)]
    run = measure.run_child(cmd, work / f"ours-{tag}.log")
    measure.check_child(run, "`python -m pipelines convert cluener` (ours)")
    n = sum(len(json.loads(p.read_text(encoding="utf-8"))) for p in out.glob("cluener_*.json"))
    return {"records_per_s": n / run.seconds, "records": n, "seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib}


def theirs(raw: Path, work: Path, tag: str) -> dict[str, Any]:
    out = work / f"theirs-{tag}.json"
    cmd = [sys.executable, "-m", "pipelines.bench.seeds", "convert", "--raw", str(raw),
           "--out-dir", str(work / f"theirs-{tag}"), "--out", str(out)]
    run = measure.run_child(cmd, work / f"theirs-{tag}.log")
    measure.check_child(run, "the seeds' conversion (theirs)")
    n = json.loads(out.read_text())["records"]
    return {"records_per_s": n / run.seconds, "records": n, "seconds": run.seconds, "peak_rss_mib": run.peak_rss_mib}


def bench(work: Path, *, repeats: int, quick: bool, launches: int | None = None, port: int | None = None,
          adapter: str | None = None, data_source: str = "auto", echo=print) -> dict[str, Any]:
    kind, raw = pick_raw(data_source)
    source = "real" if kind == "real" else f"sample ({'asked for' if data_source == 'sample' else 'the real set is missing'})"
    echo(f"convert: {source} CLUENER from {raw}, {repeats} repeat(s)")
    ours_runs: list[dict[str, Any]] = []
    their_runs: list[dict[str, Any]] = []
    for i in range(repeats):
        for side in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
            r = ours(raw, work, str(i)) if side == "ours" else theirs(raw, work, str(i))
            (ours_runs if side == "ours" else their_runs).append(r)
            echo(f"convert: repeat {i + 1}/{repeats} {side}: {r['records']} records in {r['seconds']:.2f} s "
                 f"= {r['records_per_s']:.0f} records/s")
    o, t = measure.summarise_runs(ours_runs), measure.summarise_runs(their_runs)

    launches = repeats if launches is None else launches
    launch_runs = []
    if launches:
        data = prepare(work, "auto")
        adapter_path = server.ensure_adapter(work, data.dir, adapter, echo=echo)
        for i in range(launches):
            with server.running(adapter_path, work / f"launch-{i}", port, echo=echo) as srv:
                launch_runs.append({"ready_seconds": srv.ready_seconds, "rss_at_ready_mib": srv.rss_at_ready_mib,
                                    "pss_at_ready_mib": srv.pss_at_ready_mib})
    result = measure.envelope("convert", quick=quick, repeats=repeats, settings={
        "data": {"source": source, "raw": str(raw)},
        "ours": "python -m pipelines convert cluener --raw RAW --out-dir DIR (dict form)",
        "theirs": "python -m pipelines.bench.seeds convert (list form, no checks)",
        "launch": "pipelines.serve.start: tiny base + 1 LoRA adapter, ready when /v1/models lists both",
        "launches": launches,
    })
    result.update({
        "ratio": measure.ratio(measure.median_of(o, "records_per_s"), measure.median_of(t, "records_per_s")),
        "ours": o, "theirs": t,
        "launch": measure.summarise_runs(launch_runs) if launch_runs else None,
        "runs": {"ours": ours_runs, "theirs": their_runs, "launch": launch_runs},
    })
    return result


def render(result: dict[str, Any]) -> str:
    rows = [["records/s", measure.spread(result["ours"].get("records_per_s")),
             measure.spread(result["theirs"].get("records_per_s"))],
            ["wall s", measure.spread(result["ours"].get("seconds")), measure.spread(result["theirs"].get("seconds"))],
            ["peak RSS MiB", measure.spread(result["ours"].get("peak_rss_mib")),
             measure.spread(result["theirs"].get("peak_rss_mib"))]]
    text = (f"convert: {result['settings']['data']['source']} CLUENER, train + dev\n"
            + measure.table(["convert", "ours (pipelines.data.convert)", "theirs (plain loop)"], rows)
            + f"\nratio records/s ours/theirs: {measure.fmt(result['ratio'])}")
    la = result.get("launch")
    if la:
        text += (f"\nserver launch to ready: {measure.spread(la.get('ready_seconds'))} s; memory at ready: "
                 f"PSS {measure.spread(la.get('pss_at_ready_mib'))} MiB, "
                 f"RSS {measure.spread(la.get('rss_at_ready_mib'))} "
                 "MiB (sums over the server's processes; RSS counts shared pages once per process)")
    return text
