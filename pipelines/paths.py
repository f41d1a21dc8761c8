"""Where things live. Every default path of the project is here, and only here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The tiny Qwen2-architecture model the project builds itself (`make tiny-model`): random weights.
TINY_MODEL = os.environ.get("TINY_MODEL", str(ROOT / "models" / "tiny-qwen2"))
#: The same model after its short CPU pre-training (`make tiny-base`): the default base of the demo.
TINY_BASE = os.environ.get("TINY_BASE", str(ROOT / "models" / "tiny-qwen2-base"))

VENV = ROOT / ".venv"
VENV_VLLM = ROOT / ".venv-vllm"
DATA_DIR = ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
#: Where `make download` puts the real data sets (git-ignored).
DOWNLOADS_DIR = ROOT / "downloads"


def resolve(path: str | Path, base: Path = ROOT) -> Path:
    """A path from a config or the command line: absolute as is, else relative to the repository root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def rel(path: str | Path) -> str:
    """A path for messages and records: relative to the repository root when it lies inside, else as given."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


#: The record `pipelines.train` writes beside each trained model or adapter (read by serve and the run report).
TRAIN_MANIFEST = "pipelines_manifest.json"


def venv_bin(venv: Path, name: str) -> Path:
    """The path of executable `name` inside virtual environment `venv`."""
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt")
SAMPLE_BYTES = 1 << 20


def weights_fingerprint(model_dir: str | Path) -> str | None:
    """A cheap identity of a local model's weights: name, size and the first and last MiB of each weight file.

    Any retraining changes the tensors at the end of a file, so two fingerprints differ when the weights do;
    reading 2 MiB per file keeps it fast for a 15 GB model. None when the folder holds no weight file."""
    folder = Path(model_dir)
    files = sorted({f for g in WEIGHT_GLOBS for f in folder.glob(g) if f.is_file() and f.name != "training_args.bin"})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(SAMPLE_BYTES))
            if size > SAMPLE_BYTES:
                fh.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
                h.update(fh.read())
    return h.hexdigest()
