"""Benchmark 4: `make setup` with uv against pip: both venvs from empty caches (cold), again (warm), and the no-op.

Each installer builds `.venv` and `.venv-vllm` into a folder of the work dir with
`python3 -m pipelines setup --venv-dir DIR` (the system Python, as `make setup` runs it), installing the same
locks (requirements/lock/*-cpu.txt), with caches of its own:

- cold: no venvs and empty caches (UV_CACHE_DIR, PIP_CACHE_DIR) and no `.venv-tools` (PIPELINES_TOOLS_DIR), so
  the uv side includes installing uv itself with pip: what a fresh clone costs on a machine that never ran it.
- warm: the venvs deleted, the caches (and uv) kept: a rebuild after `rm -rf .venv .venv-vllm` or a new lock.
- no-op: setup once more with nothing changed.
- cold from PyPI (uv only): cold with pip's configuration files hidden (PIP_CONFIG_FILE=/dev/null), so without
  this machine's local mirrors of PyPI files: everything but the CPU torch (PIP_FIND_LINKS) downloaded.

The phases run interleaved (uv cold, pip cold, uv warm, …) so that a change in the machine's load or the network
falls on both sides. Both get this machine's pip settings (uv through setup's translation): the find-links with
the local CPU torch and the local mirrors of PyPI files, so cold downloads from PyPI only what those lack.
Figures: wall seconds of the whole command, its CPU seconds, and the disk the side holds after cold (venvs +
caches + uv, a hard-linked file counted once). uv skips compiling bytecode (Python writes it at first import);
pip compiles every module at install. Not part of `bench all`: it downloads, and pip's cold run takes minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipelines import venvs as project_setup
from pipelines.bench import measure
from pipelines.common.paths import ROOT, rel, venv_bin

INSTALLERS = ("uv", "pip")
PHASES = ("cold", "warm", "noop")
#: uv's extra phase: cold, with no local mirror (pip's files hidden: only the PIP_* variables remain)
PYPI = "cold_pypi"
#: seconds on 2 cores, both venvs together
TARGETS = {"uv cold": 90, "uv warm": 20}

_LIST = ("import importlib.metadata as m, json; "
         "print(json.dumps(sorted(f\"{d.metadata['Name'].lower()}=={d.version}\" for d in m.distributions())))")

#: This benchmark's method version (see pipelines.bench.measure): bump it when what it measures changes.
BENCH_SPEC = "2"


def setup_command(venvs: Path) -> list[str]:
    """The command each side times: `make setup`'s, into a folder of its own."""
    return [system_python(), "-m", "pipelines", "setup", "--venv-dir", str(venvs)]


def system_python() -> str:
    """The interpreter `make setup` runs on (`python3`, not a venv's), even when the benchmark runs in .venv."""
    return getattr(sys, "_base_executable", None) or sys.executable


def child_env(side: Path, installer: str, pypi_only: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PIPELINES_VENV_DIR", "VLLM_PACKAGE", "PIPELINES_LOCK", "UV_CACHE_DIR")}
    own_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != own_bin)
    env.update(UV_CACHE_DIR=str(side / "cache-uv"), PIP_CACHE_DIR=str(side / "cache-pip"),
               PIPELINES_TOOLS_DIR=str(side / "tools"), PIPELINES_INSTALLER=installer)
    if pypi_only:
        env["PIP_CONFIG_FILE"] = os.devnull
    return env


