"""`TRACKER=tensorboard|swanlab|none`: where a training run logs its loss, offline, through LLaMA-Factory's own options.

Unset, the config's own `report_to` decides (the configs of conf/ say `none`). Set, it overrides:

- `tensorboard`: `report_to=tensorboard`, the event files in `OUTPUT_DIR/tracker/tensorboard/<stamp>` (through
  `TENSORBOARD_LOGGING_DIR`, which transformers 5 reads in place of the deprecated `logging_dir`);
- `swanlab`: `use_swanlab=true swanlab_mode=local swanlab_logdir=OUTPUT_DIR/tracker/swanlab report_to=none`: SwanLab's
  local mode writes its run folder there and sends nothing (`SWANLAB_MODE=local` too, so it never asks for a login);
- `none`: `report_to=none`.

`plan` is the pure core: (kind, output_dir, stamp) → (overrides, environment, where). `finish` names the run
the training wrote (SwanLab's `run-<time>-<id>` folder) for the manifest's `tracker` key, which `make curve` logs
into. The tracker's keys never make a finished run stale (`TRACKER_KEYS`, read by the manifest's `stale_reason`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.common.errors import PipelinesError
from pipelines.common.paths import rel, resolve

KINDS = ("tensorboard", "swanlab", "none")
TRACKER_DIR = "tracker"
#: the config keys a tracker sets; a run trained with another tracker is the same run
TRACKER_KEYS = ("report_to", "use_swanlab", "swanlab_mode", "swanlab_logdir", "swanlab_project", "swanlab_run_name",
                "logging_dir")
SWANLAB_PROJECT = "pipelines"


class TrackerError(PipelinesError):
    """A `TRACKER=` value that names no tracker."""


def kind(environ: Mapping[str, str]) -> str | None:
    """`TRACKER` from the environment: one of KINDS, or None when unset (the config decides)."""
    raw = (environ.get("TRACKER") or "").strip().lower()
    if not raw:
        return None
    if raw not in KINDS:
        raise TrackerError(f"`TRACKER={environ.get('TRACKER')}` is not a tracker; use one of: {', '.join(KINDS)} "
                           "(or leave it unset: the config's `report_to` decides).")
    return raw


def stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def plan(tracker: str, output_dir: Path, when: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """(overrides, environment, {kind, dir}) of one tracker for a run into `output_dir`. Pure."""
    if tracker == "tensorboard":
        folder = output_dir / TRACKER_DIR / "tensorboard" / when
        return ["report_to=tensorboard"], {"TENSORBOARD_LOGGING_DIR": str(folder)}, {"kind": tracker, "dir": folder}
    if tracker == "swanlab":
        folder = output_dir / TRACKER_DIR / "swanlab"
        return (["report_to=none", "use_swanlab=true", "swanlab_mode=local", f"swanlab_logdir={folder}",
                 f"swanlab_project={SWANLAB_PROJECT}", f"swanlab_run_name={output_dir.name}-{when}"],
                {"SWANLAB_MODE": "local"}, {"kind": tracker, "dir": folder})
    return ["report_to=none"], {}, {"kind": "none", "dir": None}


def finish(where: Mapping[str, Any], started: float) -> dict[str, Any] | None:
    """The manifest's `tracker` entry after the run: kind, dir (relative to the repository) and, for SwanLab, the run
    folder it wrote (the newest `run-*` since `started`) and its id."""
    if not where or where.get("kind") in (None, "none"):
        return None
    folder = Path(where["dir"])
    out: dict[str, Any] = {"kind": where["kind"], "dir": rel(folder)}
    if where["kind"] == "swanlab":
        runs = sorted((p for p in folder.glob("run-*") if p.is_dir() and p.stat().st_mtime >= started - 1),
                      key=lambda p: p.stat().st_mtime)
        if runs:
            out["run"] = runs[-1].name
            out["id"] = runs[-1].name.rsplit("-", 1)[-1]
    return out


def watch_command(tracked: Mapping[str, Any]) -> str:
    """The command that shows a tracker's log folder in a browser, on this machine only."""
    if tracked.get("kind") == "tensorboard":
        return f"tensorboard --logdir {tracked['dir']} --host 127.0.0.1"
    return f".venv/bin/swanlab watch {tracked['dir']} --host 127.0.0.1"


# ---------------------------------------------------------------------------------------- reading a run back


def tensorboard_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of every event file in `folder` (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(folder).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def tensorboard_texts(folder: str | Path) -> dict[str, list[tuple[int, str]]]:
    """tag → [(step, text)] of the text summaries (`add_text`) of every event file in `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, str]]] = {}
    for f in sorted(Path(folder).glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f), size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags().get("tensors", []):
            if tag.endswith("/text_summary"):
                out.setdefault(tag.removesuffix("/text_summary"), []).extend(
                    (e.step, e.tensor_proto.string_val[0].decode("utf-8")) for e in acc.Tensors(tag))
    return out


def swanlab_series(logdir: str | Path, run_id: str | None = None) -> dict[str, list[tuple[int, Any]]]:
    """key → [(step, value)] of SwanLab's local runs in `logdir` (those of `run_id` only when given): the keys from
    its `runs.swanlab` database (`tag`: name → folder), the values from each run's `logs/<folder>/*.log` lines. A
    local run continued later (`resume`) is a second folder with the same id; both are read."""
    logdir = Path(logdir)
    db = logdir / "runs.swanlab"
    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT e.run_id, t.name, t.folder FROM tag t JOIN experiment e "
                           "ON t.experiment_id = e.id").fetchall()
    finally:
        con.close()
    import json

    out: dict[str, list[tuple[int, Any]]] = {}
    for run, name, folder in rows:
        if run_id and not run.endswith(f"-{run_id}"):
            continue
        for log in sorted((logdir / run / "logs" / str(folder)).glob("*.log")):
            for line in log.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    out.setdefault(name, []).append((int(row["index"]), row["data"]))
    return out


# ---------------------------------------------------------------------------------------- logging into a run


def log(tracked: Mapping[str, Any], scalars: Mapping[str, list[tuple[int, float]]],
        texts: Mapping[str, list[tuple[int, str]]]) -> None:
    """Log `scalars` and `texts` (tag → [(step, value)]) into the run of the manifest's `tracker` entry: TensorBoard
    into the same log folder (a new event file of the same run), SwanLab into its local run, resumed by its id
    (SwanLab's local mode keeps the resumed part as a second folder of that id)."""
    folder = resolve(str(tracked["dir"]))
    if tracked["kind"] == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(folder))
        try:
            for tag, points in scalars.items():
                for step, value in points:
                    writer.add_scalar(tag, value, step)
            for tag, lines in texts.items():
                for step, text in lines:
                    writer.add_text(tag, text, step)
        finally:
            writer.close()
        return
    if tracked["kind"] != "swanlab":
        return
    import os

    os.environ["SWANLAB_MODE"] = "local"
    import swanlab

    run_id = tracked.get("id")
    swanlab.init(project=SWANLAB_PROJECT, mode="local", logdir=str(folder), id=run_id,
                 resume="must" if run_id else None, experiment_name=tracked.get("run"))
    try:
        steps = sorted({s for pts in scalars.values() for s, _ in pts} | {s for pts in texts.values() for s, _ in pts})
        for step in steps:
            row: dict[str, Any] = {t: v for t, pts in scalars.items() for s, v in pts if s == step}
            row.update({t: swanlab.Text(v) for t, pts in texts.items() for s, v in pts if s == step})
            swanlab.log(row, step=step)
    finally:
        swanlab.finish()
