"""`make check`: validate a LLaMA-Factory training config before anything is launched.

    python -m pipelines check CONFIG [key=value …] [--no-lengths]

Collects every problem and prints one sentence each (the key or file in backticks and what to do), then exits 1;
warnings (e.g. `cutoff_len` below the data's p99 length) are printed but do not fail. The checks:

1. LLaMA-Factory's own parser (`get_train_args`) accepts the merged config (YAML + `key=value` overrides, merged
   with OmegaConf exactly as `llamafactory-cli` merges them); unknown keys are named one by one, and values of the
   wrong type for their dataclass field (which `parse_dict` lets through) are named too. Parsing reads no
   weights and needs no hub access, so hub ids (`Qwen/Qwen2.5-7B-Instruct`) are validated offline as they are.
   Two things are taken out of the parsed copy because they depend on the machine, not on the config:
   `deepspeed` (its file is checked here instead; the parser would import DeepSpeed and demand torchrun) and
   `bf16`/`fp16` on a machine without a GPU (the parser refuses them there; a note says so), unless the config
   sets `use_cpu` (then they are CPU autocast, which the parser accepts).
2. Every `dataset` / `eval_dataset` is in `dataset_dir/dataset_info.json` and its file exists.
3. `template` is one of LLaMA-Factory's templates and fits the model family: `model_type` from the model's
   `config.json` when the model is local, inferred from the name for a hub id (qwen2.5 → qwen2 → `qwen`).
4. The adapter will be servable by vLLM: no `resize_vocab`, no `additional_target` (PEFT `modules_to_save`), no
   DoRA, `lora_rank` at most 512 (vLLM's `--max-lora-rank` choices are 1 8 16 32 64 128 256 320 512).
5. Warning when `cutoff_len` is below the p99 token length of the training data (`pipelines.data.lengths`, with the
   model's tokenizer and the template); only for a local model, since the tokenizer is needed.
6. `output_dir` can be created: its nearest existing folder is a folder this user may write in (not a file, not
   read-only), so that training does not load the model first and fail then. Nothing is created.

Relative paths in a config are taken from the repository root, where `make` and `llamafactory-cli` run.
`check_config` is the core (returns a `Report`); `main` prints it. The rules stay one module: each is a small
function over the same merged config, and the list of them above is the reference a user reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.device import cpu_native_bf16
from pipelines.common.flags import config_flag
from pipelines.common.lora import VLLM_LORA_RANKS, servable_rank
from pipelines.common.paths import is_local, rel, resolve
from pipelines.train.config import LIST_KEYS, CheckError, as_list, load_config, quiet_llamafactory

#: The templates that fit a model family (HF `model_type`). Families not listed here are not checked.
FAMILY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "qwen2": ("qwen",),
    "qwen2_moe": ("qwen",),
    "qwen3": ("qwen3", "qwen3_nothink"),
    "qwen3_moe": ("qwen3", "qwen3_nothink"),
    "qwen2_vl": ("qwen2_vl",),
    "qwen2_5_vl": ("qwen2_vl",),
    "mistral": ("mistral", "ministral", "mistral_small"),
    "gemma": ("gemma",),
    "gemma2": ("gemma", "gemma2"),
    "gemma3": ("gemma3",),
    "gemma3_text": ("gemma3",),
    "glm4": ("glm4",),
    "phi3": ("phi", "phi4_mini"),
}
#: Hub-id patterns (lower case, first match wins) → model_type, for models that are not local.
NAME_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"qwen3", "qwen3"),
    (r"qwen2(\.5)?-vl", "qwen2_5_vl"),
    (r"qwen(1\.5|2(\.5)?)[-_]?(\d+(\.\d+)?b)?.*moe|qwen1\.5-moe|qwen2-57b-a14b", "qwen2_moe"),
    (r"qwen(1\.5|2(\.5)?)", "qwen2"),
    (r"gemma-3", "gemma3"),
    (r"gemma-2", "gemma2"),
    (r"gemma", "gemma"),
    (r"mistral", "mistral"),
    (r"glm-4", "glm4"),
    (r"phi-3", "phi3"),
)
#: Dataset entries that name no local file (LLaMA-Factory fetches them).
REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
#: Keys that are not LLaMA-Factory's but that people write; a precise sentence instead of "unknown key".
KNOWN_MISTAKES = {
    "modules_to_save": "`modules_to_save` is PEFT's name, not a LLaMA-Factory key (LLaMA-Factory calls it "
                       "`additional_target`), and vLLM cannot serve adapters with fully trained extra modules; "
                       "remove it.",
}
LENGTH_SAMPLES = 2000  # the cutoff check measures at most this many samples


@dataclass
class Report:
    config: str
    merged: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        head = (f"check {self.config}: ok" if self.ok else
                f"check {self.config}: {len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}")
        lines = [head]
        lines += [f"  error: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- model

def check_model(cfg: dict) -> list[str]:
    model = str(cfg.get("model_name_or_path") or "")
    if not model or not is_local(model) or (resolve(model) / "config.json").is_file():
        return []
    how = "run `make tiny-base`" if "tiny" in Path(model).name else "download or build it, or fix the path"
    return [f"`model_name_or_path: {model}` is not a model folder (no `config.json`); {how}."]


def check_output_dir(cfg: dict) -> list[str]:
    """`output_dir` can be created (or written, if it exists): checked here so that training does not load the
    model and then fail. Nothing is created."""
    out = cfg.get("output_dir")
    if not out:
        return []
    path = resolve(str(out))
    shown = str(out)
    probe = path
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    except OSError as e:  # e.g. a parent that may not be searched
        return [f"`output_dir: {shown}` cannot be created: `{rel(probe)}` is not reachable ({e.strerror}); "
                "choose another `output_dir` or fix its permissions."]
    if probe == path and not path.is_dir():
        return [f"`output_dir: {shown}` is a file, not a folder; choose another `output_dir`."]
    if not probe.is_dir():
        return [(f"`output_dir: {shown}` cannot be created: `{rel(probe)}` is a file, not a folder; choose "
                 "another `output_dir`.")]
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else "is not writable, so the folder cannot be created there"
        return [(f"`output_dir: {shown}`: `{rel(probe)}` {what}; choose another `output_dir` or fix its "
                 "permissions.")]
    return []


def _quote(names) -> str:
    return ", ".join(f"`{n}`" for n in names)


# ---------------------------------------------------------------------------------------------- LLaMA-Factory

def llamafactory_keys() -> set[str]:
    """Every key LLaMA-Factory's train parser knows (the fields of its five argument dataclasses)."""
    with quiet_llamafactory():
        from llamafactory.hparams.parser import _TRAIN_ARGS
    return {f.name for cls in _TRAIN_ARGS for f in dataclasses.fields(cls)}


