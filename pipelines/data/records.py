"""The prompt contract: how an alpaca record becomes chat messages, the same for training, serving and evaluation.

The user message is LLaMA-Factory's alpaca join (instruction, then "\\n" + input when there is one); the system
message is the record's `system` when non-empty, else none, so that the chat template's default applies (as
LLaMA-Factory's `qwen` template does). `pipelines.eval` sends exactly these messages; `pipelines.eval.parity`
checks that LLaMA-Factory renders the same tokens from the record.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.common.errors import PipelinesError


class RecordError(PipelinesError, ValueError):
    """A data file that is not a list of alpaca records; one sentence naming the file and record."""


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """The alpaca records of a JSON list file (the first `limit`), with `id`, `input` and `system` filled in."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"data file `{path}` does not exist: run `make data` or pass another `--data`.") from None
    except IsADirectoryError:
        raise RecordError(f"data file `{path}` is a folder: pass the JSON file, e.g. `data/cluener_val.json`.") from None
    except OSError as e:
        raise RecordError(f"data file `{path}` cannot be read ({e.strerror}): check its permissions.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"data file `{path}` is not valid JSON ({e}): pass a JSON list of alpaca records.") from None
    if not isinstance(data, list) or not data:
        raise RecordError(f"data file `{path}` is not a non-empty JSON list of alpaca records: run `make data`.")
    records = []
    for i, r in enumerate(data):
        if not (isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)):
            raise RecordError(f"record {i} of `{path}` lacks a string `instruction` or `output`: "
                            f"regenerate it with `make data`.")
        records.append({
            "id": str(r["id"]) if r.get("id") is not None else str(i),
            "instruction": r["instruction"],
            "input": r.get("input") or "",
            "output": r["output"],
            "system": r.get("system") or "",
        })
    return records[:limit] if limit is not None else records


def user_text(record: dict[str, str]) -> str:
    """The user message as LLaMA-Factory's alpaca converter joins it: instruction, then "\\n" + input if any."""
    return "\n".join(part for part in (record["instruction"], record.get("input") or "") if part)


def build_messages(record: dict[str, str]) -> list[dict[str, str]]:
    """The chat messages of a record: its system prompt when non-empty (else the chat template's default), the user."""
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return messages + [{"role": "user", "content": user_text(record)}]
