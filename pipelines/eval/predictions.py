"""The predictions file, `OUT/<model>/predictions.jsonl`: one JSON row per answer, appended as it arrives, so a
killed run loses only its requests in flight and a rerun sends only what is missing.

A row is reused only for the same request to the same model: its key is the sha256 of the request and of the
model's identity — the served name's `root` and `parent` in `/v1/models` and, where that folder is readable here,
the fingerprint of its weights. A retrained adapter served under the old name, or another adapter loaded under it,
is a new model whose answers are asked for again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pipelines.common.io import json_sha256, read_json, weights_fingerprint
from pipelines.common.paths import is_local, resolve
from pipelines.eval import EvalError

PREDICTIONS = "predictions.jsonl"


class NotSaved(EvalError):
    """Scoring from saved answers alone (no server) found answers missing."""


def model_dir_name(model: str) -> str:
    """A directory name for a served model name, distinct for distinct names: characters other than letters, digits
    and `-._` are %-escaped (`team/ner` → `team%2Fner`, never the folder of `team_ner`)."""
    name = quote(model, safe="-_~")
    name = name.replace(".", "%2E") if set(name) <= {"."} or name.startswith(".") else name
    return name or "%00"


def predictions_path(out: Path, model: str) -> Path:
    return Path(out) / model_dir_name(model) / PREDICTIONS


def model_identity(info: dict[str, Any]) -> dict[str, Any]:
    """What a served name stands for: `root` (the model or adapter path the server loaded), `parent` (an adapter's
    base) and, when `root` is a folder on this machine, its weights' fingerprint; for an adapter folder whose
    `adapter_config.json` names a local base, that base's weights' fingerprint too (`base_weights`), so that an
    adapter without a training manifest (saved with peft, downloaded) is a new model once its base changes."""
    root, parent = info.get("root"), info.get("parent")
    fingerprint = base = None
    if isinstance(root, str) and root and Path(root).is_dir():
        fingerprint = weights_fingerprint(root)
        base = adapter_base_fingerprint(Path(root))
    identity = {"root": root, "parent": parent, "weights": fingerprint}
    if base is not None:  # only for adapters with a local base: every other identity (and its saved key) as before
        identity["base_weights"] = base
    return identity


def adapter_base_fingerprint(folder: Path) -> str | None:
    """The weights fingerprint of the local base named by `folder/adapter_config.json`; None for no adapter, a
    hub-id base or a base not on this machine."""
    conf = read_json(folder / "adapter_config.json")
    base = conf.get("base_model_name_or_path") if isinstance(conf, dict) else None
    if not isinstance(base, str) or not base or not is_local(base):
        return None
    path = resolve(base)
    return weights_fingerprint(path) if path.is_dir() else None


def answer_key(request: dict[str, Any], identity: dict[str, Any]) -> str:
    """The key of a saved answer: sha256 of the request (prompt, settings, constraint) and the model's identity."""
    return json_sha256({"request": request, "model": identity})


def set_aside(path: Path) -> Path | None:
    """`--fresh`: move a predictions file out of the way (kept beside it with a time stamp); its new name."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.stem}.{time.strftime('%Y%m%d-%H%M%S')}.jsonl.old")
    path.rename(target)
    return target


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
