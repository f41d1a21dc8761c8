"""Deployment documents of a serve config, as data: the Compose file (`compose.yaml`) and the Helm values of the
vLLM production-stack chart (`values.yaml`), and their check against each target's JSON schema. Pure: it writes no
file and reads no environment, so an API key in the environment can never reach a document.

Both documents carry the arguments of `command.build_command`, the one builder `make serve` uses: in the container
only the paths (the mount points) and `--host 0.0.0.0` differ. The official image's entrypoint is `vllm serve`
(vLLM's docker/Dockerfile, stage `vllm-openai`), so Compose's `command:` is what follows `serve`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pipelines.common.paths import is_local
from pipelines.common.versions import ROUTER_BASE_IMAGE, VLLM_IMAGE, VLLM_ROUTER_VERSION, vllm_image_tag
from pipelines.serve.config import AdapterInfo, ServeConfig, ServeConfigError, flag_name, model_arg
from pipelines.serve.router import router_args
from pipelines.serve.vllm_args import build_command, build_env

CHART = "vllm-stack 0.1.12"
#: The Helm release name the bundle's README and push pod use (`helm install vllm …`).
RELEASE = "vllm"
API_KEY_SECRET = {"secretName": "vllm-api-key", "secretKey": "VLLM_API_KEY"}
ADAPTERS_MOUNT = "/adapters"
MODELS_MOUNT = "/models"
HF_CACHE_MOUNT = "/root/.cache/huggingface"
#: Where the chart mounts its shared volume in every engine pod; local adapters and a local base go there.
SHARED_PVC = "/data/shared-pvc-storage"
LORA_DIR = f"{SHARED_PVC}/lora-adapters"
GPU_LABEL = "nvidia.com/gpu.product"  # the node label NVIDIA's GPU feature discovery sets
#: Requests per GPU when the config sets none: the chart's own defaults.
CPUS_PER_GPU, GIB_PER_GPU = 4, 10


class DeployError(ServeConfigError):
    """A bundle that cannot be rendered or written; one sentence per problem."""


def image(cfg: ServeConfig) -> tuple[str, str]:
    """(repository, tag): `image` / `image_tag` of the config, else the official image of the GPU vLLM release."""
    return cfg.image or VLLM_IMAGE, cfg.image_tag or vllm_image_tag()


def k8s_name(name: str, limit: int = 40) -> str:
    """`qwen2.5-0.5b-instruct` -> `qwen2-5-0-5b-instruct`: a lowercase RFC 1123 label short enough for the names
    the chart builds from it (`<release>-<name>-engine-service` must stay within 63 characters)."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:limit].strip("-") or "model"


def model_target(cfg: ServeConfig, root: str = MODELS_MOUNT) -> str | None:
    """Where a local base model folder lies in the container (`root/<folder name>`); None for a hub id."""
    return f"{root}/{Path(model_arg(cfg.model)).name}" if is_local(cfg.model) else None


def container_args(cfg: ServeConfig, adapters: list[AdapterInfo], adapter_root: str = ADAPTERS_MOUNT,
                   model_root: str = MODELS_MOUNT) -> list[str]:
    """The arguments after `vllm serve` in a container: `make serve`'s, with the mount points as paths."""
    paths = {str(a.path): f"{adapter_root}/{a.name}" for a in adapters}
    target = model_target(cfg, model_root)  # None for a hub id
    if target is not None:
        paths[model_arg(cfg.model)] = target
    return build_command(cfg, adapters, vllm="vllm", host="0.0.0.0", paths=paths)[2:]


# ---------------------------------------------------------------- Docker Compose


#: The compose bundle's router image, built from the bundle's `router/Dockerfile` (`ROUTER_DOCKERFILE`).
ROUTER_IMAGE = f"pipelines-vllm-router:{VLLM_ROUTER_VERSION}"
#: `router/Dockerfile`: vllm-router at the release of .venv-vllm's lock, from PyPI (a manylinux wheel).
ROUTER_DOCKERFILE = (f"FROM {ROUTER_BASE_IMAGE}\n"
                     f"RUN pip install --no-cache-dir vllm-router=={VLLM_ROUTER_VERSION}\n"
                     'ENTRYPOINT ["vllm-router"]\n')


