"""`make curve ADAPTER=OUT`: score every epoch's checkpoint of one training run from one server; which epoch to keep.

    python -m pipelines curve OUT [--task NAME] [--serve CONFIG] [--attach --port N] [--limit N] [--samples K]

Every `checkpoint-N` of OUT (the tiny configs save one per epoch: `save_strategy: epoch`) is served as an adapter
from one vLLM server, as the sweep serves its grid (`pipelines.run.served`), and scored on the task's validation
split with the task's metrics (NER plainly and span-constrained). `--attach` loads them into the server already
running on `--port` from `--serve` (it needs `runtime_lora_updating: true`; `make all` runs one) and unloads them
afterwards. Written to `OUT/curve/`: `curve.json` (a row per checkpoint: epoch, step, loss, eval_loss from its
`trainer_state.json`, the figures plain and constrained; the best by the main metric and the rows tied with it),
`curve.md`, `curve.png` and `samples.md` (k fixed validation records, each epoch's answer). The figures and the
sample texts go into the training run's tracker (the manifest's `tracker`: TensorBoard scalars `curve/<metric>`
and text, SwanLab's local run) at each checkpoint's step, once: a rerun that would log the same is skipped. A rerun
reuses the saved answers of the same weights and starts no server.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.common.errors import PipelinesError
from pipelines.common.io import atomic_write, json_sha256, read_json, write_json
from pipelines.common.paths import ROOT, TRAIN_MANIFEST, rel, resolve
from pipelines.data.records import load_records, user_text
from pipelines.eval import EvalError, constraints, tasks
from pipelines.eval.compare import mark_ties
from pipelines.eval.predictions import load_done, predictions_path
from pipelines.eval.scoring import parse_entities
from pipelines.run import curve_report
from pipelines.run.curve_report import CURVE_DIR
from pipelines.run.served import ServedError, score_adapters, serve_config_for
from pipelines.serve.client import ServeError
from pipelines.serve.config import WEIGHT_FILES, stale_base
from pipelines.serve.config import load as load_serve_config
from pipelines.train import launch, trackers
from pipelines.train.grid import task_name
from pipelines.train.manifest import git_revision, read_manifest

DEFAULT_SAMPLES = 3
LOGGED = "tracker_logged.json"  # the digest of what was logged into the tracker


class CurveError(PipelinesError):
    """One sentence; `main` prints it."""


def checkpoints(out: Path) -> list[Path]:
    """The `checkpoint-N` folders of `out` that hold an adapter and a trainer state, by N."""
    return [p for p in launch.checkpoints(out) if any((p / w).is_file() for w in WEIGHT_FILES)]


def check_run(out: Path, found: list[Path], manifest: dict[str, Any] | None) -> None:
    """Refuse a missing folder, a run with fewer than two checkpoints, or checkpoints older than the run its
    manifest records (those up to the checkpoint a resumed run started from are that run's too)."""
    if not out.is_dir():
        raise CurveError(f"`{rel(out)}` does not exist; give ADAPTER= the `output_dir` of a training run (e.g. "
                         "`saves/tiny/lora/cluener`).")
    if len(found) < 2:
        cfg = (manifest or {}).get("config")
        if cfg is None:
            why = f"and no training manifest (`{TRAIN_MANIFEST}`: not a `make train` output_dir)"
        else:
            saves = cfg.get("save_strategy", "steps")
            saves = "no" if saves is False else saves  # `save_strategy=no` on the command line reads as false
            why = f"(`save_strategy: {saves}`)"
        raise CurveError(f"`{rel(out)}` holds {len(found)} checkpoint{'s' if len(found) != 1 else ''} {why}; a "
                         "curve needs two or more: train with `save_strategy=epoch` (the tiny configs' setting) and "
                         "`num_train_epochs` of 2 or more.")
    started = (manifest or {}).get("started")
    if started:
        t0 = datetime.fromisoformat(started).timestamp()
        resumed = (manifest or {}).get("resumed_from")
        kept = (launch.checkpoint_step(resumed) or 0) if resumed else 0
        old = [p.name for p in found if (p / "trainer_state.json").stat().st_mtime < t0 - 1
               and (launch.checkpoint_step(p) or 0) > kept]
        if old:
            raise CurveError(f"{', '.join(f'`{n}`' for n in old)} of `{rel(out)}` are older than the run its "
                             f"manifest records (started {started}), so they are another run's; delete them or "
                             "train into a fresh `output_dir`.")


def checkpoint_row(ckpt: Path) -> dict[str, Any]:
    """epoch, step, and the training loss last logged up to it and its evaluation loss, from its trainer state."""
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state.get("global_step") or launch.checkpoint_step(ckpt) or 0)
    history = [h for h in state.get("log_history", []) if isinstance(h.get("step"), int) and h["step"] <= step]
    loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
    eval_loss = next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None)
    epoch = state.get("epoch")
    return {"epoch": round(epoch, 4) if isinstance(epoch, float) else epoch, "step": step, "checkpoint": ckpt.name,
            "loss": loss, "eval_loss": eval_loss}