def disk_mib(folder: Path) -> float:
    """Bytes on disk under `folder`, each inode once (uv hard-links its cache into the venvs)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total / 2**20


def distributions(venvs: Path) -> dict[str, list[str]]:
    out = {}
    for name in (".venv", ".venv-vllm"):
        res = subprocess.run([str(venv_bin(venvs / name, "python")), "-c", _LIST], capture_output=True, text=True,
                             timeout=120)
        out[name] = json.loads(res.stdout) if res.returncode == 0 else [f"<failed: {res.stderr[-300:]}>"]
    return out


def _check(phase: str, installer: str, log: Path) -> None:
    text = log.read_text(errors="replace")
    if phase == "noop":
        if text.count("is up to date") != 2:
            raise measure.BenchError(f"setup with {installer} again did more than nothing; see {log}")
    elif text.count("installed requirements/lock/") != 2 or "(no lock)" in text:
        raise measure.BenchError(f"setup with {installer} ({phase}) did not install both locks; see {log}")


def bench(work: Path, repeats: int = 1, quick: bool = False, echo=print) -> dict[str, Any]:
    installers = ("uv",) if quick else INSTALLERS
    locks = [i.path for i in project_setup.lock_inputs("cpu")]
    result = measure.envelope("setup", quick=quick, repeats=repeats, settings={})  # the time and load at the start
    runs: dict[str, dict[str, list[dict[str, float]]]] = {i: {p: [] for p in PHASES} for i in installers}
    runs["uv"][PYPI] = []
    same: list[bool] = []
    differences: list[str] = []
    for rep in range(repeats):
        sides = {i: work / f"{i}-{rep}" for i in installers}
        for phase in PHASES:
            for installer, side in sides.items():
                venvs = side / "venvs"
                if phase == "cold":
                    shutil.rmtree(side, ignore_errors=True)
                elif phase == "warm":
                    shutil.rmtree(venvs, ignore_errors=True)
                echo(f"bench setup: {installer} {phase} (repeat {rep + 1}/{repeats}) …")
                run = measure.run_child(setup_command(venvs), work / f"{installer}-{rep}-{phase}.log", env=child_env(side, installer),
                                       cwd=ROOT, timeout=3600)
                measure.check_child(run, f"`python3 -m pipelines setup` with {installer} ({phase})")
                _check(phase, installer, run.log)
                figures = {"seconds": run.seconds, "cpu_seconds": run.cpu_seconds}
                if phase == "cold":
                    figures["disk_mib"] = disk_mib(side)
                runs[installer][phase].append(figures)
                echo(f"  {run.seconds:.1f} s")
        side = work / f"uv-pypi-{rep}"
        echo(f"bench setup: uv cold from PyPI, no local mirrors (repeat {rep + 1}/{repeats}) …")
        run = measure.run_child(setup_command(side / "venvs"),
                               work / f"uv-{rep}-{PYPI}.log", env=child_env(side, "uv", pypi_only=True), cwd=ROOT,
                               timeout=3600)
        measure.check_child(run, "`python3 -m pipelines setup` with uv (cold from PyPI)")
        _check(PYPI, "uv", run.log)
        runs["uv"][PYPI].append({"seconds": run.seconds, "cpu_seconds": run.cpu_seconds, "disk_mib": disk_mib(side)})
        echo(f"  {run.seconds:.1f} s")
        shutil.rmtree(side, ignore_errors=True)
        if len(sides) == 2:
            got = {i: distributions(s / "venvs") for i, s in sides.items()}
            same.append(got["uv"] == got["pip"])
            for name in (".venv", ".venv-vllm"):
                a, b = set(got["uv"][name]), set(got["pip"][name])
                differences += [f"{name}: only uv {sorted(a - b)}, only pip {sorted(b - a)}"] if a != b else []
        for side in sides.values():
            shutil.rmtree(side, ignore_errors=True)
    result.update(settings={
        "command": "python3 -m pipelines setup --venv-dir DIR (PIPELINES_INSTALLER=uv|pip)",
        "locks": [rel(p) for p in locks],
        "lock_distributions": {rel(p): len(project_setup.lock_packages(p)) for p in locks},
        "uv": project_setup.UV_VERSION,
        "pip_settings": project_setup.uv_options(project_setup.pip_settings()).shown,
        "phases": {"cold": "empty caches, no venvs, no uv", "warm": "venvs deleted, caches kept",
                   "noop": "again, nothing changed",
                   PYPI: "uv cold, PIP_CONFIG_FILE=/dev/null: no local mirrors; PIP_FIND_LINKS (the CPU torch) kept"},
    })
    summary = {i: {p: measure.summarise_runs(r) for p, r in by_phase.items()} for i, by_phase in runs.items()}
    cold = {i: measure.median_of(summary[i]["cold"], "seconds") for i in installers}
    result.update({
        "ratio": measure.ratio(cold.get("pip"), cold.get("uv")),  # pip's seconds / uv's: how many times faster uv is
        "targets_s": TARGETS,
        "met": {k: (measure.median_of(summary[k.split()[0]][k.split()[1]], "seconds") or 1e9) <= v
                for k, v in TARGETS.items() if k.split()[0] in summary},
        "same_distributions": all(same) if same else None,
        "differences": differences,
        "sides": summary,
        "runs": runs,
    })
    return result


def render(result: dict[str, Any]) -> str:
    sides = result["sides"]
    names = [i for i in INSTALLERS if i in sides]

    def cell(i: str, phase: str, figure: str) -> str:
        return measure.spread((sides[i].get(phase) or {}).get(figure))

    def row(label: str, phase: str, figure: str) -> list[str]:
        cells = [cell(i, phase, figure) for i in names]
        if len(names) == 2:
            r = measure.ratio(measure.median_of(sides["pip"].get(phase) or {}, figure),
                             measure.median_of(sides["uv"].get(phase) or {}, figure))
            cells.append(measure.fmt(r))
        return [label, *cells]

    headers = ["both venvs", *names, *(["pip/uv"] if len(names) == 2 else [])]
    rows = [row("cold s (empty caches, no venvs)", "cold", "seconds"),
            row("warm s (caches kept)", "warm", "seconds"),
            row("no-op s (nothing changed)", "noop", "seconds"),
            row("cold s from PyPI (no local mirrors)", PYPI, "seconds"),
            row("cold CPU s", "cold", "cpu_seconds"),
            row("warm CPU s", "warm", "cpu_seconds"),
            row("disk MiB after cold (venvs + caches)", "cold", "disk_mib")]
    locks = ", ".join(f"{k} ({v})" for k, v in result["settings"]["lock_distributions"].items())
    met = ", ".join(f"{k} ≤ {v} s: {'met' if result['met'].get(k) else 'missed'}"
                    for k, v in result["targets_s"].items() if k in result["met"])
    text = (f"setup: .venv + .venv-vllm from the locks {locks}, uv {result['settings']['uv']}\n"
            + measure.table(headers, rows)
            + f"\ntargets on {result['machine'].get('cores')} cores: {met}")
    if result.get("same_distributions") is not None:
        text += ("\nboth installers left the same distributions at the same versions"
                 if result["same_distributions"] else "\ndistributions differ: " + "; ".join(result["differences"]))
    return text