def render_compose(cfg: ServeConfig, adapters: list[AdapterInfo]) -> dict:
    """`compose.yaml`: one service on the official image, GPUs reserved, adapters and a local base read-only; with
    `replicas` > 1, N such services (`vllm-0` …, each on GPUs of its own, unpublished) and a `router` service
    (vllm-router, the local topology's router and arguments) published on the port."""
    repo, tag = image(cfg)
    env = {"VLLM_API_KEY": "${VLLM_API_KEY:?set VLLM_API_KEY}"}
    env.update(build_env(cfg, base={}, cuda=True))
    volumes = []
    if adapters:
        volumes.append({"type": "bind", "source": "./adapters", "target": ADAPTERS_MOUNT, "read_only": True})
    if is_local(cfg.model):
        volumes.append({"type": "bind", "source": f"${{BASE_MODEL_DIR:-{model_arg(cfg.model)}}}",
                        "target": model_target(cfg), "read_only": True})
    else:  # the hub id: the host's Hugging Face cache, written on the first start
        volumes.append({"type": "bind", "source": "${HF_HOME:-~/.cache/huggingface}", "target": HF_CACHE_MOUNT})
        env["HF_TOKEN"] = "${HF_TOKEN:-}"
    health = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{cfg.port}/health', timeout=5)"
    published = [{"target": cfg.port, "published": cfg.port, "host_ip": cfg.publish_host, "protocol": "tcp"}]
    checks = {"test": ["CMD", "python3", "-c", health], "interval": "30s", "timeout": "10s", "retries": 3,
              "start_period": f"{int(cfg.startup_timeout)}s"}

    def server(gpus: dict) -> dict:
        reservations: dict = {"devices": [{"driver": "nvidia", **gpus, "capabilities": ["gpu"]}]}
        if cfg.cpus:
            reservations["cpus"] = str(cfg.cpus)
        if cfg.memory:
            reservations["memory"] = cfg.memory
        return {
            "image": f"{repo}:{tag}",
            "command": [a.replace("$", "$$") for a in container_args(cfg, adapters)],  # Compose interpolates `$`
            "environment": dict(env),
            "volumes": [dict(v) for v in volumes],
            "ipc": "host",  # vLLM's shared memory between its processes
            "restart": "unless-stopped",
            "healthcheck": dict(checks),
            "deploy": {"resources": {"reservations": reservations}},
        }

    name = re.sub(r"[^a-z0-9_-]+", "-", cfg.served_model_name.lower()).strip("-_") or "vllm"
    if cfg.replicas == 1:
        return {"name": name, "services": {"vllm": {**server({"count": cfg.gpu_count}), "ports": published}}}
    n = cfg.gpu_count  # each replica on GPUs of its own (`count` would give every replica the first ones)
    services = {f"vllm-{i}": server({"device_ids": [str(g) for g in range(i * n, (i + 1) * n)]})
                for i in range(cfg.replicas)}
    urls = [f"http://{s}:{cfg.port}" for s in services]
    services["router"] = {  # the key reaches the replicas in each request's header, which the router forwards
        "image": ROUTER_IMAGE,
        "build": {"context": "./router"},  # router/Dockerfile (ROUTER_DOCKERFILE), written beside compose.yaml
        "command": router_args(cfg, urls, host="0.0.0.0"),
        "ports": published,
        "restart": "unless-stopped",
        "depends_on": {s: {"condition": "service_healthy"} for s in list(services)},
        "healthcheck": {**checks, "start_period": "30s"},
    }
    return {"name": name, "services": services}


# ---------------------------------------------------------------- the vllm-stack Helm chart

#: `vllm serve` flags with a `vllmConfig` key of their own (one value each).
VLLM_CONFIG_FLAGS = {"--max-model-len": ("maxModelLen", int), "--dtype": ("dtype", str),
                     "--tensor-parallel-size": ("tensorParallelSize", int), "--max-loras": ("maxLoras", int)}