def llamafactory_templates() -> set[str]:
    with quiet_llamafactory():
        from llamafactory.data.template import TEMPLATES
    return set(TEMPLATES)


def llamafactory_types() -> dict[str, Any]:
    """key → type annotation of every field of LLaMA-Factory's train dataclasses."""
    import typing

    with quiet_llamafactory():
        from llamafactory.hparams.parser import _TRAIN_ARGS
    hints: dict[str, Any] = {}
    for cls in _TRAIN_ARGS:
        hints.update(typing.get_type_hints(cls))
    return hints


def _accepts(annotation: Any, value: Any) -> tuple[bool, str]:
    """Does a value of the merged config fit a dataclass field's annotation? (ok, what was expected)"""
    import enum
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        results = [_accepts(a, value) for a in typing.get_args(annotation) if a is not type(None)]
        return any(ok for ok, _ in results), " or ".join(dict.fromkeys(w for _, w in results))
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return value in choices, "one of " + ", ".join(f"`{c}`" for c in choices)
    if annotation is bool:
        return isinstance(value, bool), "true or false"
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), "a whole number"
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if annotation is str:
        return isinstance(value, str), "a string"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value in {e.value for e in annotation}, "one of " + ", ".join(f"`{e.value}`" for e in annotation)
    return True, ""  # lists, dicts and library types: LLaMA-Factory and transformers check those


def check_types(cfg: dict, hints: dict[str, Any]) -> dict[str, str]:
    """key → problem, for values of the wrong type: HfArgumentParser.parse_dict does not check them, and
    training would crash on them later."""
    problems = {}
    for key, value in cfg.items():
        if key not in hints or value is None:
            continue
        if key in LIST_KEYS and isinstance(value, list) and all(isinstance(v, str) for v in value):
            continue  # LLaMA-Factory's split_arg takes a YAML list as well as "a,b"
        ok, expected = _accepts(hints[key], value)
        if not ok:
            problems[key] = f"`{key}: {value}` is not {expected}, as LLaMA-Factory expects; fix the value."
    return problems


