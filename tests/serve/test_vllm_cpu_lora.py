"""The vLLM CPU LoRA plugin (serve/plugin/pipelines_vllm_plugin.py): the grouped ops compute what vLLM's per-token ops
compute. Pure-torch checks against the gather form here; the same check against vLLM's own functions, and the
entry point's registration, run inside .venv-vllm. The served outputs are checked against PEFT in test_serve."""

from __future__ import annotations

import subprocess
import textwrap

import pytest
import torch

import pipelines_vllm_plugin as cl
from pipelines.common.paths import ROOT, VENV_VLLM, venv_bin

VLLM_PY = venv_bin(VENV_VLLM, "python")


def gather_reference(inputs, weights, indices):
    """vLLM's form: one weight copy per token, zeros for tokens without an adapter (index -1)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    picked = weights[indices.clamp(min=0)]
    out = torch.einsum("bi,boi->bo", inputs, picked)
    out[indices < 0] = 0
    return out


@pytest.mark.parametrize("indices", [[0] * 7, [1, 1, 0, 2, 0, 1, 2], [-1, 0, -1, 2, 2, 0, -1], [-1] * 7, [2]])
@pytest.mark.parametrize("four_dim", [False, True])
def test_grouped_matmul_equals_the_gather_form(indices, four_dim):
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor(indices)
    x = torch.randn(len(indices), 12, generator=g)
    w = torch.randn(3, 1, 5, 12, generator=g) if four_dim else torch.randn(3, 5, 12, generator=g)
    got = cl.grouped_matmul(x, w, idx, torch.float32)
    assert got.shape == (len(indices), 5)
    torch.testing.assert_close(got, gather_reference(x, w, idx))


def test_shrink_scales_and_expand_adds_or_overwrites():
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([0, 1, -1, 1])
    x = torch.randn(4, 8, generator=g)
    a = torch.randn(2, 1, 3, 8, generator=g)
    b = torch.randn(2, 1, 6, 3, generator=g)
    y = torch.zeros(4, 3)
    cl.bgmv_shrink(x, a, y, idx, scaling=0.5)
    torch.testing.assert_close(y, 0.5 * gather_reference(x, a, idx))
    base = torch.randn(4, 6, generator=g)
    out = base.clone()
    cl.bgmv_expand(y, b, out, idx, add_inputs=True)
    torch.testing.assert_close(out, base + gather_reference(y, b, idx))
    out = base.clone()
    cl.bgmv_expand(y, b, out, idx, add_inputs=False)
    torch.testing.assert_close(out, gather_reference(y, b, idx))
    wide = torch.zeros(4, 10)
    cl.bgmv_expand_slice(y, b, wide, idx, 2, 6, add_inputs=True)
    torch.testing.assert_close(wide[:, 2:8], gather_reference(y, b, idx))
    assert not wide[:, :2].any() and not wide[:, 8:].any()


def test_signature_check():
    def theirs(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        pass

    def renamed(inputs, weights, output_tensor, lora_indices_tensor, scaling=1.0):
        pass

    assert cl.same_parameters(theirs, cl.bgmv_shrink)
    assert not cl.same_parameters(renamed, cl.bgmv_shrink) and not cl.same_parameters(None, cl.bgmv_shrink)


def test_switch():
    assert cl.enabled({}) and cl.enabled({cl.ENV_SWITCH: "1"})
    assert not cl.enabled({cl.ENV_SWITCH: "0"}) and not cl.enabled({cl.ENV_SWITCH: "off"})


CHECK_IN_VLLM = textwrap.dedent("""
    import importlib.metadata as md, torch
    eps = {e.name: e.value for e in md.entry_points(group="vllm.general_plugins")}
    assert eps.get("pipelines_cpu_lora") == "pipelines_vllm_plugin:register", eps
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
    orig = {n: getattr(lora_ops, n) for n in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice", "sgmv_shrink")}
    from vllm.plugins import load_general_plugins
    load_general_plugins()
    import pipelines_vllm_plugin as cl
    patched = punica_cpu.bgmv_shrink is cl.bgmv_shrink and lora_ops.bgmv_expand is cl.bgmv_expand
    print("patched" if patched else "vllm's own ops")
    if not patched:
        raise SystemExit(0 if punica_cpu.bgmv_shrink is orig["bgmv_shrink"] else 1)
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    x = torch.randn(8, 16, generator=g)
    a = torch.randn(2, 1, 4, 16, generator=g)
    b = torch.randn(2, 1, 32, 4, generator=g)
    mine, theirs = torch.zeros(8, 4), torch.zeros(8, 4)
    cl.bgmv_shrink(x, a, mine, idx, 0.25); orig["bgmv_shrink"](x, a, theirs, idx, 0.25)
    torch.testing.assert_close(mine, theirs)
    base = torch.randn(8, 40, generator=g)
    for add in (True, False):
        m, t = base.clone(), base.clone()
        cl.bgmv_expand(mine, b, m, idx, add); orig["bgmv_expand"](theirs, b, t, idx, add)
        torch.testing.assert_close(m, t)
        m, t = base.clone(), base.clone()
        cl.bgmv_expand_slice(mine, b, m, idx, 4, 32, add); orig["bgmv_expand_slice"](theirs, b, t, idx, 4, 32, add)
        torch.testing.assert_close(m, t)
    # sgmv (prefill) goes through lora_ops' module-level bgmv_*, now ours
    seq_idx, seq_len = torch.tensor([1, 0]), torch.tensor([3, 5])
    m = torch.zeros(8, 4)
    lora_ops.sgmv_shrink(x, a, m, None, seq_len, seq_idx, 2, 5, 8, 1.0)
    exploded = torch.repeat_interleave(seq_idx, seq_len)
    t = torch.zeros(8, 4); orig["bgmv_shrink"](x, a, t, exploded, 1.0)
    torch.testing.assert_close(m, t)
    print("ok")
""")


@pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm
@pytest.mark.parametrize("switch", ["1", "0"])
def test_plugin_registered_in_vllm_and_equal_to_vllms_ops(switch):
    env = {"PATH": "/usr/bin:/bin", "PIPELINES_VLLM_CPU_LORA": switch, "VLLM_LOGGING_LEVEL": "WARNING"}
    res = subprocess.run([str(VLLM_PY), "-c", CHECK_IN_VLLM], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.split()
    assert (lines == ["patched", "ok"]) if switch == "1" else (res.stdout.strip() == "vllm's own ops"), res.stdout
