"""Lets the training ranks on the CPU load a checkpoint: torch learns the `cpu:N` device tag (not a package module).

transformers (5.6) resumes the optimizer of a run with several ranks with `torch.load(map_location=args.device)`,
and on the CPU that device is `cpu:0` (accelerate numbers the CPU ranks' devices), a tag torch's own CPU
deserializer does not take ("don't know how to restore data location … (tagged with cpu:0)"), so `RESUME=1`
with NPROC_PER_NODE > 1 on the CPU would fail. `make train` puts this folder first on PYTHONPATH for such runs
only; Python imports `sitecustomize` at start-up (the `site` module), which registers a deserializer that keeps a
`cpu:N` storage on the CPU. Nothing else changes; GPU runs never see it.
"""

from __future__ import annotations

import re

_CPU_N = re.compile(r"cpu:\d+")


def _tag(obj):  # this registration only restores; torch's own taggers name the devices when saving
    return None


def _deserialize(obj, location: str):
    return obj if _CPU_N.fullmatch(location) else None


try:
    import torch.serialization

    torch.serialization.register_package(11, _tag, _deserialize)  # right after torch's own CPU entry (10)
except ImportError:  # a process of the run without torch
    pass