#: Flags the chart sets itself (`--host 0.0.0.0 --port <containerPort> --enable-lora`) or the LoRA controller
#: replaces (`--lora-modules`: it loads each `loraAdapters` entry at runtime).
CHART_FLAGS = {"--host": 1, "--port": 1, "--enable-lora": 0}
PREFIX_CACHING = {"--enable-prefix-caching": True, "--no-enable-prefix-caching": False}


def split_args(args: list[str]) -> tuple[dict, list[str]]:
    """`vllm serve` arguments (after the model) -> (`vllmConfig` keys, `extraArgs`), the order of the rest kept.

    `enablePrefixCaching` is always set: the chart passes `--no-enable-prefix-caching` when it is not, and vLLM's
    default (and so `make serve`'s) is on."""
    config: dict = {"enablePrefixCaching": True}
    extra: list[str] = []
    i = 0
    while i < len(args):
        arg, name = args[i], flag_name(args[i])
        inline = "=" in arg
        value = arg.split("=", 1)[1] if inline else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if inline else 2
        if name in VLLM_CONFIG_FLAGS and value is not None:
            key, kind = VLLM_CONFIG_FLAGS[name]
            try:
                config[key] = kind(value)
            except ValueError:  # e.g. `--max-model-len 4k`: vLLM parses it, the chart's integer cannot hold it
                extra += args[i:i + step]
            i += step
        elif name in CHART_FLAGS:
            i += 1 if inline or not CHART_FLAGS[name] else 2
        elif name == "--lora-modules":
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                i += 1
        elif name in PREFIX_CACHING:
            config["enablePrefixCaching"] = PREFIX_CACHING[name]
            i += 1
        else:
            extra.append(arg)
            i += 1
    return config, extra


