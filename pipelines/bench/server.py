"""A vLLM server of the tiny base + one LoRA adapter for the benchmarks, through the project's launcher."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.bench import measure
from pipelines.common import lfcli
from pipelines.common.net import free_port
from pipelines.common.paths import CONF_DIR, SAVES_DIR, TINY_BASE
from pipelines.train import launch as train

BASE_NAME = "tiny-base"
ADAPTER_NAME = "cluener"
DEFAULT_ADAPTER = SAVES_DIR / "tiny" / "lora" / "cluener"
CONFIG = CONF_DIR / "tiny_lora_cluener.yaml"


def ensure_adapter(work: Path, data_dir: Path, adapter: str | None, *, samples: int = 128, echo=print) -> Path:
    """`adapter` if given, else saves/tiny/lora/cluener if `make train` made it, else one trained into `work`."""
    if adapter:
        return Path(adapter)
    if (DEFAULT_ADAPTER / "adapter_config.json").is_file():
        from pipelines.serve.config import stale_base

        stale = stale_base("cluener", DEFAULT_ADAPTER, str(Path(TINY_BASE)))
        if not stale:
            return DEFAULT_ADAPTER
        echo(f"bench: not using {DEFAULT_ADAPTER}: {stale}")
    out = work.parent / "adapter"  # shared by the benchmarks of one run (their work folders are siblings)
    if (out / "adapter_config.json").is_file():
        return out
    echo(f"bench: no adapter at {DEFAULT_ADAPTER}; training one ({samples} samples, 1 epoch) into {out}")
    overrides = [f"dataset_dir={data_dir}", f"max_samples={samples}", "num_train_epochs=1", "eval_dataset=null",
                 "do_eval=false", "eval_strategy='no'", "save_strategy='no'", f"output_dir={out}", "report_to=none",
                 "plot_loss=false", "logging_steps=1000"]
    overrides += train.precision_overrides(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))  # as make train
    run = measure.run_child(lfcli.cli("train", str(CONFIG), *overrides), work.parent / "adapter.log",
                           env=lfcli.cli_env())
    measure.check_child(run, "training the benchmark's adapter")
    return out


def serve_config(adapter: Path, port: int):
    from pipelines.serve.config import from_dict

    return from_dict({
        "model": str(Path(TINY_BASE)), "served_model_name": BASE_NAME, "adapters": {ADAPTER_NAME: str(adapter)},
        "host": "127.0.0.1", "port": port, "max_model_len": 1024, "dtype": "float32", "cpu_kvcache_space": 1,
        "startup_timeout": 900,
    }, source="<bench>")


@dataclass
class Running:
    base_url: str  # ends in /v1
    root_url: str
    pid: int
    ready_seconds: float
    rss_at_ready_mib: float
    pss_at_ready_mib: float
    port: int


def group_memory_mib(pgid: int) -> dict[str, float]:
    """Memory of the server's process group in MiB, summed over its live processes: `rss` (VmRSS: shared pages
    count once per process), `pss` (proportional set size: shared pages split, the group's real footprint) and
    `hwm` (VmHWM, each process's peak RSS)."""
    from pipelines.serve.process import group_members

    total = {"rss": 0.0, "pss": 0.0, "hwm": 0.0}
    for pid in group_members(pgid):
        for name, keys in ((f"/proc/{pid}/status", {"VmRSS:": "rss", "VmHWM:": "hwm"}),
                           (f"/proc/{pid}/smaps_rollup", {"Pss:": "pss"})):
            try:
                for line in Path(name).read_text().splitlines():
                    parts = line.split()  # "VmRSS:\t  2877 kB", "Pss:   1234 kB"
                    key = keys.get(parts[0]) if parts else None
                    if key:
                        total[key] += int(parts[1]) / 1024
            except OSError:
                continue
    return total


@contextlib.contextmanager
def running(adapter: Path, work: Path, port: int | None = None, echo=print) -> Iterator[Running]:
    """The benchmark's server (`pipelines.serve.running`), with its memory at ready; always stopped."""
    from pipelines import serve

    port = port or free_port()
    echo(f"bench: starting vLLM on port {port} …")
    with serve.running(serve_config(adapter, port), work / "serve", echo=lambda s: None) as served:
        mem = group_memory_mib(served.pid)
        echo(f"bench: server ready in {served.seconds:.1f} s, RSS {mem['rss']:.0f} MiB (PSS {mem['pss']:.0f} MiB)")
        yield Running(served.base_url, served.base_url[: -len("/v1")], served.pid, served.seconds, mem["rss"],
                      mem["pss"], port)
