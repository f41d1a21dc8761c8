"""Serve configs (`serve/*.yaml`): load, validate, and check the adapters before a server starts.

Pure apart from reading the config, the adapters' `adapter_config.json` and a bind() on the port: no vLLM,
no network. Every check collects its problems and `ServeConfigError` carries them all, one sentence each.
The keys are documented in serve/README.md. The adapter checks (`inspect_adapter`: its config, its safetensors
header, its shapes against the base's config.json) stay one module with the config they check: one precheck pass.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Hashable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pipelines.common.errors import PipelinesError
from pipelines.common.io import read_json, weights_fingerprint
from pipelines.common.lora import VLLM_LORA_RANKS, round_rank
from pipelines.common.net import port_free
from pipelines.common.paths import ROOT, TRAIN_MANIFEST, is_local, resolve

#: Flags the launcher builds from keys; `extra_args` may not set them.
OWNED_FLAGS = {
    "--host": "host", "--port": "port", "--served-model-name": "served_model_name",
    "--lora-modules": "adapters", "--enable-lora": "adapters", "--api-key": "the VLLM_API_KEY environment variable",
}
#: vllm-router's `--policy` choices that route plain replicas (kv_aware needs KV events from the engines).
ROUTING_POLICIES = ("cache_aware", "round_robin", "random", "power_of_two", "consistent_hash", "sticky_least_loaded")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ServeConfigError(PipelinesError, ValueError):
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
    # N > 1: N servers behind vllm-router on `host:port` (pipelines/serve/replicas.py; compose: N services + router)
    replicas: int = 1
    routing: str = "cache_aware"  # vllm-router's `--policy` (replicas > 1)
    # deployment bundles only (`make deploy`); `make serve` ignores them
    gpus: int | None = None  # GPUs per replica; default tensor_parallel_size x data_parallel_size
    gpu_type: str | None = None  # k8s: the nodes' `nvidia.com/gpu.product` label
    cpus: int | None = None
    memory: str | None = None  # a Kubernetes quantity, e.g. 16Gi
    image: str | None = None  # default vllm/vllm-openai
    image_tag: str | None = None  # default the GPU vLLM release's tag
    publish_host: str = "127.0.0.1"  # compose: where the port is published
    source: str = "<dict>"  # the file it came from, for messages (not a YAML key)

    @property
    def lora_enabled(self) -> bool:
        return bool(self.adapters) or self.runtime_lora_updating

    @property
    def gpu_count(self) -> int:
        """GPUs one replica needs: `gpus`, else one per tensor-parallel rank and data-parallel replica."""
        return self.gpus or self.tensor_parallel_size * self.data_parallel_size


KEYS = [f.name for f in fields(ServeConfig) if f.name != "source"]
_INT_KEYS = ("port", "max_model_len", "tensor_parallel_size", "data_parallel_size", "max_lora_rank", "max_loras",
             "cpu_kvcache_space", "cpu_threads", "replicas", "gpus", "cpus")


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


def owned_flags(extra: list[str]) -> list[tuple[str, str]]:
    """(flag as given, the launcher's flag) for each flag of `extra` that names one the launcher builds: exactly,
    or as a prefix of it (vLLM's argparse accepts a unique prefix, `--hos` for `--host`, and `--flag=value`)."""
    hits = []
    for given in sorted(extra_flags(extra)):
        for flag in sorted(OWNED_FLAGS):
            if len(given) > 2 and flag.startswith(given):
                hits.append((given, flag))
    return hits


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
    routing = raw.get("routing", "cache_aware")
    if routing not in ROUTING_POLICIES:
        problems.append(f"`routing` in `{source}` is {routing!r}; set it to one of {', '.join(ROUTING_POLICIES)}.")
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
    for given, flag in owned_flags(extra):
        said = f"`{flag}`" if given == flag else f"`{given}` (argparse reads it as `{flag}`)"
        problems.append(f"`extra_args` in `{source}` sets {said}, which the launcher builds itself; "
                        f"use {OWNED_FLAGS[flag] if ' ' in OWNED_FLAGS[flag] else '`' + OWNED_FLAGS[flag] + '`'} "
                        "instead.")
    problems += _deploy_problems(raw, source)
    if problems:
        raise ServeConfigError(problems)
    known = {k: v for k, v in raw.items() if k in KEYS and v is not None}
    known.update(served_model_name=name, adapters={str(k): str(v) for k, v in adapters.items()}, extra_args=extra,
                 startup_timeout=float(timeout))
    return ServeConfig(**known, source=source)


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def _deploy_problems(raw: dict, source: str) -> list[str]:
    """The deployment keys' own checks (types and forms); what a target refuses beyond them, the renderer checks
    against that target's schema."""
    problems = []
    for key in ("gpu_type", "memory", "image", "image_tag", "publish_host"):
        v = raw.get(key)
        if v is not None and (not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v.strip())):
            problems.append(f"`{key}` in `{source}` is {v!r}; set it to a non-empty string without spaces.")
    memory = raw.get("memory")
    if isinstance(memory, str) and memory.strip() and not _QUANTITY.match(memory):
        problems.append(f"`memory` in `{source}` is {memory!r}; write it as a Kubernetes quantity such as `16Gi`.")
    tag = raw.get("image_tag")
    if isinstance(tag, str) and tag.strip() and not _IMAGE_TAG.match(tag):
        problems.append(f"`image_tag` in `{source}` is {tag!r}; a Docker tag is up to 128 letters, digits, `_`, `.` "
                        "or `-`.")
    host = raw.get("publish_host")
    if isinstance(host, str) and host.strip():
        try:
            ipaddress.ip_address(host)
        except ValueError:
            problems.append(f"`publish_host` in `{source}` is {host!r}; set it to an IP address such as 127.0.0.1.")
    gpus, tp, dp = (raw.get(k) for k in ("gpus", "tensor_parallel_size", "data_parallel_size"))
    if isinstance(gpus, int) \
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (gpus, tp or 1, dp or 1)) \
            and gpus < (tp or 1) * (dp or 1):
        problems.append(f"`gpus` in `{source}` is {gpus} but `tensor_parallel_size` x `data_parallel_size` needs "
                        f"{(tp or 1) * (dp or 1)}; raise `gpus` or leave it unset.")
    return problems


