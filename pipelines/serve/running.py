"""`running(cfg)`: a server for the length of a `with` block, the way tests, benchmarks and `make all` want one.

Starts the server through the launcher (free loopback port by default; polls `/health` and `/v1/models`; raises
"server exited: …" / "server failed to start in time …") and stops its whole process group on the way out,
whatever happened inside the block (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from pipelines.common.net import free_port
from pipelines.common.process import QUICK_GRACE_S
from pipelines.serve.config import ServeConfig
from pipelines.serve.process import RUN_DIR, Served, stop
from pipelines.serve.replicas import start

STOP_GRACE_S = QUICK_GRACE_S  # a test's or benchmark's server: nothing of it is worth waiting longer for


@contextlib.contextmanager
def running(cfg: ServeConfig, run_dir: Path = RUN_DIR, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, free: bool = False,
            echo: Callable[[str], None] = print) -> Iterator[Served]:
    """Start `cfg` (on a free loopback port when `free`), yield the running server, stop it on exit."""
    if free:
        cfg = replace(cfg, host="127.0.0.1", port=free_port())
    served = start(cfg, run_dir=run_dir, env=env, timeout=timeout, echo=echo)
    try:
        yield served
    finally:
        try:
            stop(cfg.port, run_dir, grace=STOP_GRACE_S)
        except Exception as e:  # say so; never hide the block's own result or error
            print(f"serve: stopping the server on port {cfg.port} failed: {e}", file=sys.stderr)