def has_gpu() -> bool:
    """Whether torch in this venv sees CUDA: what LLaMA-Factory's parser, run here, decides by (unlike
    `pipelines.common.device.has_cuda`, which asks nvidia-smi before any venv exists)."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def check_keys(cfg: dict, known: set[str]) -> list[str]:
    problems = []
    for key in cfg:
        if key in known:
            continue
        if key in KNOWN_MISTAKES:
            problems.append(KNOWN_MISTAKES[key])
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f"rename it (closest: `{close[0]}`) or remove it" if close else "rename or remove it"
        problems.append(f"`{key}` is not a LLaMA-Factory argument; {hint}.")
    return problems


def parse_with_llamafactory(cfg: dict, known: set[str], gpu: bool) -> tuple[list[str], list[str]]:
    """Run LLaMA-Factory's `get_train_args` on the known keys; (problems, notes)."""
    notes = []
    parsed = {k: v for k, v in cfg.items() if k in known and k != "deepspeed"}
    if not gpu:
        on_cpu = config_flag(parsed, "use_cpu")  # then transformers trains bf16/fp16 as CPU autocast
        half = [k for k in (("pure_bf16",) if on_cpu else ("bf16", "fp16", "pure_bf16")) if config_flag(parsed, k)]
        if on_cpu and config_flag(parsed, "bf16") and not cpu_native_bf16():
            notes.append("`bf16` with `use_cpu`: this CPU has no native bf16 (AVX512-BF16, AMX), so `make train` "
                         "trains in fp32 here (`bf16=false`) rather than emulate bf16.")
        if half:
            notes.append(f"{_quote(half)} validated as false: this machine has no GPU, so training this config "
                         "needs a GPU machine.")
            for k in half:
                parsed[k] = False
    try:
        with quiet_llamafactory():
            from llamafactory.hparams import get_train_args

            get_train_args(parsed)
    except SystemExit as e:  # HfArgumentParser exits on some type errors
        return [f"LLaMA-Factory's argument parser rejected the config (exit {e.code}); check the value types."], notes
    except Exception as e:
        msg = " ".join(str(e).split()).rstrip(".") or type(e).__name__
        return [f"LLaMA-Factory's argument parser rejected the config: {msg}; fix that key."], notes
    return [], notes


# -------------------------------------------------------------------------------------------- project rules

def check_deepspeed(cfg: dict) -> tuple[list[str], list[str]]:
    ds = cfg.get("deepspeed")
    if not ds:
        return [], []
    path = resolve(str(ds))
    if not path.is_file():
        return [f"`deepspeed: {ds}` names no file; use `conf/deepspeed/ds_z2_config.json` or "
                "`conf/deepspeed/ds_z3_config.json`."], []
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"`{ds}` line {e.lineno} is not valid JSON; fix the DeepSpeed config."], []
    try:
        import importlib.util

        installed = importlib.util.find_spec("deepspeed") is not None
    except Exception:
        installed = False
    warn = [] if installed else [f"`deepspeed: {ds}` needs the `deepspeed` package, which this environment "
                                 "lacks; `make setup` on a CUDA machine installs it (requirements/cuda.txt)."]
    return [], warn


def check_datasets(cfg: dict) -> tuple[list[str], list[str]]:
    """Every dataset name is in dataset_info.json, and its file exists. (problems, notes)"""
    names = [(key, n) for key in ("dataset", "eval_dataset") for n in as_list(cfg.get(key))]
    if not names:
        return [], []
    dataset_dir = str(cfg.get("dataset_dir") or "data")
    if dataset_dir == "ONLINE":
        return [], ["`dataset_dir: ONLINE`: the datasets are hub ids and are not checked."]
    info_path = resolve(dataset_dir) / "dataset_info.json"
    shown = f"{dataset_dir.rstrip('/')}/dataset_info.json"
    if not info_path.is_file():
        return [f"`{shown}` not found; run `make data` (or set `dataset_dir`)."], []
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return [f"`{shown}` line {e.lineno} is not valid JSON; rerun `make data`."], []
    problems, notes = [], []
    for key, name in names:
        if name not in info:
            close = difflib.get_close_matches(name, list(info), n=2)
            hint = f" (closest: {_quote(close)})" if close else ""
            problems.append(f"`{key}` names `{name}`, which is not in `{shown}`; fix the name{hint} or run "
                            f"`make data` (available: {_quote(info)}).")
            continue
        entry = info[name] or {}
        if any(entry.get(k) for k in REMOTE_KEYS):
            notes.append(f"`{name}` is fetched by LLaMA-Factory ({', '.join(k for k in REMOTE_KEYS if entry.get(k))})"
                         "; its file is not checked.")
            continue
        file_name = entry.get("file_name")
        if not file_name:
            problems.append(f"`{name}` in `{shown}` has no `file_name`; rerun `make data`.")
        elif not (resolve(dataset_dir) / file_name).exists():
            problems.append(f"`{dataset_dir.rstrip('/')}/{file_name}` (the file of `{name}`) is missing; "
                            "run `make data`.")
    return problems, notes


