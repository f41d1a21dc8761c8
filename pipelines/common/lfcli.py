"""Run `llamafactory-cli` from `.venv` as a process: the environment it gets and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from pipelines.common.device import usable_cores
from pipelines.common.errors import SetupNeeded
from pipelines.common.paths import ROOT, VENV, venv_bin


def cli_env(extra: dict[str, str] | None = None, offline: bool = True,
            base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for llamafactory-cli: `.venv/bin` first on PATH, thread count set, no version nagging, no
    hub when offline.

    PATH: LLaMA-Factory's launcher starts `torchrun` by name (NPROC_PER_NODE > 1, DEEPSPEED), and `make` runs
    `.venv/bin/python` without activating the venv, so its `bin/` is not on PATH otherwise (FileNotFoundError
    'torchrun'). Built from `base` (default: this process's environment), so that callers can build it purely."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = venv_path(env.get("PATH", ""))
    env.setdefault("OMP_NUM_THREADS", str(usable_cores()))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("DISABLE_VERSION_CHECK", "1")
    if offline:
        env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


def venv_path(path: str, venv: Path = VENV) -> str:
    """`path` (a PATH value) with `venv`'s executables folder first, and not repeated later."""
    first = str(venv_bin(venv, "python").parent)
    return os.pathsep.join([first, *(p for p in path.split(os.pathsep) if p and p != first)])


def cli(*args: str) -> list[str]:
    """The command line for `llamafactory-cli ARGS…` of this project's `.venv`."""
    exe = venv_bin(VENV, "llamafactory-cli")
    if not exe.exists():
        raise SetupNeeded(f"`{exe.relative_to(ROOT)}` is missing; run `make setup` first.")
    return [str(exe), *args]


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> int:
    """Run llamafactory-cli with its output streamed to ours; returns its exit status."""
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, env=env or cli_env(), cwd=cwd, stdout=sys.stdout, stderr=sys.stderr).returncode
