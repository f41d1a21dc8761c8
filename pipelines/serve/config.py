"""Serve configs (`serve/*.yaml`): load, validate, and check the adapters before a server starts.

Pure apart from reading the config, the adapters' `adapter_config.json` and a bind() on the port: no vLLM,
no network. Every check collects its problems and `ServeConfigError` carries them all, one sentence each.
The keys are documented in serve/README.md.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from pipelines.common.io import weights_fingerprint
from pipelines.common.lora import VLLM_LORA_RANKS, round_rank
from pipelines.common.net import port_free
from pipelines.common.paths import ROOT, TRAIN_MANIFEST, is_local, resolve

#: Flags the launcher builds from keys; `extra_args` may not set them.
OWNED_FLAGS = {
    "--host": "host", "--port": "port", "--served-model-name": "served_model_name",
    "--lora-modules": "adapters", "--enable-lora": "adapters", "--api-key": "the VLLM_API_KEY environment variable",
}
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ServeConfigError(ValueError):
    """All the problems found at once; str() gives one sentence per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ServeConfig:
    model: str
    served_model_name: str = ""
    adapters: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    max_lora_rank: int | None = None
    max_loras: int | None = None
    runtime_lora_updating: bool = False
    cpu_kvcache_space: int = 4
    cpu_threads: int | None = None
    startup_timeout: float = 300.0
    extra_args: list[str] = field(default_factory=list)
    source: str = "<dict>"  # the file it came from, for messages (not a YAML key)

    @property
    def lora_enabled(self) -> bool:
        return bool(self.adapters) or self.runtime_lora_updating


KEYS = [f.name for f in fields(ServeConfig) if f.name != "source"]
_INT_KEYS = ("port", "max_model_len", "tensor_parallel_size", "data_parallel_size", "max_lora_rank", "max_loras",
             "cpu_kvcache_space", "cpu_threads")


def model_arg(model: str, base: Path = ROOT) -> str:
    """What `vllm serve` gets as the model: an absolute local path, or the hub id unchanged."""
    return str(resolve(model, base).resolve()) if is_local(model, base) else model


def flag_name(arg: str) -> str | None:
    """`--max_lora_rank=8` -> `--max-lora-rank`; None for a value."""
    if not arg.startswith("--"):
        return None
    return "--" + arg[2:].split("=", 1)[0].replace("_", "-")


def extra_flags(extra: list[str]) -> set[str]:
    return {f for f in map(flag_name, extra) if f}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(KEYS)}."


