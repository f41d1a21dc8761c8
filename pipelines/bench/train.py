"""Benchmark 1: LoRA training, `llamafactory-cli train` (ours) vs the seeds' hand-written loop (theirs).

Both sides train the same first N CLUENER records for the same epochs (so the same steps), batch 16, lr 1e-4,
AdamW, the same LoRA (rank, alpha, dropout, all seven projections, from `--config`), the same tokenizer and chat
template, each in its own process. Ours is the project's config with overrides: dynamic padding (LLaMA-Factory's
collator), `train_sampling_strategy=group_by_length`, no gradient checkpointing (the tiny model needs no memory
saving), and the baseline's optimiser settings (constant lr, weight decay 0.01, no clipping) so that both sides
do the same maths. Theirs pads every sample to max_source + max_target + 1 and computes in fp32, as the seeds'
loop; ours in the config's precision: bf16 autocast where the CPU has native bf16 (`make train`'s rule), and
then the project scenario also runs ours in fp32 (`ours_fp32`), for the ratio at equal precision.

On a CUDA machine both sides run on the GPU (ours with `use_cpu=false`, bf16 as the config says).

Figures per side: samples/s and non-pad tokens/s over the training loop (model loading and tokenising
excluded on both sides), wall time of the whole process, peak RSS. `ratio` = ours / theirs samples/s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.bench import measure, seeds
from pipelines.bench.data import prepare
from pipelines.common import lfcli
from pipelines.common.device import has_cuda
from pipelines.common.flags import config_flag
from pipelines.common.paths import CONF_DIR, TINY_BASE, rel
from pipelines.train import launch as lftrain

DEFAULT_CONFIG = CONF_DIR / "tiny_lora_cluener.yaml"
FULL = {"samples": 480, "epochs": 1}
QUICK = {"samples": 64, "epochs": 1}
BATCH = 16
LR = 1e-4

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "2"


def ours_overrides(*, model: str, data_dir: Path, out_dir: Path, samples: int, epochs: int,
                   group_by_length: bool = True, dataset: str = "cluener_train") -> list[str]:
    """The `key=value` overrides of the project's LoRA config for the benchmark (pure)."""
    o = {
        "model_name_or_path": model,
        "dataset": dataset, "dataset_dir": str(data_dir), "eval_dataset": "null", "do_eval": "false",
        "max_samples": samples, "num_train_epochs": epochs, "cutoff_len": 1024,
        "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1,
        "learning_rate": LR, "lr_scheduler_type": "constant", "warmup_ratio": 0, "weight_decay": 0.01,
        "max_grad_norm": 0,
        "disable_gradient_checkpointing": "true",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0, "preprocessing_num_workers": 1, "overwrite_cache": "true",
        "output_dir": str(out_dir), "overwrite_output_dir": "true", "save_strategy": "'no'",
        "eval_strategy": "'no'",
        "logging_steps": 1000, "plot_loss": "false", "report_to": "none", "seed": 0,
    }
    if group_by_length:
        o["train_sampling_strategy"] = "group_by_length"
    return [f"{k}={v}" for k, v in o.items()]


def _config(config: Path) -> dict[str, Any]:
    return yaml.safe_load(config.read_text(encoding="utf-8")) or {}


def precision_overrides(config: Path, cuda: bool) -> list[str]:
    """What `make train` would add for this machine: `use_cpu=false` on a CUDA machine (the tiny configs say
    `use_cpu: true`), `bf16=false` on a CPU without native bf16."""
    if cuda:
        return ["use_cpu=false"]
    return lftrain.precision_overrides(_config(config))


def lora_settings(config: Path) -> dict[str, Any]:
    raw = _config(config)
    return {"rank": int(raw.get("lora_rank", 8)), "alpha": int(raw.get("lora_alpha", 16)),
            "dropout": float(raw.get("lora_dropout", 0.0)), "target": raw.get("lora_target", "all")}


