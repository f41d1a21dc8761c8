"""How a config's batch is split over several training ranks (DDP) so that the global batch stays one process's.

A config's `per_device_train_batch_size` × `gradient_accumulation_steps` is read as the global batch of one
optimizer step, as one process trains it. On `world_size` = NPROC_PER_NODE × NNODES ranks, `make train` keeps
that global batch: the accumulation takes as much of the world size as it divides (each rank's memory stays the
same), the per-device batch the rest; e.g. batch 4 × accumulation 8 on 2 ranks trains 4 × 4 per rank, batch 8 ×
accumulation 1 on 2 ranks trains 4 × 1 per rank. A world size that does not divide the global batch is refused
in one sentence (no split keeps it). On the CPU (`use_cpu`) the ranks talk over gloo (`ddp_backend=gloo`, unless
the config sets one); on GPUs accelerate picks nccl.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipelines.common import device
from pipelines.common.flags import config_flag, env_int
from pipelines.train.config import CheckError

BATCH = "per_device_train_batch_size"
ACCUMULATION = "gradient_accumulation_steps"
#: transformers' TrainingArguments defaults, for a config that leaves the keys out
DEFAULTS = {BATCH: 8, ACCUMULATION: 1}


class RankError(CheckError):
    """A batch that the ranks cannot share without changing the global batch: one sentence."""


def world(environ: Mapping[str, str]) -> tuple[int, int]:
    """(NPROC_PER_NODE, NNODES) of a launcher environment, each 1 when unset or empty; anything but a whole number
    of at least 1 is one sentence naming the variable (FlagError). The one reader of both, for `make train` and
    `make sweep` alike."""
    return env_int("NPROC_PER_NODE", environ) or 1, env_int("NNODES", environ) or 1


def world_size(environ: Mapping[str, str]) -> int:
    """NPROC_PER_NODE × NNODES of a launcher environment (`world`)."""
    nproc, nnodes = world(environ)
    return nproc * nnodes


def _value(cfg: Mapping, key: str) -> int:
    return int(cfg.get(key) or DEFAULTS[key])


def global_batch(cfg: Mapping, world: int = 1) -> int:
    """Samples per optimizer step: per-device batch × accumulation × world size."""
    return _value(cfg, BATCH) * _value(cfg, ACCUMULATION) * world


def per_rank(cfg: Mapping, nproc: int = 1, nnodes: int = 1) -> dict[str, Any]:
    """The keys to override so that `nproc` × `nnodes` ranks train the config's one-process global batch (and
    talk over gloo on the CPU); {} for one rank. Raises RankError when the world size does not divide it."""
    world = nproc * nnodes
    if world == 1:
        return {}
    batch, accumulation = _value(cfg, BATCH), _value(cfg, ACCUMULATION)
    shared = math.gcd(accumulation, world)
    rest = world // shared
    if batch % rest:
        total = batch * accumulation
        raise RankError(f"`{BATCH}: {batch}` × `{ACCUMULATION}: {accumulation}` is a global batch of {total}, "
                        f"which {world} ranks (`NPROC_PER_NODE={nproc}` × `NNODES={nnodes}`) cannot share without "
                        f"changing it; set `{ACCUMULATION}` to a multiple of {world} (e.g. "
                        f"`ARGS=\"{ACCUMULATION}={accumulation * world}\"`, a global batch of {total * world}) or "
                        f"NPROC_PER_NODE × NNODES to a divisor of {total}.")
    out: dict[str, Any] = {}
    if shared > 1:
        out[ACCUMULATION] = accumulation // shared
    if rest > 1:
        out[BATCH] = batch // rest
    if config_flag(cfg, "use_cpu") and not cfg.get("ddp_backend"):
        out["ddp_backend"] = "gloo"
    return out


def gpu_ranks(cfg: Mapping, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ`, with NPROC_PER_NODE set to the visible GPUs where it is unset and there are several:
    LLaMA-Factory would start one rank per GPU by itself, unseen by the split (said in one line)."""
    gpus = 0 if config_flag(cfg, "use_cpu") or environ.get("NPROC_PER_NODE") else device.visible_gpus(environ)
    if gpus < 2:
        return dict(environ)
    print(f"train: {gpus} GPUs visible and NPROC_PER_NODE unset: NPROC_PER_NODE={gpus} (one rank per GPU, as "
          "LLaMA-Factory starts them; set NPROC_PER_NODE=1 or CUDA_VISIBLE_DEVICES for fewer).", flush=True)
    return {**environ, "NPROC_PER_NODE": str(gpus)}


def split(cfg: Mapping, nproc: int, nnodes: int) -> tuple[dict[str, Any], list[str]]:
    """(the config as the ranks train it, the `key=value` overrides that say so); the split printed in one line
    when there are several ranks. Raises RankError as `per_rank` does."""
    keys = per_rank(cfg, nproc, nnodes)
    if nproc * nnodes > 1:
        print(describe(cfg, keys, nproc, nnodes), flush=True)
    return {**cfg, **keys}, [f"{k}={v}" for k, v in keys.items()]


def describe(cfg: Mapping, split: Mapping[str, Any], nproc: int, nnodes: int) -> str:
    """One line for the launcher's output: how the global batch is split over the ranks."""
    world = nproc * nnodes
    merged = {**cfg, **split}
    per = _value(merged, BATCH)
    acc = _value(merged, ACCUMULATION)
    changed = ", ".join(f"`{k}` {_value(cfg, k)} → {v}" for k, v in split.items() if k in DEFAULTS) or "nothing"
    backend = f", backend {merged['ddp_backend']}" if merged.get("ddp_backend") else ""
    return (f"train: {world} ranks (NPROC_PER_NODE={nproc} × NNODES={nnodes}{backend}): global batch "
            f"{global_batch(merged, world)} = {per} per device × {acc} accumulation × {world} ranks, as one process "
            f"trains {global_batch(cfg)}; per rank: {changed}.")
