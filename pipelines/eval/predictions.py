"""The predictions file, `OUT/<model>/predictions.jsonl`: one JSON row per answer, appended as it arrives, so a
killed run loses only its requests in flight and a rerun sends only what is missing."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipelines.eval import EvalError


def model_dir_name(model: str) -> str:
    """A directory name for a served model name (`/` and other unsafe characters become `_`)."""
    return re.sub(r'[\\/:*?"<>|\s]+', "_", model).strip(".") or "_"


def load_done(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of a predictions file by (id, key). A truncated last line (a killed run) is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut < len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done.setdefault((row["id"], row["key"]), row)
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EvalError(f"line {lineno} of `{path}` is not a prediction row: delete that line and rerun.") from None
    return done
