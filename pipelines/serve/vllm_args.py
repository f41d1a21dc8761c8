"""The `vllm serve` command line and environment for a serve config: the one builder that `make serve`, its
`command` dry run and the deployment bundles use."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pipelines.common.device import has_cuda, usable_cores
from pipelines.common.lora import lora_module, round_rank
from pipelines.common.paths import VENV_VLLM, venv_bin
from pipelines.serve.config import AdapterInfo, ServeConfig, extra_flags, model_arg

DEFAULT_MAX_LORA_RANK = 16  # for a server with no static adapters that allows runtime loading


def build_command(cfg: ServeConfig, adapters: list[AdapterInfo], vllm: str | Path | None = None, *,
                  host: str | None = None, paths: Mapping[str, str] | None = None) -> list[str]:
    """The `vllm serve` argv for `cfg`; `adapters` come from `precheck` (their ranks size `--max-lora-rank`).

    For a server in a container (`make deploy`), `host` replaces `cfg.host` and `paths` maps the local paths of the
    base model folder and of each adapter folder to where the container mounts them; nothing else changes."""
    def where(path: str) -> str:
        return (paths or {}).get(path, path)

    cmd = [str(vllm or venv_bin(VENV_VLLM, "vllm")), "serve", where(model_arg(cfg.model)),
           "--host", host or cfg.host, "--port", str(cfg.port), "--served-model-name", cfg.served_model_name,
           "--dtype", cfg.dtype,
           "--tensor-parallel-size", str(cfg.tensor_parallel_size),
           "--data-parallel-size", str(cfg.data_parallel_size)]
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    extra = extra_flags(cfg.extra_args)
    if cfg.lora_enabled:
        cmd.append("--enable-lora")
        if "--max-lora-rank" not in extra:
            cmd += ["--max-lora-rank", str(max_lora_rank(cfg, adapters))]
        if "--max-loras" not in extra:
            cmd += ["--max-loras", str(cfg.max_loras or max(1, len(adapters)))]
        if adapters:
            cmd.append("--lora-modules")
            cmd += [lora_module(a.name, where(str(a.path)), cfg.served_model_name) for a in adapters]
    return cmd + list(cfg.extra_args)


def max_lora_rank(cfg: ServeConfig, adapters: list[AdapterInfo]) -> int:
    """`max_lora_rank` when set, else the largest adapter rank rounded up to a value vLLM accepts."""
    if cfg.max_lora_rank:
        return cfg.max_lora_rank
    if not adapters:
        return DEFAULT_MAX_LORA_RANK
    return round_rank(max(a.rank for a in adapters))


def build_env(cfg: ServeConfig, base: Mapping[str, str] | None = None, cuda: bool | None = None) -> dict[str, str]:
    """The server's environment: `base` (os.environ) plus the CPU settings and the runtime-LoRA switch.

    On the CPU: `VLLM_CPU_KVCACHE_SPACE` (GiB, `cpu_kvcache_space`) and `OMP_NUM_THREADS` (`cpu_threads`, else an
    existing OMP_NUM_THREADS, else the usable cores). vLLM itself binds the engine's threads to the cores it
    does not reserve for its API server (VLLM_CPU_OMP_THREADS_BIND=auto).
    """
    env = dict(os.environ if base is None else base)
    cuda = has_cuda(env) if cuda is None else cuda
    if not cuda:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cfg.cpu_kvcache_space)
        if cfg.cpu_threads:
            env["OMP_NUM_THREADS"] = str(cfg.cpu_threads)
        else:
            env.setdefault("OMP_NUM_THREADS", str(usable_cores()))
    if cfg.runtime_lora_updating:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    else:
        env.pop("VLLM_ALLOW_RUNTIME_LORA_UPDATING", None)
    return env


def shown_env(env: Mapping[str, str], base: Mapping[str, str]) -> dict[str, str]:
    """The variables the launcher adds or changes, for printing; the API key only as a placeholder."""
    shown = {k: v for k, v in env.items() if base.get(k) != v and k != "VLLM_API_KEY"}
    if env.get("VLLM_API_KEY"):
        shown["VLLM_API_KEY"] = "<from the environment>"
    return shown
