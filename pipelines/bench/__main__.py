"""`python -m pipelines bench [train|train_options|eval|convert|constrained|significance|router|ranks|all|report|setup] [--repeats 3] [--quick]`
(see `pipelines.bench`)."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.bench import measure

BENCHES = ("train", "train_options", "eval", "convert", "constrained", "significance", "router", "ranks")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines bench",
                                 description="Benchmarks: the pipeline against the seeds' way, side by side.")
    ap.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all", "report", "setup"],
                    help=f"a benchmark, all of {', '.join(BENCHES)} (default; then BENCHMARKS.md is rewritten), or only the report; "
                         "`setup` (make setup with uv against pip, cold and warm; not in `all`: it downloads) "
                         "also rewrites BENCHMARKS.md")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes to check that everything runs; figures are noisy and marked quick")
    ap.add_argument("--data", default="auto", choices=["auto", "real", "sample"],
                    help="CLUENER: the real set in ../shared/datasets when present (auto), or the bundled sample")
    ap.add_argument("--results-dir", type=Path, default=measure.RESULTS_DIR, help="where <name>.json go")
    ap.add_argument("--report", type=Path, help="where the report goes (default: BENCHMARKS.md)")
    ap.add_argument("--keep-work", action="store_true", help="keep the work folder (logs, adapters) and print it")
    ap.add_argument("--threads", type=int,
                    help="OMP_NUM_THREADS for every process (both sides and the server; default: the usable cores). "
                         "On a shared, busy machine 1 keeps the figures comparable: threads waiting for each other "
                         "at every operation slow both sides by a factor that changes from run to run")
    # train
    ap.add_argument("--train-samples", type=int, help="records trained per epoch (default 480, quick 64)")
    ap.add_argument("--train-epochs", type=int, help="epochs (default 1)")
    ap.add_argument("--max-source", type=int, default=0,
                    help="theirs: prompt length; 0 = the longest prompt of the samples (default)")
    ap.add_argument("--max-target", type=int, default=70, help="theirs: response length (the seeds' 70)")
    ap.add_argument("--train-model", help="base model of both sides (default: the tiny base; on a GPU machine "
                                          "without a hub, `python -m pipelines shaped-model` makes a Qwen2.5-shaped one)")
    ap.add_argument("--train-scenario", action="append", choices=["project", "seeds_prompt"],
                    help="the prompt shapes to train on (default both; repeat the flag for several)")
    ap.add_argument("--no-group-by-length", action="store_true", help="ours: random batches (dynamic padding only)")
    # eval
    ap.add_argument("--eval-n", type=int, help="prompts per measurement (default 200, quick 32)")
    ap.add_argument("--concurrency", type=int, action="append", help="concurrency levels (default 1 4 16 64)")
    ap.add_argument("--adapter", help="LoRA adapter to serve and to load in HF (default: saves/tiny/lora/cluener from "
                         "`make train`, else one trained into the work folder)")
    ap.add_argument("--port", type=int, help="server port (default: a free one)")
    ap.add_argument("--no-vllm-bench", action="store_true", help="skip `vllm bench serve` (no efficiency figure)")
    # setup
    ap.add_argument("--setup-repeats", type=int, default=1,
                    help="setup: repeats of cold/warm/no-op per installer (default 1: pip's cold run takes minutes); "
                         "--quick times uv only")
    # convert
    ap.add_argument("--launches", type=int, help="server launches for launch-to-ready (default: --repeats)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (a killed run) unwinds like Ctrl-C, so that every server a benchmark started is stopped
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    command = shlex.join(["python", "-m", "pipelines", "bench", *(sys.argv[1:] if argv is None else argv)])
    if args.which == "report":
        from pipelines.bench import report

        print(f"wrote {report.write(args.results_dir, args.report or report.OUT)}")
        return 0
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # lfcli.cli_env and the serve launcher keep it
    todo = BENCHES if args.which == "all" else (args.which,)
    work = Path(tempfile.mkdtemp(prefix="pipelines-bench-"))
    status = 0
    try:
        for name in todo:
            try:
                result, text = _run(name, args, work / name)
            except measure.BenchError as e:
                print(f"bench {name}: {e}", file=sys.stderr)
                status = 1
                continue
            result["command"] = command
            path = measure.write_result(name, result, args.results_dir)
            print(f"\n{text}\nwrote {path}\n", flush=True)
        if args.which in ("all", "setup"):
            from pipelines.bench import report

            print(f"wrote {report.write(args.results_dir, args.report or report.OUT)}")
    finally:
        if args.keep_work:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


def _run(name: str, args: argparse.Namespace, work: Path):
    work.mkdir(parents=True, exist_ok=True)
    if name == "train":
        from pipelines.bench import train

        options: dict[str, Any] = {}
        if args.train_model:
            options["model"] = args.train_model
        if args.train_scenario:
            options["scenarios"] = tuple(args.train_scenario)
        r = train.bench(work, repeats=args.repeats, quick=args.quick, samples=args.train_samples,
                        epochs=args.train_epochs, data_source=args.data, max_source=args.max_source,
                        max_target=args.max_target, group_by_length=not args.no_group_by_length, **options)
        return r, train.render(r)
    if name == "significance":
        from pipelines.bench import significance

        r = significance.bench(work, repeats=args.repeats, quick=args.quick)
        return r, significance.render(r)
    if name == "router":
        from pipelines.bench import router

        r = router.bench(work, repeats=args.repeats, quick=args.quick, data_source=args.data)
        return r, router.render(r)
    if name == "ranks":
        from pipelines.bench import ranks

        r = ranks.bench(work, repeats=args.repeats, quick=args.quick, samples=args.train_samples,
                        data_source=args.data, **({"model": args.train_model} if args.train_model else {}))
        return r, ranks.render(r)
    if name == "train_options":
        from pipelines.bench import train_options

        r = train_options.bench(work, repeats=args.repeats, quick=args.quick, samples=args.train_samples,
                                data_source=args.data, **({"model": args.train_model} if args.train_model else {}))
        return r, train_options.render(r)
    if name == "eval":
        from pipelines.bench import eval as eval_bench

        r = eval_bench.bench(work, repeats=args.repeats, quick=args.quick, n=args.eval_n, concurrency=args.concurrency,
                     adapter=args.adapter, port=args.port, data_source=args.data,
                     with_vllm_bench=not args.no_vllm_bench)
        return r, eval_bench.render(r)
    if name == "constrained":
        from pipelines.bench import constrained

        r = constrained.bench(work, repeats=args.repeats, quick=args.quick, adapter=args.adapter, port=args.port)
        return r, constrained.render(r)
    if name == "setup":
        from pipelines.bench import setup

        r = setup.bench(work, repeats=args.setup_repeats, quick=args.quick)
        return r, setup.render(r)
    from pipelines.bench import convert

    r = convert.bench(work, repeats=args.repeats, quick=args.quick, launches=args.launches, port=args.port,
                      adapter=args.adapter, data_source=args.data)
    return r, convert.render(r)


if __name__ == "__main__":
    raise SystemExit(main())
