"""Files: atomic writes (a killed run never leaves half a file), sha256 digests and a cheap weights fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, data: str | bytes, mode: int | None = None) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file in the same folder and a rename, so
    that readers see the old file or the new one, never a part. The file gets the mode `open` would give it
    (or `mode`). Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """`obj` as JSON (UTF-8, not ASCII-escaped), written atomically."""
    return atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


def read_json(path: str | Path) -> Any | None:
    """A JSON file's content, or None when it is missing, unreadable or not JSON (for files that may not exist yet)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_sha256(obj: Any) -> str:
    """sha256 of `obj`'s canonical JSON (sorted keys, no spaces, UTF-8 as is): the key of a request or answer."""
    canon = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return sha256_bytes(canon.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(folder: str | Path) -> str:
    """One sha256 over every file of a folder: relative names and contents, in sorted order."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder)}\0{file_sha256(f)}\n".encode())
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
