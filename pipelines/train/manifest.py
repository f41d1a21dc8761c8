"""The training manifest: what ran, on which data and base weights, and what it gave.

`OUTPUT_DIR/pipelines_manifest.json` (`paths.TRAIN_MANIFEST`), written beside each trained adapter or model:
the merged config, the command, the git revision, the sha256 of every dataset file, the base model's weights
fingerprint, the package versions, start and end time, the world size (NPROC_PER_NODE × NNODES ranks) and the
global batch (per-device batch × accumulation × world size, `pipelines.train.ranks`), the final train/eval
loss and the tracker's log folder (`tracker`). The serve precheck, the sweep, `make curve` and the run report
read it.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from pipelines.common.io import file_sha256, read_json, tree_sha256, weights_fingerprint, write_json
from pipelines.common.paths import ROOT, TRAIN_MANIFEST, rel, resolve
from pipelines.train import ranks
from pipelines.train.config import as_list
from pipelines.train.trackers import TRACKER_KEYS

PACKAGES = ("llamafactory", "transformers", "peft", "torch", "accelerate", "datasets", "trl", "tokenizers",
            "deepspeed", "pipelines")
#: Launcher variables recorded in the manifest.
LAUNCH_VARS = ("NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN")


def dataset_files(cfg: Mapping) -> dict[str, dict]:
    """name → {file, sha256} for every dataset/eval_dataset of the config that is a local file."""
    dataset_dir = resolve(str(cfg.get("dataset_dir") or "data"))
    info_path = dataset_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    out = {"dataset_info.json": {"file": rel(info_path), "sha256": file_sha256(info_path)}}
    for name in as_list(cfg.get("dataset")) + as_list(cfg.get("eval_dataset")):
        file_name = (info.get(name) or {}).get("file_name")
        path = dataset_dir / file_name if file_name else None
        if path and path.is_file():
            out[name] = {"file": rel(path), "sha256": file_sha256(path)}
        elif path and path.is_dir():
            out[name] = {"file": rel(path), "sha256": tree_sha256(path)}
    return out


def git_revision(root: Path = ROOT) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"revision": rev, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def logged_mean_loss(history: list[dict]) -> float | None:
    """The mean training loss over all steps, from the losses logged every `logging_steps` (each the mean of its
    interval, so weighted by the steps it covers)."""
    total, steps, prev = 0.0, 0, 0
    for h in history:
        if "loss" in h and isinstance(h.get("step"), int) and h["step"] > prev:
            total += float(h["loss"]) * (h["step"] - prev)
            steps += h["step"] - prev
            prev = h["step"]
    return total / steps if steps else None


def final_losses(output_dir: Path, resumed: bool = False) -> dict:
    """train/eval loss of the finished run: all_results.json, and the last logged values of trainer_state.json.

    After a resume the Trainer's `train_loss` divides the loss of the steps it ran by all the run's steps
    (e.g. 0.64 where the losses logged were 1.2–1.3), so `train_loss` is then the mean of the logged losses and
    the Trainer's figure is kept as `trainer_train_loss`."""
    out: dict = {}
    results = output_dir / "all_results.json"
    if results.is_file():
        data = json.loads(results.read_text(encoding="utf-8"))
        out.update({k: data[k] for k in ("train_loss", "eval_loss", "train_runtime", "epoch") if k in data})
    state = output_dir / "trainer_state.json"
    if state.is_file():
        data = json.loads(state.read_text(encoding="utf-8"))
        history = data.get("log_history", [])
        out["global_step"] = data.get("global_step")
        last_loss = next((h for h in reversed(history) if "loss" in h), None)
        last_eval = next((h for h in reversed(history) if "eval_loss" in h), None)
        if last_loss:
            out["last_logged_loss"] = last_loss["loss"]
            out["last_logged_step"] = last_loss.get("step")
        if last_eval and "eval_loss" not in out:
            out["eval_loss"] = last_eval["eval_loss"]
        mean = logged_mean_loss(history)
        if resumed and mean is not None:
            if "train_loss" in out:
                out["trainer_train_loss"] = out["train_loss"]
            out["train_loss"] = mean
    return out


def base_model_identity(cfg: Mapping) -> dict:
    """The base model trained on: its path and, when it is a local folder, its weights' fingerprint (what
    `make serve` compares to refuse an adapter whose base has changed since)."""
    name = str(cfg.get("model_name_or_path") or "")
    folder = resolve(name) if name else None
    fp = weights_fingerprint(folder) if folder is not None and folder.is_dir() else None
    return {"path": name, "weights_fingerprint": fp}


def write_manifest(output_dir: Path, *, config: str, overrides: list[str], cfg: Mapping, argv: list[str],
                   env: Mapping[str, str], started: float, ended: float, exit_code: int,
                   resumed_from: str | None, tracker: Mapping | None = None) -> Path:
    manifest = {
        "config_file": config,
        "overrides": overrides,
        "config": dict(cfg),
        "command": [a.replace(str(ROOT) + "/", "") for a in argv],
        "launcher_env": {k: env[k] for k in LAUNCH_VARS if k in env},
        "world_size": ranks.world_size(env),
        "global_batch": ranks.global_batch(cfg, ranks.world_size(env)),
        "resumed_from": resumed_from,
        "git": git_revision(),
        "datasets": dataset_files(cfg),
        "base_model": base_model_identity(cfg),
        "packages": package_versions(),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "ended": datetime.fromtimestamp(ended, UTC).isoformat(timespec="seconds"),
        "duration_s": round(ended - started, 1),
        "exit_code": exit_code,
        "results": final_losses(output_dir, resumed=resumed_from is not None),
        "tracker": dict(tracker) if tracker else None,
    }
    return write_json(output_dir / TRAIN_MANIFEST, manifest)


def read_manifest(output_dir: str | Path) -> dict | None:
    """The manifest of a training output folder, or None when there is none (or it is not JSON)."""
    data = read_json(Path(output_dir) / TRAIN_MANIFEST)
    return data if isinstance(data, dict) else None


def _normal(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def stale_reason(output_dir: str | Path, cfg: Mapping) -> str | None:
    """None when `output_dir` holds a finished run of exactly `cfg` (the merged config as `make train` would run it)
    on the same data files and base weights; else why it would have to train again."""
    folder = Path(output_dir)
    m = read_manifest(folder)
    if m is None:
        return "not trained yet"
    if m.get("exit_code") != 0:
        return f"its last run failed (exit {m.get('exit_code')})"
    if not any((folder / w).is_file() for w in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors")):
        return "its weights are missing"
    # a resumed run trained the same config, and so did one logged to another tracker
    resume = ("resume_from_checkpoint", "overwrite_output_dir", *TRACKER_KEYS)
    done = {k: v for k, v in (m.get("config") or {}).items() if k not in resume}
    if _normal(done) != _normal({k: v for k, v in cfg.items() if k not in resume}):
        return "its config or overrides differ"
    then = {k: v.get("sha256") for k, v in (m.get("datasets") or {}).items()}
    if then != {k: v.get("sha256") for k, v in dataset_files(cfg).items()}:
        return "its data files changed"
    if (m.get("base_model") or {}).get("weights_fingerprint") != base_model_identity(cfg)["weights_fingerprint"]:
        return "its base model's weights changed"
    return None