def render_values(cfg: ServeConfig, adapters: list[AdapterInfo], urls: Mapping[str, str] | None = None,
                  shared_gib: int = 10) -> dict:
    """`values.yaml`: one LoRA-enabled model behind the router; each adapter a `loraAdapters` entry that the LoRA
    controller loads, from the shared volume (`local`) or from its URL in `urls` (`s3`, `http`)."""
    urls = urls or {}
    repo, tag = image(cfg)
    name = k8s_name(cfg.served_model_name)
    model = model_arg(cfg.model)
    model_url = model_target(cfg, f"{SHARED_PVC}/models") or model
    args = container_args(cfg, adapters, adapter_root=LORA_DIR, model_root=f"{SHARED_PVC}/models")
    vllm_config, extra = split_args(args[1:])
    vllm_config["extraArgs"] = extra
    gpus = cfg.gpu_count
    env = {**build_env(cfg, base={}, cuda=True), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}  # for the controller
    spec = {"name": name, "repository": repo, "tag": tag, "modelURL": model_url, "enableLoRA": True,
            "replicaCount": cfg.replicas, "requestGPU": gpus, "requestCPU": cfg.cpus or CPUS_PER_GPU * gpus,
            "requestMemory": cfg.memory or f"{GIB_PER_GPU * gpus}Gi", "vllmConfig": vllm_config,
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())]}
    if cfg.gpu_type:
        spec["nodeSelectorTerms"] = [{"matchExpressions": [{"key": GPU_LABEL, "operator": "In",
                                                            "values": [cfg.gpu_type]}]}]
    loras = []
    for a in adapters:
        url = urls.get(a.name)
        source = ({"type": "s3" if url.startswith("s3://") else "http", "adapterName": a.name, "repository": url}
                  if url else {"type": "local", "adapterName": a.name, "adapterPath": f"{LORA_DIR}/{a.name}"})
        loras.append({"name": a.name, "baseModel": name, "adapterSource": source,
                      "loraAdapterDeploymentConfig": {"algorithm": "default", "replicas": cfg.replicas}})
    probe = {"initialDelaySeconds": 15, "periodSeconds": 10, "failureThreshold": max(1, int(cfg.startup_timeout) // 10),
             "httpGet": {"path": "/health", "port": 8000}}
    return {
        "servingEngineSpec": {"vllmApiKey": dict(API_KEY_SECRET), "modelSpec": [spec], "startupProbe": probe},
        "routerSpec": {"enableRouter": True},
        "loraController": {"enableLoraController": True},
        "sharedPvcStorage": {"enabled": True, "size": f"{shared_gib}Gi", "accessModes": ["ReadWriteMany"]},
        "loraAdapters": loras,
    }


def push_pod(name: str) -> dict:
    """A pod that mounts the chart's shared volume, to `kubectl cp` the adapters (and a local base) onto it."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-push"},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "push", "image": "busybox:1.37", "command": ["sleep", "3600"],
                                     "volumeMounts": [{"name": "shared", "mountPath": SHARED_PVC}]}],
                     "volumes": [{"name": "shared", "persistentVolumeClaim": {
                         "claimName": f"{RELEASE}-shared-pvc-storage-claim"}}]}}


# ---------------------------------------------------------------- schema checks

_LABEL = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: What Kubernetes and the chart's CRD refuse that the chart's values schema leaves open (it types, not bounds);
#: `x-must-be` (ignored by validators) says in words what a value must be.
STRICT_VALUES = {"type": "object", "properties": {
    "servingEngineSpec": {"properties": {"modelSpec": {"items": {"properties": {
        "replicaCount": {"minimum": 1, "x-must-be": "at least 1"},
        "requestGPU": {"type": "integer", "minimum": 1, "x-must-be": "a whole number of GPUs, at least 1"},
        "requestCPU": {"minimum": 1, "x-must-be": "at least 1"},
        "nodeSelectorTerms": {"items": {"properties": {"matchExpressions": {"items": {"properties": {"values": {
            "items": {"type": "string", "pattern": _LABEL, "maxLength": 63,
                      "x-must-be": "a Kubernetes label value (at most 63 letters, digits, `-`, `_` or `.`, "
                                     "beginning and ending with a letter or digit)"}}}}}}}},
    }}}}},
    "loraAdapters": {"items": {"properties": {
        "name": {"type": "string", "pattern": _SUBDOMAIN, "maxLength": 253,
                 "x-must-be": "a Kubernetes object name (lowercase letters, digits, `-` and `.`, beginning and "
                                "ending with a letter or digit, RFC 1123)"},
        "adapterSource": {"properties": {"type": {"enum": ["local", "s3", "http", "huggingface"]}}},
        "loraAdapterDeploymentConfig": {"properties": {"algorithm": {"enum": ["default", "ordered", "equalized"]},
                                                       "replicas": {"minimum": 0}}},
    }}},
}}
#: The config key behind a document field, for messages (the deepest field named wins).
CONFIG_KEYS = {"replicaCount": "replicas", "requestGPU": "gpus", "requestCPU": "cpus", "requestMemory": "memory",
               "nodeSelectorTerms": "gpu_type", "tag": "image_tag", "repository": "image", "image": "image",
               "loraAdapters": "adapters", "vllmConfig": "extra_args", "command": "extra_args", "ports": "port",
               "devices": "gpus", "cpus": "cpus", "memory": "memory", "modelURL": "model"}


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top)"


def schema_validator(schema: dict):
    """The validator of the draft a schema declares: compose-spec says draft-07 (without the trailing `#` that
    `validator_for` matches), the vllm-stack chart 2020-12."""
    from jsonschema import Draft7Validator
    from jsonschema.validators import validator_for

    cls = Draft7Validator if "draft-07" in str(schema.get("$schema", "draft-07")) else validator_for(schema)
    return cls(schema)


def schema_problems(doc: dict, schema: dict, *, what: str, schema_name: str, source: str) -> list[str]:
    """Every place `doc` breaks `schema`, one sentence each naming the document field and the config key."""
    validator = schema_validator(schema)
    problems = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        key = next((CONFIG_KEYS[p] for p in reversed(list(e.absolute_path)) if p in CONFIG_KEYS), None)
        must = e.schema.get("x-must-be") if isinstance(e.schema, dict) else None
        reason = f"{e.instance!r} is not {must}" if must else e.message
        fix = f"fix `{key}` in `{source}`" if key else f"fix `{source}`"
        problems.append(f"`{what}` for `{source}` breaks {schema_name} at `{_path(e.absolute_path)}`: {reason}; {fix}.")
    return problems