class DuplicateKey(yaml.YAMLError):
    """A mapping with the same key twice (not a PipelinesError: it never leaves `load`)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a mapping with the same key twice (PyYAML keeps the last one silently: an
    adapter named twice would serve only the second folder)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict = {}
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    hashable = hash(key) is not None
                except TypeError:
                    hashable = False
                if hashable and key in seen:
                    raise DuplicateKey(f"the key `{key}` appears twice (lines {seen[key]} and "
                                       f"{key_node.start_mark.line + 1})")
                if hashable:
                    seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load(path: str | Path, port: int | None = None, replicas: int | None = None) -> ServeConfig:
    p = Path(path)
    if not p.is_file():
        raise ServeConfigError([f"serve config `{path}` does not exist; see serve/ for examples."])
    try:
        raw = yaml.load(p.read_text(encoding="utf-8"), Loader=UniqueKeyLoader) or {}  # a SafeLoader
    except DuplicateKey as e:
        raise ServeConfigError([f"`{path}`: {e}; keep one of them."]) from e
    except yaml.YAMLError as e:
        raise ServeConfigError([f"`{path}` is not valid YAML: {str(e).splitlines()[0]}."]) from e
    cfg = from_dict(raw, source=str(path))
    if port is not None:
        cfg.port = port
    if replicas is not None:  # `make serve REPLICAS=N`
        if replicas < 1:
            raise ServeConfigError([f"REPLICAS (`--replicas`) is {replicas}; set it to a positive integer."])
        cfg.replicas = replicas
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


#: Bytes per element of the safetensors dtypes.
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                      "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_LORA_TENSOR = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """The tensor entries of a safetensors file (8-byte little-endian header length, then a JSON header), checked
    against the file's length: (header, None), or (None, what is wrong, to follow the file's name)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else None
            if length is None or length > size - 8:
                return None, (f"is {size} bytes long, shorter than its header says ({length} bytes)" if length
                              else f"is {size} bytes long, too short for a safetensors file")
            raw = f.read(length)
    except OSError as e:
        return None, f"cannot be read ({e.strerror})"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "has a header that is not valid JSON, so it is no safetensors file"
    if not isinstance(header, dict):
        return None, "has a header that is not a JSON object, so it is no safetensors file"
    end = 0
    for tensor, entry in header.items():
        if tensor == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            return None, f"has a malformed header entry for tensor `{tensor}`"
        width = SAFETENSORS_DTYPES.get(entry.get("dtype"))
        count = 1
        for d in shape:
            count *= d
        if width is not None and offsets[1] - offsets[0] != count * width:
            return None, (f"gives tensor `{tensor}` {offsets[1] - offsets[0]} bytes where its shape {shape} in "
                          f"{entry.get('dtype')} takes {count * width}")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        return None, f"is truncated: {size} bytes long where its header describes {8 + length + end}"
    return header, None


