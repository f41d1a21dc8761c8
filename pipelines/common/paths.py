"""Where things live. Every default path of the project is here, and only here."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The tiny Qwen2-architecture model the project builds itself (`make tiny-model`): random weights.
TINY_MODEL = os.environ.get("TINY_MODEL", str(ROOT / "models" / "tiny-qwen2"))
#: The same model after its short CPU pre-training (`make tiny-base`): the default base of the demo.
TINY_BASE = os.environ.get("TINY_BASE", str(ROOT / "models" / "tiny-qwen2-base"))

VENV = ROOT / ".venv"
VENV_VLLM = ROOT / ".venv-vllm"
DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
#: Where `make download` puts the real data sets (`datasets/`) and the deployment schemas (`deploy/`); git-ignored.
DOWNLOADS_DIR = ROOT / "downloads"


def resolve(path: str | Path, base: Path = ROOT) -> Path:
    """A path from a config or the command line: absolute as is, else relative to the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


#: The folder `make test-real` and the real-data benchmarks read: `datasets/` and `deploy/` inside it.
#: `PIPELINES_SHARED=DIR` names it; else ../shared beside the repository (CI), else what `make download` fetched.
SHARED_ENV = "PIPELINES_SHARED"


def shared_root(environ: dict[str, str] | None = None) -> Path:
    """The folder holding `datasets/` and `deploy/` (see SHARED_ENV); it may not exist (a bare clone)."""
    named = (os.environ if environ is None else environ).get(SHARED_ENV)
    if named:
        return resolve(named)
    beside = ROOT.parent / "shared"
    if (beside / "datasets").is_dir() or not (DOWNLOADS_DIR / "datasets").is_dir():
        return beside
    return DOWNLOADS_DIR


SHARED = shared_root()
SHARED_DATASETS = SHARED / "datasets"
SHARED_DEPLOY = SHARED / "deploy"


def rel(path: str | Path) -> str:
    """A path for messages and records: relative to the repository root when it lies inside, else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


#: The record `make train` writes beside each trained model or adapter (read by serve, sweep and the reports).
TRAIN_MANIFEST = "pipelines_manifest.json"


def venv_bin(venv: Path, name: str) -> Path:
    """The path of executable `name` inside virtual environment `venv`."""
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


#: Serve configs, the vLLM plugin and rendered deployment bundles: the serving side's own folder.
SERVE_DIR = ROOT / "serve"
CONF_DIR = ROOT / "conf"
MODELS_DIR = ROOT / "models"  # the models the project builds (git-ignored)
SAVES_DIR = ROOT / "saves"  # what `make train` writes (git-ignored)
RESULTS_DIR = ROOT / "results"  # runs of `make all`, evaluations, sweeps (git-ignored)
BENCH_RESULTS_DIR = ROOT / "bench" / "results"  # the benchmarks' result files (committed)

#: Top-level folders of this repository whose `x/y` names a local folder, never the hub organisation `x`.
LOCAL_ROOTS = ("models", "saves", "data", "results", "downloads", "serve", "conf")


def is_local(name: str, base: Path = ROOT) -> bool:
    """Does `name` denote a local folder rather than a hub id (`org/name`, or a bare `name`)?

    Local: an existing path; anything written as a path (`/…`, `./…`, `../…`, `~…`, backslashes, two or more
    `/`); `x/y` where `x` is one of this repository's folders (`models/x` even before it is built) or an existing
    folder. Everything else is a hub id: one `/` between an organisation and a name, or a bare name."""
    if not name:
        return False
    p = resolve(name, base)
    if p.exists() or name.startswith(("/", "./", "../", "~")) or "\\" in name or name.count("/") > 1:
        return True
    if name.count("/") == 1:
        head = name.split("/")[0]
        return head in LOCAL_ROOTS or head in (".", "..") or (base / head).is_dir()
    return False
