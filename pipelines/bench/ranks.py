"""Benchmark: training samples/s of one rank against two (DDP through `make train NPROC_PER_NODE=2`), same cores.

Each repeat trains the train benchmark's setup (`pipelines.bench.train.ours_overrides`: the same records, LoRA and
optimiser) with a global batch of 16 (8 per device × 2 accumulation) twice, as `make train` runs it: one process,
then two ranks through llamafactory-cli's torchrun path, where the launcher halves the accumulation (8 × 1 per
rank) so that the global batch stays 16, and the ranks split the cores between them (gloo on the CPU). Same seed,
same records. Samples/s is the records trained over the Trainer's `train_runtime` (rank 0's), as in the train
benchmark; the loss is the run's mean train loss, from its manifest, which also records `world_size` and
`global_batch`.

On one CPU the two ranks share the same cores, so two ranks are not expected to be faster: the figure shows that
the ranks train the same global batch to the same loss and what the gradient exchange costs here. On GPUs each
rank has its own device, and the same command scales.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.bench import measure
from pipelines.bench import train as tb
from pipelines.bench.data import prepare
from pipelines.common.device import has_cuda, usable_cores
from pipelines.common.paths import TINY_BASE, TRAIN_MANIFEST, rel
from pipelines.train.launch import CONTROL_VARS, DIST_VARS

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "1"
WORLDS = (1, 2)
BATCH, ACCUMULATION = 8, 2  # a global batch of 16, the train benchmark's; two ranks train 8 × 1 each
FULL = {"samples": 480}
QUICK = {"samples": 32}


def overrides(*, model: str, data_dir: Path, out_dir: Path, samples: int, cuda: bool, seed: int) -> list[str]:
    """The `key=value` overrides of one run (pure): the train benchmark's, with the batch as 8 × 2."""
    base = tb.ours_overrides(model=model, data_dir=data_dir, out_dir=out_dir, samples=samples, epochs=1)
    extra = [f"per_device_train_batch_size={BATCH}", f"gradient_accumulation_steps={ACCUMULATION}", f"seed={seed}",
             *(["use_cpu=false"] if cuda else [])]
    keys = {e.split("=", 1)[0] for e in extra}
    return [o for o in base if o.split("=", 1)[0] not in keys] + extra


def environ(world: int) -> dict[str, str]:
    """This process's environment without launch variables a developer may have exported; NPROC_PER_NODE=world,
    also for one rank (unset, the launcher would start a rank per visible GPU)."""
    env = {k: v for k, v in os.environ.items() if k not in (*DIST_VARS, *CONTROL_VARS)}
    env["NPROC_PER_NODE"] = str(world)
    return env


def run(config: Path, args: list[str], work: Path, tag: str, samples: int, world: int) -> dict[str, Any]:
    """One `python -m pipelines train` run (what `make train` runs) on `world` ranks."""
    out_dir = Path(next(o.split("=", 1)[1] for o in args if o.startswith("output_dir=")))
    cmd = [sys.executable, "-m", "pipelines", "train", str(config), *args, "--no-check"]
    child = measure.run_child(cmd, work / f"ranks-{tag}.log", env=environ(world))
    measure.check_child(child, f"`make train` on {world} rank(s)")
    res = json.loads((out_dir / "all_results.json").read_text())
    manifest = json.loads((out_dir / TRAIN_MANIFEST).read_text())
    seconds = res["train_runtime"]
    return {
        "samples_per_s": samples / seconds,
        "train_seconds": seconds,
        "process_seconds": child.seconds,
        "process_cpu_s": child.cpu_seconds,
        "steps": (manifest.get("results") or {}).get("global_step"),
        "samples": samples,
        "world_size": manifest["world_size"],
        "global_batch": manifest["global_batch"],
        "train_loss_mean": res.get("train_loss"),
    }


def bench(work: Path, *, repeats: int, quick: bool, model: str = TINY_BASE, config: Path = tb.DEFAULT_CONFIG,
          samples: int | None = None, data_source: str = "auto", echo=print) -> dict[str, Any]:
    samples = samples or (QUICK if quick else FULL)["samples"]
    data = prepare(work, data_source)
    cuda = has_cuda()
    echo(f"ranks: {' and '.join(map(str, WORLDS))} ranks x {repeats} repeat(s), {samples} samples, global batch "
         f"{BATCH * ACCUMULATION}, {data.source} CLUENER, {usable_cores()} cores")
    runs: dict[int, list[dict[str, Any]]] = {w: [] for w in WORLDS}
    for i in range(repeats):
        for world in (WORLDS if i % 2 == 0 else WORLDS[::-1]):
            tag = f"{world}-{i}"
            args = overrides(model=model, data_dir=data.dir, out_dir=work / f"out-{tag}", samples=samples, cuda=cuda,
                             seed=i)
            r = run(config, args, work, tag, samples, world)
            runs[world].append(r)
            echo(f"ranks: repeat {i + 1}/{repeats}, {world} rank(s): {r['samples_per_s']:.2f} samples/s, loss "
                 f"{r['train_loss_mean']:.4f}, global batch {r['global_batch']}")
    summaries = {w: measure.summarise_runs(runs[w]) for w in WORLDS}
    sides = {str(w): {"summary": summaries[w], "runs": runs[w]} for w in WORLDS}
    one, two = (measure.median_of(summaries[w], "samples_per_s") for w in WORLDS)
    loss_one, loss_two = (measure.median_of(summaries[w], "train_loss_mean") for w in WORLDS)
    result = measure.envelope("ranks", quick=quick, repeats=repeats, settings={
        "model": rel(model), "config": rel(config), "samples": samples, "epochs": 1,
        "batch": f"{BATCH} per device x {ACCUMULATION} accumulation on 1 rank, split by `make train` on more",
        "device": "cuda" if cuda else "cpu", "cores": usable_cores(), "data": data.source,
    })
    result.update({
        "sides": sides,
        "ratio": measure.ratio(two, one),
        "loss_difference": abs(loss_two - loss_one) / loss_one if loss_one and loss_two is not None else None,
        "same_global_batch": len({r["global_batch"] for w in WORLDS for r in runs[w]}) == 1,
    })
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for world, side in result["sides"].items():
        s = side["summary"]
        rows.append([world, measure.spread(s.get("samples_per_s")), measure.spread(s.get("train_seconds")),
                     measure.spread(s.get("global_batch")), measure.spread(s.get("train_loss_mean"))])
    st = result["settings"]
    where = ("each rank on its own GPU" if st.get("device") == "cuda" else
             f"both on the same {st.get('cores')} CPU cores, so the point is correctness, not speed")
    return (f"1 rank against 2 ranks (`make train NPROC_PER_NODE=2`), {st['samples']} samples, {result['repeats']} "
            f"repeat(s), {where}; ratio = 2 ranks' samples/s / 1 rank's\n"
            + measure.table(["ranks", "samples/s", "train s", "global batch", "mean train loss"], rows)
            + f"\nratio {measure.fmt(result.get('ratio'))}; same global batch: {result.get('same_global_batch')}; "
              f"train loss differs by {measure.fmt((result.get('loss_difference') or 0) * 100)}%")
