"""`python -m pipelines <command> …`: one command in front of every stage, dispatching to its `main(argv)`.

The table names each command's module and says its job in one line; modules are imported only when their
command runs, so `setup` works on a bare Python before any venv exists.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: command → (module with `main(argv)`, one line of help). Grouped by stage, in the order data flows.
COMMANDS: dict[str, tuple[str, str]] = {
    "setup": ("pipelines.venvs", "build .venv (LLaMA-Factory) and .venv-vllm (vLLM); a no-op when nothing changed"),
    "tiny-model": ("pipelines.models.tiny", "build the tiny Qwen2 model with random weights and a local tokenizer"),
    "tiny-base": ("pipelines.models.pretrain", "pre-train the tiny model on the CPU into the demo's base (cached)"),
    "shaped-model": ("pipelines.models.shaped", "a random-weight model with Qwen2.5's shape, for GPU throughput"),
    "samples": ("pipelines.data.samples", "rewrite the bundled raw samples of data/raw/"),
    "data": ("pipelines.data.bundled", "convert every registered data set's bundled sample (or --raw NAME=PATH)"),
    "convert": ("pipelines.data.convert", "convert a raw data set into alpaca files and data/dataset_info.json"),
    "download": ("pipelines.data.download", "fetch the official CLUENER zip and ruozhiba (needs a network)"),
    "lengths": ("pipelines.data.lengths", "token-length percentiles of a data set; suggests cutoff_len"),
    "check": ("pipelines.train.check", "validate a training config with LLaMA-Factory's parser and our rules"),
    "train": ("pipelines.train.launch", "check, then train a config with llamafactory-cli; write its manifest"),
    "export": ("pipelines.train.export", "merge a LoRA adapter into its base with llamafactory-cli export"),
    "sweep": ("pipelines.run.sweep", "train a grid of LoRA adapters, serve and score them all, write a leaderboard"),
    "curve": ("pipelines.run.curve", "score every epoch's checkpoint of a training run from one server; the best epoch"),
    "serve": ("pipelines.serve.manage", "start/status/stop a vLLM server with the base and its adapters"),
    "deploy": ("pipelines.serve.deploy", "render a Docker Compose or vllm-stack Helm bundle of a serve config"),
    "eval": ("pipelines.eval.evaluate", "score served models through the OpenAI API; metrics.json + report.md"),
    "parity": ("pipelines.eval.parity", "check that training and serving render identical prompt tokens"),
    "eval-report": ("pipelines.eval.report", "rewrite an evaluation's report.md from its metrics.json"),
    "compare": ("pipelines.eval.compare", "recompute an evaluation's intervals and paired comparisons, offline"),
    "constrain": ("pipelines.eval.constraints", "print the structured-outputs extra_body that constrains a task's answer"),
    "all": ("pipelines.run.pipeline", "the whole pipeline into results/<run>: data, train, serve, eval, report"),
    "gpu-check": ("pipelines.run.gpu_check", "prove a CUDA install: train (1 GPU, torchrun, DeepSpeed), serve, eval, deploy"),
    "run-report": ("pipelines.run.report", "rewrite the report of a `make all` run folder"),
    "bench": ("pipelines.bench.__main__", "benchmarks against the seeds' way and of constrained decoding; BENCHMARKS.md"),
}
#: old name → command: names kept working after a rename (not listed by --help)
ALIASES = {"report": "eval-report"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m pipelines <command> [arguments …]   (`python -m pipelines <command> --help`)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = ALIASES.get(args[0], args[0]), args[1:]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=2)
        hint = f"did you mean {' or '.join(f'`{c}`' for c in close)}? " if close else ""
        print(f"pipelines: unknown command `{name}`; {hint}`python -m pipelines --help` lists them.", file=sys.stderr)
        return 2
    from pipelines.common.errors import PipelinesError

    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except PipelinesError as e:  # a user's problem, one sentence; anything else keeps its traceback
        print(f"pipelines {name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pipelines {name}: interrupted.", file=sys.stderr)
        return 130