def build_curve(rows: list[dict[str, Any]], metrics: dict[str, Any], task: str) -> dict[str, Any]:
    """curve.json's rows (figures added), best and ties. Pure: rows carry the served `name` of each checkpoint."""
    spec = tasks.get(task)
    key = spec.main_metric
    plain, constrained = metrics.get("models") or {}, metrics.get("constrained") or {}
    for r in rows:
        r["metrics"], r["constrained"] = plain.get(r["name"]), constrained.get(r["name"])
    scored = [r for r in rows if r["metrics"] is not None]
    best = max(scored, key=lambda r: ((r["metrics"].get(key) or 0.0), ((r["constrained"] or {}).get(key) or 0.0),
                                      -r["step"]), default=None)
    ties = mark_ties(rows, best["name"], key, metrics.get("comparisons") or []) if best else []
    by_name = {r["name"]: r["checkpoint"] for r in rows}
    return {"task": task, "main_metric": key, "rows": rows,
            "best": {k: best[k] for k in ("epoch", "step", "checkpoint")} if best else None,
            "ties": [by_name[n] for n in ties]}


def samples(records: list[dict[str, str]], rows: list[dict[str, Any]], eval_dir: Path, spec: tasks.Task,
            source: str, k: int) -> list[dict[str, Any]]:
    """The first k records with each checkpoint's plain answer (from its predictions file), parsed and obeyed."""
    form = constraints.answer_form(records, source) if spec.constraint == "spans" else None
    picked = records[:k]
    answers: dict[str, dict[str, str]] = {}
    for r in rows:
        done = load_done(predictions_path(eval_dir, r["name"]))
        answers[r["name"]] = {row["id"]: row["answer"] for row in done.values() if not row.get("constraint")}
    out = []
    for rec in picked:
        per = []
        for r in rows:
            a = answers[r["name"]].get(rec["id"])
            if a is None:
                continue
            parsed = parse_entities(a).valid_json if spec.kind == "ner" else None
            obeyed = constraints.obeys(spec, rec, form, a) if spec.constraint else None
            per.append({"epoch": r["epoch"], "checkpoint": r["checkpoint"], "answer": a, "parsed": parsed,
                        "obeyed": obeyed})
        out.append({"id": rec["id"], "input": user_text(rec), "gold": rec["output"], "answers": per})
    return out


def tracker_payload(curve: dict[str, Any], spec: tasks.Task, picked: list[dict[str, Any]]) -> tuple[dict, dict]:
    """(scalars, texts) to log: `curve/<metric>` and `curve/constrained/<metric>` at each checkpoint's step, and
    at each step that checkpoint's answers to the sample records (`curve/samples`)."""
    metrics = list(dict.fromkeys([spec.main_metric, *spec.summary]))
    scalars: dict[str, list[tuple[int, float]]] = {}
    for r in curve["rows"]:
        for side, prefix in (("metrics", "curve"), ("constrained", "curve/constrained")):
            for m in metrics:
                v = (r.get(side) or {}).get(m)
                if isinstance(v, (int, float)):
                    scalars.setdefault(f"{prefix}/{m}", []).append((r["step"], float(v)))
    texts = {"curve/samples": [(r["step"], curve_report.step_markdown(r["checkpoint"], picked))
                               for r in curve["rows"]]}
    return scalars, texts


def log_to_tracker(out: Path, manifest: dict[str, Any] | None, curve: dict[str, Any], spec: tasks.Task,
                   picked: list[dict[str, Any]], echo=print) -> str | None:
    """Log the curve into the run's tracker once (a digest of what was logged is kept); where, or None."""
    tracked = (manifest or {}).get("tracker")
    if not tracked or tracked.get("kind") not in ("tensorboard", "swanlab"):
        return None
    scalars, texts = tracker_payload(curve, spec, picked)
    digest = json_sha256({"tracker": tracked, "scalars": scalars, "texts": texts})
    path = out / CURVE_DIR / LOGGED
    if (read_json(path) or {}).get("digest") == digest:
        echo(f"curve: already logged into {tracked['kind']} `{tracked['dir']}`; nothing logged again")
        return tracked["dir"]
    trackers.log(tracked, scalars, texts)
    write_json(path, {"digest": digest, "tracker": tracked, "tags": sorted(scalars) + sorted(texts)})
    echo(f"curve: logged {len(scalars)} curves and the samples into {tracked['kind']} `{tracked['dir']}`")
    return tracked["dir"]


