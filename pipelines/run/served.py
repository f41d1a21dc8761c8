"""Score several adapters of one base from one vLLM server: what `make sweep` and `make curve` share.

`score_adapters` serves the base and every adapter from one server (started for the block and stopped whatever
happens, `max_loras` from their number and the machine: vLLM swaps the others in), or loads them at runtime into a
server already running (`attach`: a serve config with `runtime_lora_updating: true`, the one `make all` runs),
and scores them all with the evaluator in one run, so that each pair gets its paired comparison. When every answer
is saved for the same weights it starts no server and sends nothing (`served_cards`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common import device
from pipelines.common.errors import PipelinesError
from pipelines.common.io import read_json
from pipelines.common.net import free_port
from pipelines.common.paths import SERVE_DIR, resolve
from pipelines.eval import tasks
from pipelines.eval.predictions import NotSaved

#: Adapters in one batch by default: vLLM keeps this many LoRA slots and swaps the others in from disk.
MAX_LORAS = {"cpu": 4, "cuda": 8}


class ServedError(PipelinesError, RuntimeError):
    """One sentence; the command prints it."""


def serve_config_for(model: str, given: str | None) -> Path:
    """The serve config that serves `model`: `--serve`, else the one of `serve/` whose `model` is this base."""
    if given:
        return resolve(given)
    from pipelines.serve.config import load

    for path in sorted(SERVE_DIR.glob("*.yaml")):
        try:
            cfg = load(path)
        except ValueError:
            continue
        if cfg.model == model or resolve(cfg.model).resolve() == resolve(model).resolve():
            return path
    raise ServedError(f"no serve config of `serve/` serves `{model}`; pass one with `--serve` (its adapters are "
                      "replaced by the ones scored).")


def served_cards(previous: dict[str, Any] | None, models: list[str]) -> dict[str, dict[str, Any]] | None:
    """The model cards of the last evaluation, with each local folder's weights as they are now: enough to score
    saved answers without a server. None when the last evaluation did not cover every model."""
    cards = ((previous or {}).get("settings") or {}).get("models") or {}
    if not all(m in cards for m in models):
        return None
    return {m: {"root": cards[m].get("root"), "parent": cards[m].get("parent"), "max_model_len": None}
            for m in models}


@dataclass(frozen=True)
class Scored:
    """What `score_adapters` gives back: the evaluator's metrics and how it ran (server, requests, seconds)."""

    metrics: dict[str, Any]
    info: dict[str, Any]


def score_adapters(task: str, data: str, adapters: dict[str, str], eval_dir: Path, serve_path: Path, *,
                   port: int | None = None, limit: int | None = None, max_loras: int | None = None,
                   with_base: bool = True, attach: bool = False, previous_info: dict[str, Any] | None = None,
                   echo: Callable[[str], None] = print) -> Scored:
    """Score `adapters` (name → folder) and, `with_base`, the base, on `data`, into `eval_dir` (NER plainly and
    span-constrained). `attach`: the server of `serve_path` on `port` is running; load the adapters into it and
    unload them afterwards. `previous_info`: how the run that asked for saved answers went (kept on a rerun)."""
    from pipelines import serve
    from pipelines.eval.evaluate import run_eval

    spec = tasks.get(task)
    if not resolve(data).is_file():
        raise ServedError(f"the validation split `{data}` of `{task}` does not exist; run `make data` (or set "
                          "`val_size` so that convert writes one).")
    scfg = serve.load(serve_path, port=port) if attach else serve.load(serve_path)
    base = scfg.served_model_name
    models = [*([base] if with_base else []), *adapters]
    constrain = "both" if spec.constraint else "none"
    kwargs: dict[str, Any] = dict(limit=limit, constrain=constrain, progress=True)
    previous = read_json(eval_dir / "metrics.json")
    cards = served_cards(previous, models)
    if cards is not None:
        assert previous is not None  # the cards are read from it (and `models` is never empty)
        try:
            metrics = run_eval(previous["settings"]["base_url"], task, data, models, eval_dir, served=cards,
                               echo=lambda s: None, **kwargs)
            echo(f"every answer is saved for these weights; scored {len(models)} models without a server")
            asked = previous_info or {}
            kept: dict[str, Any] = {k: asked[k] for k in ("max_loras", "seconds", "requests", "requests_per_s")
                                    if k in asked}
            return Scored(metrics, {"base": base, "max_loras": scfg.max_loras, **kept, "requests_sent": 0,
                                    "server": "not started (all answers saved; requests/s of the run that asked "
                                              "for them)"})
        except NotSaved:
            pass
    if attach:
        return _score_attached(task, data, adapters, models, eval_dir, scfg, kwargs, echo)
    scfg.adapters = dict(adapters)
    cap = MAX_LORAS["cuda" if device.has_cuda() else "cpu"]
    scfg.max_loras = max_loras or min(len(adapters), cap)
    scfg.port = port or free_port(scfg.host)
    echo(f"serving `{base}` and {len(adapters)} adapters (max_loras {scfg.max_loras}) on port {scfg.port}")
    with serve.running(scfg, echo=echo) as served:
        t0 = time.time()
        metrics = run_eval(served.base_url, task, data, models, eval_dir, **kwargs)
        seconds = time.time() - t0
    return Scored(metrics, _info(metrics, models, seconds, base=base, server=f"{served.base_url} (stopped)",
                                 max_loras=scfg.max_loras))


def _score_attached(task: str, data: str, adapters: dict[str, str], models: list[str], eval_dir: Path, scfg: Any,
                    kwargs: dict[str, Any], echo: Callable[[str], None]) -> Scored:
    """Load the adapters into the running server of `scfg`, score them, unload them whatever happens."""
    from pipelines.eval.evaluate import run_eval
    from pipelines.serve.process import RUN_DIR, load_adapter, read_state, run_files, unload_adapter

    loaded: list[str] = []
    try:
        for name, path in adapters.items():
            load_adapter(scfg, name, str(resolve(path)))  # refuses a server without runtime LoRA updating
            loaded.append(name)
        state = read_state(run_files(scfg.port, RUN_DIR))
        if state is None:  # it stopped while the adapters loaded
            raise ServedError(f"the server on port {scfg.port} stopped while the adapters were loaded into it; "
                              "start it again with `make serve` and rerun.")
        base_url = state["base_url"]
        echo(f"loaded {len(loaded)} adapters into the server on port {scfg.port}")
        t0 = time.time()
        metrics = run_eval(base_url, task, data, models, eval_dir, **kwargs)
        seconds = time.time() - t0
    finally:
        for name in loaded:
            try:
                unload_adapter(scfg, name)
            except PipelinesError as e:
                echo(f"unloading `{name}` failed: {e}")
    return Scored(metrics, _info(metrics, models, seconds, base=scfg.served_model_name,
                                 server=f"{base_url} (attached; adapters unloaded)", max_loras=scfg.max_loras))


def _info(metrics: dict[str, Any], models: list[str], seconds: float, **extra: Any) -> dict[str, Any]:
    n = metrics["data"]["n"] * len(models) * (2 if "constrained" in metrics else 1)
    return {**extra, "seconds": round(seconds, 1), "requests": n, "requests_per_s": round(n / max(seconds, 1e-9), 2)}
