"""Serve: one vLLM OpenAI-compatible server with the base model and its LoRA adapters (config, command, process,
HTTP client), run as a process from `.venv-vllm`; this package never imports vLLM."""

from pipelines.serve.client import ServeError, healthy, served_models
from pipelines.serve.command import build_command, build_env, shown_env
from pipelines.serve.config import AdapterInfo, ServeConfig, ServeConfigError, from_dict, load, precheck
from pipelines.serve.process import (
    RUN_DIR,
    Served,
    failure_cause,
    group_members,
    load_adapter,
    read_state,
    run_files,
    start,
    status,
    stop,
    unload_adapter,
)
from pipelines.serve.running import running

__all__ = [
    "RUN_DIR", "AdapterInfo", "ServeConfig", "ServeConfigError", "ServeError", "Served", "build_command", "build_env",
    "failure_cause", "from_dict", "group_members", "healthy", "load", "load_adapter", "precheck", "read_state",
    "run_files", "running", "served_models", "shown_env", "start", "status", "stop", "unload_adapter",
]