def command_line(argv: list[str]) -> str:
    return "make curve ADAPTER=" + " ".join(a.replace(str(ROOT) + "/", "") for a in argv)


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    out = resolve(args.out)
    found = checkpoints(out)
    manifest = read_manifest(out)
    check_run(out, found, manifest)
    cfg = (manifest or {}).get("config") or {}
    task = args.task or task_name(cfg)
    spec = tasks.get(task)
    data = args.data or spec.val_data(str(cfg.get("dataset_dir") or "data"))
    model = str(cfg.get("model_name_or_path") or "")
    if not model and not args.serve:
        raise CurveError(f"`{rel(out)}` has no training manifest naming its base; pass the serve config with "
                         "`--serve`.")
    serve_path = serve_config_for(model, args.serve)
    stale = stale_base(out.name, out, load_serve_config(serve_path).model)  # the checkpoints share the run's base
    if stale:
        raise CurveError(stale)
    prefix = out.name
    rows = [{**checkpoint_row(p), "name": f"{prefix}-{p.name}"} for p in found]
    adapters = {r["name"]: str(p) for r, p in zip(rows, found)}
    curve_dir = out / CURVE_DIR
    previous = read_json(curve_dir / "curve.json") or {}
    scored = score_adapters(task, data, adapters, curve_dir / "eval", serve_path, port=args.port, limit=args.limit,
                            with_base=False, attach=args.attach, previous_info=previous.get("eval"),
                            echo=lambda s: print(f"curve: {s}", flush=True))
    curve = build_curve(rows, scored.metrics, task)
    commit = git_revision()
    curve = {"output_dir": rel(out), "data": data, "n": scored.metrics["data"]["n"],
             "command": command_line(argv), "commit": (commit.get("revision") or "")[:10] or None, **curve,
             "eval": {**scored.info, "metrics": rel(curve_dir / "eval" / "metrics.json")}}
    records = load_records(data, args.limit)
    picked = samples(records, curve["rows"], curve_dir / "eval", spec, data, args.samples)
    sample_md = curve_report.samples_markdown(curve, picked)
    curve["tracker"] = log_to_tracker(out, manifest, curve, spec, picked)
    write_json(curve_dir / "curve.json", curve)
    atomic_write(curve_dir / "samples.md", sample_md)
    atomic_write(curve_dir / "curve.md", curve_report.curve_markdown(curve))
    curve_report.plot(curve, curve_dir / "curve.png")
    return curve


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipelines curve", description=__doc__.splitlines()[0])
    ap.add_argument("out", metavar="OUT", help="a training run's output_dir, with its checkpoint-N folders")
    ap.add_argument("--task", help="the evaluation task (default: the config's first dataset without `_train`)")
    ap.add_argument("--data", help="the records to score (default: the task's validation split)")
    ap.add_argument("--serve", help="serve config of the base (default: the one of serve/ that serves it)")
    ap.add_argument("--attach", action="store_true",
                    help="load the checkpoints into the running server of --serve on --port instead of starting one")
    ap.add_argument("--port", type=int, help="server port (default: a free one; with --attach: the serve config's)")
    ap.add_argument("--limit", type=int, help="score the first N validation records only")
    ap.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="records in samples.md (default %(default)s)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for flag, value in (("--limit", args.limit), ("--samples", args.samples), ("--port", args.port)):
        if value is not None and value < 1:
            print(f"curve: `{flag} {value}` must be at least 1.", file=sys.stderr)
            return 2
    if args.attach and not args.serve:
        print("curve: `--attach` needs `--serve CONFIG`, the serve config of the running server.", file=sys.stderr)
        return 2
    try:
        curve = run(args, argv)
    except (CurveError, EvalError, ServedError, ServeError, ValueError) as e:
        print(f"curve: {e}", file=sys.stderr)
        return 1
    out = resolve(args.out) / CURVE_DIR
    print("\n" + "\n".join(curve_report.curve_table(curve)))
    best = curve["best"]
    if best:
        tied = f"; tied with it (p ≥ 0.05): {', '.join(curve['ties'])}" if curve["ties"] else ""
        print(f"\ncurve: best epoch {curve_report.epoch(best['epoch'])} (`{best['checkpoint']}`, step {best['step']}) "
              f"by "
              f"{curve['main_metric']}{tied}")
    print(f"curve: wrote {rel(out / 'curve.json')}, curve.png, samples.md"
          + (f"; logged into {curve['tracker']}" if curve.get("tracker") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