def from_dict(raw: dict, source: str = "<dict>") -> ServeConfig:
    """Validate a parsed config; raise ServeConfigError with every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ServeConfigError([f"`{source}` must be a YAML mapping of serve keys, not {type(raw).__name__}."])
    for key in raw:
        if key not in KEYS:
            problems.append(f"`{key}` in `{source}` is not a serve key; {_suggest(str(key))}")
    if not raw.get("model") or not isinstance(raw.get("model"), str):
        problems.append(f"`model` is missing in `{source}`; set it to a local model folder or a hub id.")
    for key in _INT_KEYS:
        v = raw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            problems.append(f"`{key}` in `{source}` is {v!r}; set it to a positive integer.")
    port = raw.get("port")
    if isinstance(port, int) and not isinstance(port, bool) and port > 65535:
        problems.append(f"`port` in `{source}` is {port}; use a port between 1 and 65535.")
    rank = raw.get("max_lora_rank")
    if isinstance(rank, int) and rank not in VLLM_LORA_RANKS:
        problems.append(f"`max_lora_rank` in `{source}` is {rank}; vLLM accepts one of "
                        f"{', '.join(map(str, VLLM_LORA_RANKS))}.")
    if not isinstance(raw.get("runtime_lora_updating", False), bool):
        problems.append(f"`runtime_lora_updating` in `{source}` must be true or false.")
    timeout = raw.get("startup_timeout", 300)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        problems.append(f"`startup_timeout` in `{source}` is {timeout!r}; set it to a number of seconds.")

    adapters = raw.get("adapters") or {}
    name = raw.get("served_model_name") or (Path(str(raw.get("model", ""))).name or "model")
    if not isinstance(adapters, dict):
        problems.append(f"`adapters` in `{source}` must map adapter names to folders, e.g. `cluener: saves/…`.")
        adapters = {}
    for a, p in adapters.items():
        if not isinstance(a, str) or not ADAPTER_NAME.match(a):
            problems.append(f"adapter name `{a}` in `{source}` must be letters, digits, `.`, `_` or `-`.")
        if a == name:
            problems.append(f"adapter `{a}` in `{source}` has the same name as the base model; rename it.")
        if not isinstance(p, str) or not p:
            problems.append(f"adapter `{a}` in `{source}` needs a folder path as its value.")

    extra = raw.get("extra_args") or []
    if not isinstance(extra, list) or not all(isinstance(x, (str, int, float)) for x in extra):
        problems.append(f"`extra_args` in `{source}` must be a list of strings, e.g. [\"--enforce-eager\"].")
        extra = []
    extra = [str(x) for x in extra]
    for flag in sorted(extra_flags(extra) & OWNED_FLAGS.keys()):
        problems.append(f"`extra_args` in `{source}` sets `{flag}`, which the launcher builds itself; "
                        f"use {OWNED_FLAGS[flag] if ' ' in OWNED_FLAGS[flag] else '`' + OWNED_FLAGS[flag] + '`'} "
                        "instead.")
    if problems:
        raise ServeConfigError(problems)
    known = {k: v for k, v in raw.items() if k in KEYS and v is not None}
    known.update(served_model_name=name, adapters={str(k): str(v) for k, v in adapters.items()}, extra_args=extra,
                 startup_timeout=float(timeout))
    return ServeConfig(**known, source=source)


def load(path: str | Path, port: int | None = None) -> ServeConfig:
    p = Path(path)
    if not p.is_file():
        raise ServeConfigError([f"serve config `{path}` does not exist; see serve/ for examples."])
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ServeConfigError([f"`{path}` is not valid YAML: {str(e).splitlines()[0]}."]) from e
    cfg = from_dict(raw, source=str(path))
    if port is not None:
        cfg.port = port
    return cfg


# ---------------------------------------------------------------- adapters


@dataclass
class AdapterInfo:
    name: str
    path: Path
    rank: int
    base: str | None


def adapter_rank(conf: dict) -> int:
    """The largest rank in an adapter: `r` and any per-module `rank_pattern` value (as vLLM computes it)."""
    ranks = [int(conf.get("r") or 0), *(int(v) for v in (conf.get("rank_pattern") or {}).values())]
    return max(ranks)


def _same_base(adapter_base: str, served: str, adapter_dir: Path) -> bool:
    """Do an adapter's `base_model_name_or_path` and the served model denote the same model?

    Local folders compare by resolved path; hub ids case-insensitively; a hub id against a folder (or a path
    that exists only on the machine that trained the adapter) by the last path component, so that
    `Qwen/Qwen2.5-0.5B-Instruct` matches `/models/Qwen2.5-0.5B-Instruct`.
    """
    def norm(name: str) -> tuple[bool, str]:
        for base in (ROOT, adapter_dir):
            p = resolve(name, base)
            if p.exists():
                return True, str(p.resolve())
        return False, name.rstrip("/").lower()

    (a_local, a), (s_local, s) = norm(adapter_base), norm(served)
    if a == s:
        return True
    if a_local and s_local:
        return False
    return Path(a).name.lower() == Path(s).name.lower()


def inspect_adapter(name: str, path: str | Path, served_model: str, max_rank: int | None = None,
                    base_dir: Path = ROOT) -> tuple[AdapterInfo | None, list[str]]:
    """Read one adapter folder; return its info and the problems found (one sentence each)."""
    folder = resolve(path, base_dir)
    if not folder.is_dir():
        return None, [(f"adapter `{name}`: folder `{path}` does not exist; train it first (`make train`) "
                       "or fix its path.")]
    conf_file = folder / "adapter_config.json"
    if not conf_file.is_file():
        return None, [f"adapter `{name}`: `{conf_file}` is missing; the folder does not hold a PEFT adapter."]
    try:
        conf = json.loads(conf_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return None, [f"adapter `{name}`: `{conf_file}` is not valid JSON ({e})."]
    problems = []
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        problems.append(f"adapter `{name}`: `{folder}` holds no weights ({' or '.join(WEIGHT_FILES)}); "
                        "training may not have finished.")
    if conf.get("peft_type", "LORA") != "LORA":
        problems.append(f"adapter `{name}`: `peft_type` is {conf.get('peft_type')!r} in `{conf_file}`; "
                        "vLLM serves LoRA adapters only.")
    if conf.get("modules_to_save"):
        problems.append(f"adapter `{name}`: `modules_to_save` is {conf['modules_to_save']} in `{conf_file}`; "
                        "vLLM cannot serve fully trained extra modules, retrain without `additional_target`.")
    try:
        rank = adapter_rank(conf)
    except (TypeError, ValueError):
        rank = 0
    if rank < 1:
        problems.append(f"adapter `{name}`: `r` in `{conf_file}` is missing or not a positive integer.")
    elif rank > VLLM_LORA_RANKS[-1]:
        problems.append(f"adapter `{name}`: LoRA rank {rank} in `{conf_file}` is above {VLLM_LORA_RANKS[-1]}, "
                        f"the most vLLM serves; retrain with `lora_rank` <= {VLLM_LORA_RANKS[-1]}.")
    elif max_rank is not None and rank > max_rank:
        problems.append(f"adapter `{name}`: LoRA rank {rank} in `{conf_file}` is above `max_lora_rank` {max_rank}; "
                        f"raise `max_lora_rank` to {round_rank(rank)} or leave it unset.")
    base = conf.get("base_model_name_or_path")
    if base and not _same_base(str(base), served_model, folder):
        problems.append(f"adapter `{name}` was trained on `{base}` but the served base is `{served_model}`; "
                        "serve it with its own base model.")
    stale = stale_base(name, folder, served_model, base_dir)
    if stale:
        problems.append(stale)
    return AdapterInfo(name, folder.resolve(), rank, base), problems


def stale_base(name: str, folder: Path, served_model: str, base_dir: Path = ROOT) -> str | None:
    """A problem when the adapter's training manifest fingerprints other base weights than the served folder
    holds now (the base was rebuilt after training); None when they match or there is nothing to compare."""
    try:
        manifest = json.loads((folder / TRAIN_MANIFEST).read_text(encoding="utf-8"))
        trained_on = (manifest.get("base_model") or {}).get("weights_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None
    served_dir = resolve(served_model, base_dir)
    if not trained_on or not is_local(served_model) or not served_dir.is_dir():
        return None
    now = weights_fingerprint(served_dir)
    if now is None or now == trained_on:
        return None
    config = manifest.get("config_file") or "<its config>"
    return (f"adapter `{name}` was trained on other weights of `{served_model}` than the folder holds now (the base "
            f"changed after the training that ended {manifest.get('ended', '?')}); retrain it "
            f"(`make train CONFIG={config}`) or serve the base it was trained on.")


def precheck(cfg: ServeConfig, check_port: bool = True) -> list[AdapterInfo]:
    """Check the base model, every adapter and the port; raise ServeConfigError with every problem."""
    problems: list[str] = []
    if is_local(cfg.model) and not resolve(cfg.model).is_dir():
        problems.append(f"base model `{cfg.model}` (`model` in `{cfg.source}`) does not exist; build it "
                        "(`make tiny-base`) or fix the path.")
    infos = []
    for name, path in cfg.adapters.items():
        info, found = inspect_adapter(name, path, cfg.model, cfg.max_lora_rank)
        problems += found
        if info:
            infos.append(info)
    if check_port and not port_free(cfg.host, cfg.port):
        problems.append(f"port {cfg.port} on {cfg.host} is already in use; stop what listens there "
                        f"(`make serve-stop PORT={cfg.port}`) or pick another port with `PORT=`.")
    if problems:
        raise ServeConfigError(problems)
    return infos