def run_ours(config: Path, overrides: list[str], work: Path, tag: str, samples: int) -> dict[str, Any]:
    """One `llamafactory-cli train` run; `samples` = records x epochs (HF rounds its samples/s to 3 decimals)."""
    out_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")))
    run = measure.run_child(lfcli.cli("train", str(config), *overrides), work / f"ours-{tag}.log", env=lfcli.cli_env())
    measure.check_child(run, "`llamafactory-cli train` (ours)")
    res = json.loads((out_dir / "all_results.json").read_text())
    state = json.loads((out_dir / "trainer_state.json").read_text())
    seconds = res["train_runtime"]
    tokens = state.get("num_input_tokens_seen") or res.get("num_input_tokens_seen")
    return {
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds if tokens else None,
        "train_seconds": seconds,
        "process_seconds": run.seconds,
        "process_cpu_s": run.cpu_seconds,
        "peak_rss_mib": run.peak_rss_mib,
        "steps": state.get("global_step"),
        "samples": samples,
        "tokens": tokens,
        "train_loss_mean": res.get("train_loss"),
    }


def run_theirs(args: list[str], work: Path, tag: str) -> dict[str, Any]:
    out = work / f"theirs-{tag}.json"
    cmd = [sys.executable, "-m", "pipelines.bench.seeds", "train", *args, "--out", str(out)]
    run = measure.run_child(cmd, work / f"theirs-{tag}.log", env=lfcli.cli_env())
    measure.check_child(run, "the seeds' training loop (theirs)")
    res = json.loads(out.read_text())
    return {**res, "process_seconds": run.seconds, "process_cpu_s": run.cpu_seconds, "peak_rss_mib": run.peak_rss_mib}


SCENARIOS = {
    "project": "the project's records: system + the instruction listing the 10 types + the text",
    "seeds_prompt": "the same records with the seeds' short prompt: the one-line system instruction, user = the text",
}


def seeds_prompt_records(records: list[dict]) -> list[dict]:
    """The same samples in the seeds' prompt shape (dict form): system = the one-line instruction, user = text."""
    return [{"id": r["id"], "system": r["system"], "instruction": r["input"] or r["instruction"], "input": "",
             "output": r["output"]} for r in records]