def model_family(model: str) -> tuple[str | None, str]:
    """(model_type, where it came from): the local config.json, else a guess from the hub id."""
    path = resolve(model)
    if (path / "config.json").is_file():
        try:
            return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type"), "config.json"
        except (OSError, json.JSONDecodeError):
            return None, "config.json"
    name = model.lower()
    for pattern, family in NAME_FAMILIES:
        if re.search(pattern, name):
            return family, "name"
    return None, "name"


def check_template(cfg: dict, templates: set[str]) -> tuple[list[str], list[str]]:
    model, template = str(cfg.get("model_name_or_path") or ""), cfg.get("template")
    if not template:
        if str(cfg.get("stage") or "sft") == "pt":  # pre-training renders no chat prompts
            return [], []
        family, _ = model_family(model) if model else (None, "")
        fitting = FAMILY_TEMPLATES.get(family or "", ())
        hint = f"add `template: {fitting[0]}`" if fitting else "add the model's `template`"
        return [f"`template` is not set, so training and serving may render different prompts; {hint}."], []
    template = str(template)
    if template not in templates:
        close = difflib.get_close_matches(template, templates, n=2)
        hint = f" (closest: {_quote(close)})" if close else ""
        return [f"`template: {template}` is not a LLaMA-Factory template; use one of `llamafactory.data.template`"
                f"{hint}."], []
    if not model:
        return [], []
    family, source = model_family(model)
    if family is None:
        return [], [f"the model family of `{model}` is unknown here, so `template: {template}` is not checked."]
    fit = FAMILY_TEMPLATES.get(family)
    if fit is None:
        return [], [f"no template rule for model_type `{family}`; `template: {template}` is not checked."]
    if template not in fit:
        via = "its `config.json`" if source == "config.json" else "its name"
        return [f"`template: {template}` does not fit `{model}` (model_type `{family}` from {via}); "
                f"use `template: {fit[0]}`."], []
    return [], []


def check_servable(cfg: dict) -> tuple[list[str], list[str]]:
    """Will vLLM serve the result? (problems, notes)"""
    problems: list[str] = []
    notes: list[str] = []
    method = str(cfg.get("finetuning_type") or "lora")
    if config_flag(cfg, "resize_vocab"):
        problems.append("`resize_vocab: true` changes the embedding size, which a vLLM LoRA adapter cannot carry; "
                        "remove it (the tokenizer must stay the base model's).")
    if method != "lora":
        if method not in ("full", "freeze"):
            problems.append(f"`finetuning_type: {method}` gives neither a LoRA adapter nor a full model, and vLLM "
                            "serves only those; use `lora` or `full`.")
        return problems, notes
    if cfg.get("additional_target"):
        problems.append(f"`additional_target: {cfg['additional_target']}` trains extra modules in full "
                        "(PEFT `modules_to_save`), which vLLM cannot serve; remove it.")
    if config_flag(cfg, "use_dora"):
        problems.append("`use_dora: true` gives a DoRA adapter, which vLLM cannot serve; remove it.")
    rank = cfg.get("lora_rank", 8)
    try:
        rank = int(rank)
    except (TypeError, ValueError):
        return problems, notes  # the parser reports the type
    if rank >= 1 and servable_rank(rank) is None:  # below 1: `check_ranges` says so
        problems.append(f"`lora_rank: {rank}` is above vLLM's largest `--max-lora-rank` ({VLLM_LORA_RANKS[-1]}); "
                        f"use at most {VLLM_LORA_RANKS[-1]}, e.g. one of 8, 16, 32, 64, 128, 256.")
    return problems, notes


#: Keys that must be numbers above 0 (and whole ones where `int`): LLaMA-Factory's parser takes 0 and negatives,
#: and training fails (or trains nothing) much later.
POSITIVE = {"lora_rank": int, "max_samples": int, "cutoff_len": int, "lora_alpha": float, "learning_rate": float,
            "num_train_epochs": float}


