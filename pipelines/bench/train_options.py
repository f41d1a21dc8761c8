"""Benchmark: what LLaMA-Factory and the HF Trainer already offer to train the tiny configs faster, at equal precision.

Every option runs `llamafactory-cli train` on the train benchmark's setup (the same records, steps, LoRA and
optimiser; `pipelines.bench.train.ours_overrides`) in fp32, the seeds' precision, with one change each:
packing, neat packing, torch.compile, random batches instead of `group_by_length`, dataloader workers, and the
batch shape at equal tokens per optimiser step (8 x 2 and 4 x 4 accumulation instead of 16 x 1). Each repeat
trains the baseline and every option with the same seed (seed i in repeat i), so each option's figures pair with
the baseline's of the same repeat.

An option is **kept** when it is faster in every repeat (its slowest samples/s above the baseline's fastest)
and its mean train loss lies within the baseline's run-to-run spread across the seeds (the noise); with one
repeat there is no spread and nothing is kept ("undecided"). Samples/s counts the records trained (packing puts
several in one sequence, so its steps are fewer; the records are the same).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.bench import measure
from pipelines.bench import train as tb
from pipelines.bench.data import prepare
from pipelines.common.device import has_cuda
from pipelines.common.paths import TINY_BASE, rel

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "1"

#: name -> (what it changes, its overrides on top of the benchmark's; the last value of a key wins)
OPTIONS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("the train benchmark's config in fp32 (group_by_length, batch 16 x 1)", []),
    "random_batches": ("no group_by_length: random batches, dynamic padding only", ["train_sampling_strategy=random"]),
    "packing": ("`packing`: records concatenated into 1024-token sequences, batch 4",
                ["packing=true", "per_device_train_batch_size=4"]),
    "neat_packing": ("`neat_packing`: packing without attention across records, batch 4",
                     ["packing=true", "neat_packing=true", "per_device_train_batch_size=4"]),
    "torch_compile": ("`torch_compile`: the model compiled by torch.compile", ["torch_compile=true"]),
    "dataloader_workers": ("`dataloader_num_workers=2`", ["dataloader_num_workers=2"]),
    "batch_8x2": ("batch 8 with 2 accumulation steps (equal tokens per optimiser step)",
                  ["per_device_train_batch_size=8", "gradient_accumulation_steps=2"]),
    "batch_4x4": ("batch 4 with 4 accumulation steps (equal tokens per optimiser step)",
                  ["per_device_train_batch_size=4", "gradient_accumulation_steps=4"]),
}
QUICK_OPTIONS = ("baseline", "random_batches")
FULL = {"samples": 480}
QUICK = {"samples": 32}


def merged(base: list[str], extra: list[str]) -> list[str]:
    """`key=value` overrides with the later value of a key winning, in first-seen key order (pure)."""
    out: dict[str, str] = {}
    for item in (*base, *extra):
        key, value = item.split("=", 1)
        out[key] = value
    return [f"{k}={v}" for k, v in out.items()]


def verdict(base_runs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[bool | None, str]:
    """(kept, why) for one option against the baseline's runs of the same seeds (pure; see the module doc)."""
    if len(base_runs) < 2:
        return None, "undecided: one repeat gives no run-to-run spread"
    speed = [r["samples_per_s"] for r in runs]
    base_speed = [r["samples_per_s"] for r in base_runs]
    loss = [r["train_loss_mean"] for r in runs]
    base_loss = [r["train_loss_mean"] for r in base_runs]
    noise = max(base_loss) - min(base_loss)
    shift = abs(measure.summarise(loss)["median"] - measure.summarise(base_loss)["median"])
    faster = min(speed) > max(base_speed)
    same_loss = shift <= noise
    why = (f"{'faster' if faster else 'not faster'} in every repeat; loss moved {shift:.4f} against a seed "
           f"spread of {noise:.4f}")
    return faster and same_loss, why


def bench(work: Path, *, repeats: int, quick: bool, model: str = TINY_BASE, config: Path = tb.DEFAULT_CONFIG,
          samples: int | None = None, data_source: str = "auto", options: tuple[str, ...] | None = None,
          echo=print) -> dict[str, Any]:
    samples = samples or (QUICK if quick else FULL)["samples"]
    names = options or (QUICK_OPTIONS if quick else tuple(OPTIONS))
    if "baseline" not in names:
        names = ("baseline", *names)
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise measure.BenchError(f"unknown option `{unknown[0]}`; choose from {', '.join(OPTIONS)}.")
    data = prepare(work, data_source)
    cuda = has_cuda()
    precision = ["use_cpu=false"] if cuda else ["bf16=false"]
    echo(f"train options: {len(names)} configurations x {repeats} repeat(s), {samples} samples, fp32, "
         f"{data.source} CLUENER")
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i in range(repeats):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            tag = f"{name}-{i}"
            base = tb.ours_overrides(model=model, data_dir=data.dir, out_dir=work / f"out-{tag}", samples=samples,
                                     epochs=1)
            overrides = merged(base, [*precision, f"seed={i}", *OPTIONS[name][1]])
            r = tb.run_ours(config, overrides, work, tag, samples)
            runs[name].append(r)
            echo(f"train options: repeat {i + 1}/{repeats} {name}: {r['samples_per_s']:.2f} samples/s, "
                 f"loss {r['train_loss_mean']:.4f}")
    base_summary = measure.summarise_runs(runs["baseline"])
    rows: list[dict[str, Any]] = []
    for name in names:
        summary = measure.summarise_runs(runs[name])
        kept, why = (None, "the reference") if name == "baseline" else verdict(runs["baseline"], runs[name])
        rows.append({"name": name, "change": OPTIONS[name][0], "overrides": OPTIONS[name][1], "kept": kept,
                     "why": why, "ratio": measure.ratio(measure.median_of(summary, "samples_per_s"),
                                                       measure.median_of(base_summary, "samples_per_s")),
                     "summary": summary, "runs": runs[name]})
    result = measure.envelope("train_options", quick=quick, repeats=repeats, settings={
        "model": rel(model), "config": rel(config), "samples": samples, "epochs": 1, "precision": "fp32",
        "device": "cuda" if cuda else "cpu", "data": data.source,
        "rule": "kept = faster in every repeat and the loss within the baseline's seed spread",
    })
    best = max((r for r in rows if r["kept"]), key=lambda r: r["ratio"] or 0.0, default=None)
    result.update({"options": rows, "best_kept": best["name"] if best else None,
                   "ratio": best["ratio"] if best else 1.0})
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for o in result["options"]:
        s = o["summary"]
        kept = {True: "kept", False: "not kept", None: "-" if o["name"] == "baseline" else "undecided"}[o["kept"]]
        rows.append([o["name"], measure.spread(s.get("samples_per_s")), measure.fmt(o["ratio"]),
                     measure.spread(s.get("train_loss_mean")), kept, o["change"]])
    return (f"train options at equal precision (fp32), {result['settings']['samples']} samples, "
            f"{result['repeats']} repeat(s); ratio = samples/s / the baseline's\n"
            + measure.table(["option", "samples/s", "ratio", "mean train loss", "verdict", "change"], rows)
            + f"\nkept: {result.get('best_kept') or 'none'} ({result['settings']['rule']})")