def base_projections(config: dict) -> tuple[dict[str, tuple[int, int]], int | None]:
    """(`self_attn.q_proj` … `mlp.down_proj` → (in_features, out_features), number of layers) from a base model's
    config.json; empty when the config lacks the sizes."""
    text_config = config.get("text_config")
    c = text_config if isinstance(text_config, dict) else config
    hidden, heads = c.get("hidden_size"), c.get("num_attention_heads")
    if not (type(hidden) is int and type(heads) is int and heads > 0):
        return {}, None
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    shapes = {"self_attn.q_proj": (hidden, heads * head_dim), "self_attn.k_proj": (hidden, kv * head_dim),
              "self_attn.v_proj": (hidden, kv * head_dim), "self_attn.o_proj": (heads * head_dim, hidden)}
    inter = c.get("intermediate_size")
    if type(inter) is int:
        shapes.update({"mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
                       "mlp.down_proj": (inter, hidden)})
    layers = c.get("num_hidden_layers")
    return shapes, layers if type(layers) is int else None


def _module_rank(conf: dict, module: str) -> int:
    """The rank PEFT gives `module`: the first `rank_pattern` key that matches its name (as PEFT matches), else `r`."""
    for pattern, rank in (conf.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return int(rank)
    return int(conf.get("r") or 0)


def check_weights(name: str, folder: Path, conf: dict, served_model: str, base_dir: Path = ROOT) -> list[str]:
    """The adapter's `adapter_model.safetensors` is whole, its LoRA ranks are the config's, and (for a local base
    with a config.json) its A/B shapes fit the base's projections; at most one sentence."""
    file = folder / WEIGHT_FILES[0]
    if not file.is_file():
        return []  # adapter_model.bin: a pickle, not read here
    header, problem = safetensors_header(file)
    if problem:
        return [f"adapter `{name}`: `{file}` {problem}; the file is damaged, so copy it again or retrain the adapter."]
    assert header is not None  # safetensors_header gives a header whenever it names no problem
    base_conf = resolve(served_model, base_dir) / "config.json" if is_local(served_model, base_dir) else None
    shapes: dict[str, tuple[int, int]] = {}
    layers: int | None = None
    if base_conf is not None and base_conf.is_file():
        try:
            shapes, layers = base_projections(json.loads(base_conf.read_text(encoding="utf-8")))
        except (OSError, ValueError, AttributeError):
            shapes, layers = {}, None
    wrong: list[str] = []
    for tensor, entry in header.items():
        m = _LORA_TENSOR.match(tensor)
        if not m or tensor == "__metadata__":
            continue
        shape, module, ab = entry["shape"], m["module"], m["ab"]
        if len(shape) != 2:
            wrong.append(f"tensor `{tensor}` in `{file}` has shape {shape}, not a matrix; the file is damaged, so "
                         "copy it again or retrain the adapter")
            continue
        try:
            rank = _module_rank(conf, module)
        except (TypeError, ValueError, re.error):
            rank = 0
        got = shape[0] if ab == "A" else shape[1]
        if rank and got != rank:
            wrong.append(f"tensor `{tensor}` in `{file}` has rank {got}, but `adapter_config.json` says {rank}; the "
                         "config and the weights do not belong together, so save the adapter again")
            continue
        layer = _LAYER.search(tensor)
        if layers is not None and layer and int(layer[1]) >= layers:
            wrong.append(f"tensor `{tensor}` in `{file}` is for layer {layer[1]}, but `{served_model}` has {layers} "
                         "layers; the adapter was trained for another model, so serve it with its own base or "
                         "retrain it")
            continue
        io = shapes.get(".".join(module.split(".")[-2:]))
        if io is None:
            continue
        want = [got, io[0]] if ab == "A" else [io[1], got]
        if shape != want:
            wrong.append(f"tensor `{tensor}` in `{file}` has shape {shape}, but `{served_model}` needs {want} "
                         f"(lora_{ab} is {'[r, in_features]' if ab == 'A' else '[out_features, r]'} of "
                         f"`{module.rsplit('.', 1)[-1]}`); the adapter was trained for another model, so serve it "
                         "with its own base or retrain it")
    if not wrong:
        return []
    more = f" ({len(wrong) - 1} more tensors are wrong too)" if len(wrong) > 1 else ""
    return [f"adapter `{name}`: {wrong[0]}{more}."]


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
    if not problems:  # the weights are read only when the rest fits, so that each adapter gets one sentence
        problems += check_weights(name, folder, conf, served_model, base_dir)
    stale = stale_base(name, folder, served_model, base_dir)
    if stale:
        problems.append(stale)
    return AdapterInfo(name, folder.resolve(), rank, base), problems


def stale_base(name: str, folder: Path, served_model: str, base_dir: Path = ROOT) -> str | None:
    """A problem when the adapter's training manifest fingerprints other base weights than the served folder
    holds now (the base was rebuilt after training); None when they match or there is nothing to compare."""
    manifest = read_json(folder / TRAIN_MANIFEST)
    if not isinstance(manifest, dict):
        return None
    base_model = manifest.get("base_model")
    trained_on = base_model.get("weights_fingerprint") if isinstance(base_model, dict) else None
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