def write_seeds_prompt_data(data_dir: Path) -> Path:
    """`data_dir/cluener_seedsprompt_train.json` and its dataset_info entry; the file."""
    from pipelines.data.convert import update_dataset_info

    records = json.loads((data_dir / "cluener_train.json").read_text(encoding="utf-8"))
    path = data_dir / "cluener_seedsprompt_train.json"
    path.write_text(json.dumps(seeds_prompt_records(records), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    update_dataset_info(data_dir / "dataset_info.json", "cluener_seedsprompt", ["train"])
    return path


def scenario_result(scenario: str, dataset: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """One scenario's summaries, ratios and theirs' padding (pure)."""
    ours_runs, their_runs = runs["ours"], runs["theirs"]
    ours, theirs = measure.summarise_runs(ours_runs), measure.summarise_runs(their_runs)
    med = measure.median_of
    last = their_runs[-1]
    out: dict[str, Any] = {
        "description": SCENARIOS[scenario],
        "dataset": dataset,
        "ratio": measure.ratio(med(ours, "samples_per_s"), med(theirs, "samples_per_s")),
        "ratios": {
            "samples_per_s": measure.ratio(med(ours, "samples_per_s"), med(theirs, "samples_per_s")),
            "tokens_per_s": measure.ratio(med(ours, "tokens_per_s"), med(theirs, "tokens_per_s")),
            "peak_rss (theirs/ours)": measure.ratio(med(theirs, "peak_rss_mib"), med(ours, "peak_rss_mib")),
        },
        "theirs_padding": {
            "max_source": last["max_source"], "max_target": last["max_target"],
            "longest_prompt": last["longest_prompt"], "longest_response": last["longest_response"],
            "mean_prompt": last.get("mean_prompt"), "mean_response": last.get("mean_response"),
            "prompts_longer_than_seed_max_source": last.get("prompts_longer_than_seed_max_source"),
            "prompts_truncated": last["prompts_truncated"], "responses_truncated": last["responses_truncated"],
            "pad_fraction": last["pad_fraction"],
        },
        "ours": ours, "theirs": theirs, "runs": runs,
    }
    if "ours_fp32" in runs:
        fp32 = measure.summarise_runs(runs["ours_fp32"])
        out["ours_fp32"] = fp32
        out["ratios"]["samples_per_s at equal precision (ours fp32)"] = measure.ratio(
            med(fp32, "samples_per_s"), med(theirs, "samples_per_s"))
    return out


def run_sides(scenario: str, sides: list[str], repeats: int, config: Path, ours_args, their_args: list[str],
              work: Path, samples: int, echo) -> dict[str, list[dict[str, Any]]]:
    """Every side of one scenario, `repeats` times, alternating the order from one repeat to the next."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for i in range(repeats):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            echo(f"train [{scenario}]: repeat {i + 1}/{repeats}: {side} …")
            tag = f"{scenario}-{side}-{i}"
            if side.startswith("ours"):
                r = run_ours(config, ours_args(side, tag), work, tag, samples)
            else:
                r = run_theirs(their_args, work, tag)
            runs[side].append(r)
            echo(f"train [{scenario}]:   {side}: {r['samples_per_s']:.2f} samples/s, "
                 f"{r['tokens_per_s'] or 0:.0f} tokens/s, peak RSS {r['peak_rss_mib']:.0f} MiB")
    return runs


def bench(work: Path, *, repeats: int, quick: bool, model: str = TINY_BASE, config: Path = DEFAULT_CONFIG,
          samples: int | None = None, epochs: int | None = None, data_source: str = "auto",
          max_source: int = 0, max_target: int = seeds.SEED_MAX_TARGET, group_by_length: bool = True,
          scenarios: tuple[str, ...] = tuple(SCENARIOS), echo=print) -> dict[str, Any]:
    size = QUICK if quick else FULL
    samples = samples or size["samples"]
    epochs = epochs or size["epochs"]
    data = prepare(work, data_source)
    write_seeds_prompt_data(data.dir)
    lora = lora_settings(config)
    cuda = has_cuda()
    precision = precision_overrides(config, cuda)
    ours_bf16 = "bf16=false" not in precision and config_flag(_config(config), "bf16")
    echo(f"train: {samples} samples x {epochs} epoch(s), batch {BATCH}, LoRA r{lora['rank']}, "
         f"{data.source} CLUENER ({data.train_records} train records), {repeats} repeat(s)")
    per: dict[str, Any] = {}
    for scenario in scenarios:
        dataset = {"project": "cluener_train", "seeds_prompt": "cluener_seedsprompt_train"}[scenario]
        their_args = ["--model", model, "--data", str(data.dir / f"{dataset}.json"), "--samples", str(samples),
                      "--epochs", str(epochs), "--batch-size", str(BATCH), "--lr", str(LR),
                      "--max-source", str(max_source), "--max-target", str(max_target),
                      "--lora-rank", str(lora["rank"]), "--lora-alpha", str(lora["alpha"]),
                      "--lora-dropout", str(lora["dropout"])]
        if cuda:
            their_args += ["--device", "cuda"]
        sides = ["ours", "theirs"] + (["ours_fp32"] if ours_bf16 and scenario == "project" else [])

        def ours_args(side: str, tag: str, dataset: str = dataset) -> list[str]:
            return ours_overrides(model=model, data_dir=data.dir, out_dir=work / f"ours-out-{tag}", samples=samples,
                                  epochs=epochs, group_by_length=group_by_length, dataset=dataset) \
                + precision + (["bf16=false"] if side == "ours_fp32" else [])

        runs = run_sides(scenario, sides, repeats, config, ours_args, their_args, work, samples * epochs, echo)
        per[scenario] = scenario_result(scenario, dataset, runs)
    result = measure.envelope("train", quick=quick, repeats=repeats, settings={
        "model": model, "config": rel(config),
        "data": {"source": data.source, "raw": str(data.raw), "records": samples},
        "samples": samples, "epochs": epochs, "batch_size": BATCH, "learning_rate": LR, "lora": lora,
        "ours_overrides": ours_overrides(model=model, data_dir=Path("<work>/data"), out_dir=Path("<work>/out"),
                                         samples=samples, epochs=epochs, group_by_length=group_by_length),
        "theirs_max_source_rule": "the longest rendered prompt of the samples: the seeds' 80 was their longest "
                                  "prompt; the project's prompts carry the type list in the user turn, so 80 would "
                                  "cut them (see prompts_longer_than_seed_max_source)" if max_source == 0
                                  else f"given: {max_source}",
        "device": "cuda" if cuda else "cpu",
        "ours_precision": ("bf16 (CUDA)" if cuda else "bf16 autocast (the CPU has native bf16)") if ours_bf16
                          else "fp32",
        "theirs_precision": "fp32 (the seeds' loop)",
        "theirs_dataloader_workers": 0,
        "threads": lfcli.cli_env().get("OMP_NUM_THREADS"),
    })
    head = per.get("project") or next(iter(per.values()))
    result.update({"ratio": head["ratio"], "ratio_scenario": "project" if "project" in per else scenarios[0],
                   "ratios": head["ratios"], "target_ratio": 1.5, "ours": head["ours"], "theirs": head["theirs"],
                   "scenarios": per})
    return result


FIGURES = [("samples/s", "samples_per_s"), ("tokens/s (non-pad)", "tokens_per_s"),
           ("train loop s", "train_seconds"), ("process wall s", "process_seconds"),
           ("process CPU s", "process_cpu_s"), ("peak RSS MiB", "peak_rss_mib")]


def render(result: dict[str, Any]) -> str:
    parts = []
    for name, sc in result["scenarios"].items():
        fp32 = sc.get("ours_fp32")
        rows = [[label, measure.spread(sc["ours"].get(k)), *([measure.spread(fp32.get(k))] if fp32 else []),
                 measure.spread(sc["theirs"].get(k))] for label, k in FIGURES]
        r, pad = sc["ratios"], sc["theirs_padding"]
        precision = result["settings"].get("ours_precision", "fp32")
        equal = r.get("samples_per_s at equal precision (ours fp32)")
        parts.append(
            f"train, {name}: {sc['description']}\n"
            + measure.table(["figure", f"ours (LLaMA-Factory, {precision})", *(["ours in fp32"] if fp32 else []),
                            "theirs (seeds' loop, fp32)"], rows)
            + f"\nratio samples/s ours/theirs: {measure.fmt(r['samples_per_s'])} (target ≥ {result['target_ratio']}); "
            + (f"at equal precision (ours in fp32): {measure.fmt(equal)}; " if equal else "")
            + f"tokens/s: {measure.fmt(r['tokens_per_s'])}; "
            f"peak RSS theirs/ours: {measure.fmt(r['peak_rss (theirs/ours)'])}"
            f"\nsamples: prompt {measure.fmt(pad.get('mean_prompt'))} tokens on average (longest {pad['longest_prompt']}), "
            f"answer {measure.fmt(pad.get('mean_response'))} (longest {pad['longest_response']}); theirs pads every "
            f"sample to {pad['max_source']}+{pad['max_target']}+1 = {pad['max_source'] + pad['max_target'] + 1}, "
            f"{pad['pad_fraction']:.0%} of its positions are padding")
    return "\n\n".join(parts)
