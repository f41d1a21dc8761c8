"""The vllm-router command line for `replicas` > 1: the vLLM project's router before N servers, from .venv-vllm.

The router takes the config's host and port and routes with its `routing` policy; it retries a request that
failed on one replica on another, and health-checks the replicas often enough that a dead one leaves the
rotation within seconds. The API key (`VLLM_API_KEY`) never reaches its command line: the router runs as
`python -c` of `vllm_router`'s own entry point, which adds `--api-key` from the environment.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.common.paths import VENV_VLLM, venv_bin
from pipelines.serve.config import ServeConfig

#: How the router retries and checks health: a failed request goes to another replica up to RETRIES times; a
#: replica that fails HEALTH_FAILURES checks HEALTH_INTERVAL_S apart leaves the rotation until it answers again.
RETRIES = 5
HEALTH_INTERVAL_S = 2
HEALTH_FAILURES = 1

#: `vllm-router …` with `--api-key` taken from the environment, so that the key is not in the process's argv.
_LAUNCH = ("import os, sys; from vllm_router.launch_router import main; "
           "k = os.environ.get('VLLM_API_KEY'); sys.argv[1:] += ['--api-key', k] if k else []; sys.exit(main())")


def router_command(cfg: ServeConfig, worker_urls: list[str], *, host: str | None = None,
                   python: str | Path | None = None) -> list[str]:
    """The router's argv: listen on `host` (default `cfg.host`) and `cfg.port`, route to `worker_urls`."""
    return [str(python or venv_bin(VENV_VLLM, "python")), "-c", _LAUNCH, *router_args(cfg, worker_urls, host=host)]


def router_args(cfg: ServeConfig, worker_urls: list[str], *, host: str | None = None) -> list[str]:
    """`vllm-router`'s arguments (the compose bundle's router service runs the same)."""
    return ["--host", host or cfg.host, "--port", str(cfg.port), "--worker-urls", *worker_urls,
            "--policy", cfg.routing, "--retry-max-retries", str(RETRIES),
            "--health-check-interval-secs", str(HEALTH_INTERVAL_S),
            "--health-failure-threshold", str(HEALTH_FAILURES),
            "--worker-startup-timeout-secs", str(int(cfg.startup_timeout)),
            "--worker-startup-check-interval", "1", "--log-level", "warning"]
