"""`make lengths`: token lengths of a converted data set, as LLaMA-Factory tokenizes it for training.

    python -m pipelines lengths DATASET --model PATH [--dataset-dir data] [--template qwen] [--json]

The data set goes through LLaMA-Factory's own loader and SFT preprocessing (`get_dataset`, the `--template`
chat template, the model's tokenizer) with no truncation. The prompt is every token before the answer (system,
user turn, the assistant header); the response is the answer and its end-of-turn tokens. Reports min, max,
mean, p95 and p99 of prompt, response and total, and suggests `cutoff_len`: the p99 total rounded up to a
multiple of 32, so that 99 % of the samples are not truncated.

LLaMA-Factory is imported inside `measure` only; the rest is pure.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import sys
import tempfile
from pathlib import Path

from pipelines.common.errors import PipelinesError
from pipelines.common.paths import DATA_DIR, TINY_BASE

DEFAULT_TEMPLATE = "qwen"
CUTOFF_MULTIPLE = 32
CUTOFF_PERCENTILE = 99
IGNORE_INDEX = -100  # LLaMA-Factory's label for prompt tokens
NO_TRUNCATION = 1 << 20


class LengthsError(PipelinesError):
    """A one-sentence problem with the options or the inputs; `main` prints it without a traceback."""


def nearest_rank_percentile(values: list[int], pct: float) -> int:
    """Nearest-rank percentile: the smallest value with at least `pct` % of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def describe(values: list[int]) -> dict:
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 1),
            "p95": nearest_rank_percentile(values, 95), "p99": nearest_rank_percentile(values, 99)}


def suggest_cutoff(totals: list[int], pct: float = CUTOFF_PERCENTILE, multiple: int = CUTOFF_MULTIPLE) -> int:
    return math.ceil(nearest_rank_percentile(totals, pct) / multiple) * multiple


def summarize(prompt: list[int], response: list[int]) -> dict:
    """The report for paired prompt and response lengths."""
    if not prompt or len(prompt) != len(response):
        raise LengthsError("no samples to measure; check that the data set is not empty.")
    total = [p + r for p, r in zip(prompt, response)]
    cutoff = suggest_cutoff(total)
    return {"samples": len(total), "prompt": describe(prompt), "response": describe(response),
            "total": describe(total), "cutoff_len": cutoff, "truncated_at_cutoff": sum(t > cutoff for t in total)}


def split_lengths(labels: list[int]) -> tuple[int, int]:
    """(prompt, response) token counts of one tokenized single-turn SFT example, from its labels."""
    prompt = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    return prompt, len(labels) - prompt


def check_inputs(datasets: list[str], model: Path, dataset_dir: Path) -> None:
    """Fail early, in one sentence, where LLaMA-Factory would fail with a traceback."""
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise LengthsError(f"`{info_path}` not found; run `make data` (or pass `--dataset-dir`).")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LengthsError(f"`{info_path}` line {e.lineno}: not valid JSON; rerun `make data`.") from None
    for name in datasets:
        if name not in info:
            close = difflib.get_close_matches(name, info, n=3)
            hint = f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""
            raise LengthsError(f"`{name}` is not in `{info_path}`; {hint}available: "
                               f"{', '.join(f'`{n}`' for n in info)}.")
    if not (model / "config.json").is_file():
        raise LengthsError(f"`{model}` holds no model (no `config.json`); build it (`make tiny-base`) "
                           "or pass `--model`.")


@contextlib.contextmanager
def _stdout_to_stderr():
    """LLaMA-Factory logs to stdout and prints a tokenized example: keep stdout for the report.

    Meanwhile every log handler writing to stdout, or to a stream since closed (a handler keeps the stream it
    was made with: under a test runner, a capture of an earlier test), writes to stderr instead."""
    import logging

    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        loggers = [logging.root, *(lg for lg in logging.root.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]
        handlers = {h for lg in loggers for h in lg.handlers
                    if type(h) is logging.StreamHandler
                    and (h.stream in (stdout, sys.__stdout__) or getattr(h.stream, "closed", False))}
        saved = {h: dict(h.__dict__) for h in handlers}
        for h in handlers:
            h.stream = sys.stderr  # not setStream: it flushes the old stream, which may be closed
            if "flush" in h.__dict__:  # transformers pins `flush` to the stderr of its time
                h.flush = sys.stderr.flush
        try:
            yield
        finally:
            for h, state in saved.items():
                h.stream = state["stream"]
                if "flush" in state:
                    h.flush = state["flush"]


def measure(datasets: list[str], model: Path, dataset_dir: Path, template: str = DEFAULT_TEMPLATE,
            max_samples: int | None = None) -> tuple[list[int], list[int]]:
    """Prompt and response token counts of every sample, through LLaMA-Factory's own loader and template."""
    check_inputs(datasets, model, dataset_dir)
    with tempfile.TemporaryDirectory() as out, _stdout_to_stderr():
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        try:
            model_args, data_args, training_args, _, _ = get_train_args(dict(
                model_name_or_path=str(model), stage="sft", do_train=True, finetuning_type="lora",
                dataset=",".join(datasets), dataset_dir=str(dataset_dir), template=template,
                cutoff_len=NO_TRUNCATION, max_samples=max_samples, output_dir=out, report_to="none",
            ))
            tokenizer_module = load_tokenizer(model_args)
            tpl = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            module = get_dataset(tpl, model_args, data_args, training_args, "sft", **tokenizer_module)
        except ValueError as e:  # LF's own checks: unknown template, bad dataset entry, …
            raise LengthsError(f"LLaMA-Factory rejected `{','.join(datasets)}` with `--template {template}`: "
                               f"{str(e).strip().rstrip('.')}.") from None
    pairs = [split_lengths(labels) for labels in module["train_dataset"]["labels"]]
    return [p for p, _ in pairs], [r for _, r in pairs]


def render(name: str, report: dict) -> str:
    lines = [f"{name}: {report['samples']} samples (tokens)",
             f"  {'':9}{'min':>7}{'mean':>9}{'p95':>7}{'p99':>7}{'max':>7}"]
    for part in ("prompt", "response", "total"):
        s = report[part]
        lines.append(f"  {part:9}{s['min']:>7}{s['mean']:>9}{s['p95']:>7}{s['p99']:>7}{s['max']:>7}")
    lines.append(f"suggested cutoff_len: {report['cutoff_len']} "
                 f"(p{CUTOFF_PERCENTILE} of total rounded up to a multiple of {CUTOFF_MULTIPLE}; "
                 f"{report['truncated_at_cutoff']} samples longer)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines lengths", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", metavar="DATASET", help="a name in dataset_info.json (several: a,b)")
    parser.add_argument("--model", type=Path, default=Path(TINY_BASE), help="the model whose tokenizer to use")
    parser.add_argument("--dataset-dir", type=Path, default=DATA_DIR, help=f"default: {DATA_DIR}")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"LLaMA-Factory template ({DEFAULT_TEMPLATE})")
    parser.add_argument("--max-samples", type=int, default=None, help="measure only the first N samples")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.dataset.split(",") if d.strip()]
    try:
        report = summarize(*measure(datasets, args.model, args.dataset_dir, args.template, args.max_samples))
    except LengthsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = {"dataset": args.dataset, "model": str(args.model), "template": args.template, **report}
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else render(args.dataset, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
