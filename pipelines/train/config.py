"""Training configs: find a LLaMA-Factory YAML and merge its `key=value` overrides as `llamafactory-cli` does.

The config library of the training stage: `check`, `launch`, `export` and `sweep` read configs through it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from pipelines.common.errors import PipelinesError
from pipelines.common.paths import CONF_DIR, ROOT

#: String keys that LLaMA-Factory also takes as a YAML list.
LIST_KEYS = ("dataset", "eval_dataset", "lora_target", "additional_target", "adapter_name_or_path")


class CheckError(PipelinesError):
    """The config cannot be read at all (missing file, bad YAML, bad override): one sentence."""


def find_config(config: str | Path) -> Path:
    """The config file: as given (from the current directory), else from the repository root."""
    p = Path(config).expanduser()
    if p.is_file():
        return p
    if not p.is_absolute() and (ROOT / p).is_file():
        return ROOT / p
    near = difflib.get_close_matches(p.name, [f.name for f in CONF_DIR.glob("*.yaml")], n=2)
    hint = f" (closest: {', '.join(f'`conf/{n}`' for n in near)})" if near else ""
    raise CheckError(f"`{config}` not found; pass a file of `conf/` as CONFIG{hint}.")


def load_config(config: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The YAML merged with `key=value` overrides, as `llamafactory-cli train CONFIG key=value …` merges them."""
    from omegaconf import OmegaConf

    path = find_config(config)
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise CheckError(f"override `{o}` is not `key=value`; write it as e.g. `num_train_epochs=2`.")
    try:
        base = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OmegaConf's own
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckError(f"`{config}` is not valid YAML ({first}); fix the file.") from None
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_cli(list(overrides))))
    except Exception as e:
        raise CheckError(f"the overrides `{' '.join(overrides)}` cannot be merged into `{config}` "
                         f"({str(e).strip().splitlines()[0]}); write them as `key=value`.") from None
    if not isinstance(merged, dict):
        raise CheckError(f"`{config}` is not a mapping of LLaMA-Factory keys; write one `key: value` per line.")
    return cast(dict[str, Any], merged)  # OmegaConf types keys as str | int | Enum | …; a config's keys are names


def as_list(value: Any) -> list[str]:
    """LLaMA-Factory's `dataset: a,b` (or a YAML list) as names."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]



@contextlib.contextmanager
def quiet_llamafactory():
    """LLaMA-Factory and transformers log at INFO to stdout/stderr while parsing: keep the report readable."""
    saved = {k: os.environ.get(k) for k in ("LLAMAFACTORY_VERBOSITY", "DISABLE_VERSION_CHECK")}
    os.environ["LLAMAFACTORY_VERBOSITY"] = "WARNING"
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    lf_logger = logging.getLogger("llamafactory")
    level = lf_logger.level
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            import transformers

            tf_level = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            lf_logger.setLevel(logging.WARNING)
            try:
                yield sink
            finally:
                transformers.logging.set_verbosity(tf_level)
    finally:
        lf_logger.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