def check_ranges(cfg: dict) -> list[str]:
    """`lora_rank=-8`, `max_samples=0`, `learning_rate=nan`: one sentence each."""
    problems = []
    for key, kind in POSITIVE.items():
        value = cfg.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue  # the type check reports it
        if not math.isfinite(number) or number <= 0 or (kind is int and number != int(number)):
            what = "a whole number of at least 1" if kind is int else "a finite number above 0"
            problems.append(f"`{key}: {value}` must be {what}; fix it in the config or in `ARGS=`.")
    return problems


def check_cutoff(cfg: dict) -> tuple[list[str], list[str]]:
    """Warn when cutoff_len truncates more than 1 % of the training samples. (warnings, notes)"""
    model, datasets = str(cfg.get("model_name_or_path") or ""), as_list(cfg.get("dataset"))
    if not model or not datasets:
        return [], []
    cutoff = int(cfg.get("cutoff_len") or 2048)
    if not (resolve(model) / "config.json").is_file():
        return [], [f"`cutoff_len: {cutoff}` is not compared with the data: the tokenizer of `{model}` is not "
                    "available locally (run `make lengths MODEL=…` where it is)."]
    from pipelines.data import lengths

    limit = int(cfg["max_samples"]) if cfg.get("max_samples") else LENGTH_SAMPLES
    try:
        with quiet_llamafactory():
            prompt, response = lengths.measure(datasets, resolve(model), resolve(str(cfg.get("dataset_dir") or "data")),
                                               str(cfg.get("template") or lengths.DEFAULT_TEMPLATE),
                                               max_samples=min(limit, LENGTH_SAMPLES))
    except Exception as e:  # LengthsError and anything LLaMA-Factory raises while tokenizing
        return [], [f"token lengths not measured ({' '.join(str(e).split())[:200]})."]
    if not prompt:
        return [], []
    totals = [p + r for p, r in zip(prompt, response)]
    p99 = lengths.nearest_rank_percentile(totals, 99)
    if cutoff < p99:
        longer = sum(t > cutoff for t in totals)
        suggest = math.ceil(p99 / lengths.CUTOFF_MULTIPLE) * lengths.CUTOFF_MULTIPLE
        return [f"`cutoff_len: {cutoff}` is below the p99 token length of `{','.join(datasets)}` ({p99}), so "
                f"{longer} of {len(totals)} samples are truncated; raise it to {suggest} "
                f"(`make lengths DATASET={datasets[0]}`)."], []
    return [], []


# ------------------------------------------------------------------------------------------------------- core

def check_config(config: str | Path, overrides: Sequence[str] = (), measure_lengths: bool = True,
                 gpu: bool | None = None) -> Report:
    """Every problem of CONFIG with OVERRIDES. Raises CheckError only when the config cannot be read at all."""
    report = Report(str(config))
    cfg = load_config(config, list(overrides))
    report.merged = cfg
    known = llamafactory_keys()
    report.problems += check_keys(cfg, known)
    hints = llamafactory_types()
    typed = check_types(cfg, hints)
    report.problems += list(typed.values())
    well_typed = known - set(typed)  # the parser sees only values of the right type
    gpu = has_gpu() if gpu is None else gpu
    report.problems += check_model(cfg)
    report.problems += check_output_dir(cfg)
    report.problems += [p for p in check_ranges(cfg) if not any(p.startswith(f"`{k}") for k in typed)]
    clean = {k: v for k, v in cfg.items() if k not in typed}  # one sentence per mistake: skip mistyped values
    for step in (lambda: parse_with_llamafactory(clean, well_typed, gpu), lambda: check_datasets(clean),
                 lambda: check_template(clean, llamafactory_templates()), lambda: check_servable(clean)):
        problems, notes = step()
        report.problems += [p for p in problems if p not in report.problems]
        report.notes += notes
    problems, warns = check_deepspeed(cfg)
    report.problems += problems
    report.warnings += warns
    if measure_lengths and not report.problems:
        warns, notes = check_cutoff(cfg)
        report.warnings += warns
        report.notes += notes
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines check", description=__doc__.splitlines()[0])
    ap.add_argument("config", metavar="CONFIG", help="a LLaMA-Factory YAML, e.g. conf/tiny_lora_cluener.yaml")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, as llamafactory-cli takes them")
    ap.add_argument("--no-lengths", action="store_true", help="skip the cutoff_len check (it tokenizes the data)")
    args = ap.parse_intermixed_args(argv)
    try:
        report = check_config(args.config, args.overrides, measure_lengths=not args.no_lengths)
    except CheckError as e:
        print(f"check {args.config}: 1 problem\n  error: {e}", file=sys.stderr)
        return 1
    print(report.render(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
