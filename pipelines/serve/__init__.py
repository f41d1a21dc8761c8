"""Serve: vLLM OpenAI-compatible servers with the base model and its LoRA adapters, run as processes from
`.venv-vllm`; this package never imports vLLM. Modules: config (serve configs and their checks), vllm_args (the
`vllm serve` command line and environment), process (start, status, stop by process group), replicas and router
(`replicas: N`: N servers behind vllm-router, one unit), client (HTTP), running (a server for a block of code),
manage (the `serve` command), render and deploy (bundles)."""

from pipelines.serve.client import ServeError, healthy, served_models
from pipelines.serve.config import AdapterInfo, ServeConfig, ServeConfigError, from_dict, load, precheck
from pipelines.serve.process import (
    RUN_DIR,
    Served,
    failure_cause,
    group_members,
    load_adapter,
    read_state,
    run_files,
    status,
    stop,
    unload_adapter,
)
from pipelines.serve.replicas import start
from pipelines.serve.running import running
from pipelines.serve.vllm_args import build_command, build_env, shown_env

__all__ = [
    "RUN_DIR", "AdapterInfo", "ServeConfig", "ServeConfigError", "ServeError", "Served", "build_command", "build_env",
    "failure_cause", "from_dict", "group_members", "healthy", "load", "load_adapter", "precheck", "read_state",
    "run_files", "running", "served_models", "shown_env", "start", "status", "stop", "unload_adapter",
]
