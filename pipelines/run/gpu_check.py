"""`make gpu-check`: train → serve → evaluate → deploy on this CUDA machine in minutes, with no model hub.

    python -m pipelines gpu-check [--model PATH|HUB_ID] [--port N] [--gpus N] [--out DIR] [--dry-run]

Each step is a command that `make` runs too (the same builders: `pipelines.train.launch.build_launch`,
`pipelines.serve.vllm_args.build_command`, the Makefile's `eval` line), on the tiny base the project builds
itself (`make tiny-base`) unless `--model` (make: MODEL=) names a real one:

    data       the bundled CLUENER sample into OUT/data (`make data`)
    train      LoRA in bf16 on one GPU (`make train … ARGS="use_cpu=false bf16=true …"`)
    torchrun   the same on every GPU through torchrun (NPROC_PER_NODE = the GPUs), when there are two or more
    deepspeed  the same with DeepSpeed ZeRO-2 (DEEPSPEED=conf/deepspeed/ds_z2_config.json)
    serve      vLLM on CUDA serving the base and the `train` adapter (--enable-lora) from OUT/serve.yaml
    eval       the evaluator through the OpenAI client, plainly and span-constrained (`make eval CONSTRAIN=both`)
    deploy     the Docker Compose bundle of OUT/serve.yaml (`make deploy TARGET=compose`)

It prints one table (step, seconds, figure, ok) and writes it with the machine's facts to OUT/gpu-check.json
(default results/gpu-check/). A step whose package is missing (a torch without CUDA in .venv, no CUDA vllm in
.venv-vllm, no deepspeed) is "not run" with the reason, and so is one that needs a step that did not pass; the
check passes (exit 0) only when every step passed, torchrun apart on a machine with one GPU. Without a CUDA GPU
it refuses in one sentence (exit 1); `--dry-run` (make: DRY_RUN=1) prints every command and runs none, anywhere.

Why one module: the plan (pure, what the dry run prints and the tests check), the probes that mark its steps "not
run" and the run that reads each step's figure share one table of steps, and stay together.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.common.device import has_cuda
from pipelines.common.flags import FlagError, env_flag
from pipelines.common.paths import ROOT, SERVE_DIR, TINY_BASE, VENV, VENV_VLLM, is_local, rel, resolve, venv_bin
from pipelines.eval import tasks
from pipelines.run.pipeline import sized

PY = str(venv_bin(VENV, "python"))
CLI = [PY, "-m", "pipelines"]
TASK = "cluener"
RAW = "data/raw/cluener_sample"
DS_CONFIG = "conf/deepspeed/ds_z2_config.json"
TINY_CONFIG = "conf/tiny_lora_cluener.yaml"
GPU_CONFIG = "conf/qwen2.5-0.5b-instruct_lora_cluener.yaml"
BASE_NAME = "gpu-check-base"
DEFAULT_PORT = 8011  # not `make serve`'s 8000, so that a server already running there is left alone
#: How the steps' `ok` reads: passed, failed, or not run (with the reason).
PASSED, FAILED, NOT_RUN = "yes", "FAILED", "not run"
ONE_GPU = "one GPU here: torchrun on every GPU needs two or more"

# What .venv's torch and deepspeed are, as one JSON line (run with .venv's python: this process imports no torch).
PROBE = r"""
import importlib.metadata as md, importlib.util, json
out = {}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, available=torch.cuda.is_available(),
               gpus=torch.cuda.device_count())
    if out["available"]:
        out.update(names=[torch.cuda.get_device_name(i) for i in range(out["gpus"])],
                   bf16=torch.cuda.is_bf16_supported())
except Exception as e:
    out["torch_error"] = f"{type(e).__name__}: {e}"
out["deepspeed"] = md.version("deepspeed") if importlib.util.find_spec("deepspeed") else None
print(json.dumps(out))
"""
VLLM_PROBE = "import importlib.metadata as m; print(m.version('vllm'))"


@dataclass
class Step:
    name: str
    what: str  # the table's description of the step
    argv: list[str]  # the project command that runs it
    env: dict[str, str] = field(default_factory=dict)  # set for it (an empty value unsets the variable)
    shown: list[str] = field(default_factory=list)  # dry run: the engine command lines it launches
    needs: tuple[str, ...] = ()  # steps whose results it uses
    missing: str | None = None  # why it cannot run here (a package or the GPUs are missing)
    optional: bool = False  # not run for a fact of the machine (one GPU): the check still passes


def _fmt(argv: list[str]) -> str:
    return " ".join(shlex.quote(a.replace(str(ROOT) + "/", "")) for a in argv)


def eval_argv(base_url: str, task: str, data: str, models: list[str], out: str, tokenizer: str,
              constrain: str = "none", limit: int | None = None, eval_args: tuple[str, ...] = ()) -> list[str]:
    """`python -m pipelines eval …` as the Makefile's `eval` target spells it (`eval_args`: its EVAL_ARGS)."""
    return [*CLI, "eval", "--base-url", base_url, "--task", task, "--data", data,
            *[a for m in models for a in ("--model", m)], "--out", out, *(["--limit", str(limit)] if limit else []),
            "--tokenizer", tokenizer, "--constrain", constrain, *eval_args]


def serve_config(model: str, adapter: str, port: int) -> dict:
    """The serve config of the check: serve/qwen2.5-0.5b.yaml's GPU settings (bf16, GPU memory, the bundle keys)
    with the check's base, its adapter and port; the tiny base keeps serve/tiny.yaml's context length."""
    raw = yaml.safe_load((SERVE_DIR / "qwen2.5-0.5b.yaml").read_text(encoding="utf-8"))
    raw.update(model=model, served_model_name=BASE_NAME, adapters={TASK: adapter}, port=port, startup_timeout=300)
    if resolve(model).resolve() == Path(TINY_BASE).resolve():
        raw["max_model_len"] = yaml.safe_load((SERVE_DIR / "tiny.yaml").read_text(encoding="utf-8"))["max_model_len"]
    return raw


def plan(model: str, out: Path, port: int, gpus: int, environ: Mapping[str, str],
         facts: Mapping[str, object] | None = None) -> list[Step]:
    """The steps, in order. Pure but for reading configs: the dry run prints it and tests check it. `facts`
    (the probes of a real run) mark the steps whose packages are missing; None (a dry run) marks none."""
    from pipelines.serve.config import AdapterInfo, from_dict
    from pipelines.serve.vllm_args import build_command
    from pipelines.train.launch import DIST_VARS, build_launch

    facts = facts or {}
    tiny = resolve(model).resolve() == Path(TINY_BASE).resolve()
    config = TINY_CONFIG if tiny else sized(GPU_CONFIG, model)
    data = rel(out / "data")
    adapters = {name: rel(out / "adapters" / name) for name in ("train", "torchrun", "deepspeed")}
    common = [f"model_name_or_path={model}", "use_cpu=false", "bf16=true", f"dataset_dir={data}"]
    if not tiny:  # a real model: a short run, enough to show that it trains
        common += ["max_samples=200", "num_train_epochs=1", "eval_strategy='no'", "save_strategy='no'"]
    first_gpu = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    no_cuda = None if facts.get("available", True) else f"no CUDA torch in .venv ({facts.get('why')})"
    on = f"{gpus} GPU{'s' if gpus != 1 else ''}"
    launches = {
        "train": ("LoRA, bf16, one GPU", {"CUDA_VISIBLE_DEVICES": first_gpu, "NPROC_PER_NODE": "", "DEEPSPEED": ""},
                  no_cuda),
        "torchrun": (f"the same, torchrun on {on}", {"NPROC_PER_NODE": str(gpus), "DEEPSPEED": ""},
                     no_cuda or (ONE_GPU if gpus < 2 else None)),
        "deepspeed": (f"the same, DeepSpeed ZeRO-2, {on}",
                      {"NPROC_PER_NODE": str(gpus), "DEEPSPEED": DS_CONFIG},
                      no_cuda or (None if facts.get("deepspeed", True) else "no deepspeed in .venv (`make setup` "
                                  "on a CUDA machine installs it from requirements/lock/venv-cuda.txt)")),
    }
    steps = []
    if tiny:
        steps.append(Step("tiny-base", "the tiny base (`make tiny-base`, cached)", [*CLI, "tiny-base", "--out", model]))
    steps.append(Step("data", "bundled CLUENER sample (`make data`)",
                      [*CLI, "convert", TASK, "--raw", RAW, "--out-dir", data]))
    prepared = ("tiny-base", "data") if tiny else ("data",)
    base_env = {k: v for k, v in environ.items() if k != "DRY_RUN"}
    for name, (what, env, missing) in launches.items():
        overrides = [*common, f"output_dir={adapters[name]}"]
        cmd, lf_env = build_launch(config, overrides, {**base_env, **env}, offline=is_local(model))
        shown_env = " ".join(f"{k}={lf_env[k]}" for k in ("CUDA_VISIBLE_DEVICES", *DIST_VARS, "FORCE_TORCHRUN")
                             if lf_env.get(k))
        steps.append(Step(name, what, [*CLI, "train", config, *overrides], env, [f"{shown_env} {_fmt(cmd)}".strip()],
                          prepared, missing, optional=missing == ONE_GPU))
    raw = serve_config(model, adapters["train"], port)
    cfg = from_dict(raw, str(out / "serve.yaml"))
    rank = int(yaml.safe_load((ROOT / config).read_text(encoding="utf-8")).get("lora_rank") or 8)
    vllm = build_command(cfg, [AdapterInfo(TASK, resolve(adapters["train"]), rank, model)])
    no_vllm = None if facts.get("vllm", True) else f"no CUDA vllm in .venv-vllm ({facts.get('vllm_why')})"
    serve_yaml = rel(out / "serve.yaml")
    steps.append(Step("serve", "vLLM on CUDA: base + adapter, --enable-lora",
                      [*CLI, "serve", "start", serve_yaml, "--port", str(port)], shown=[_fmt(vllm)],
                      needs=("train",), missing=no_vllm))
    url = f"http://127.0.0.1:{port}/v1"
    # --fresh: answers saved by an earlier check are asked again, of this server
    steps.append(Step("eval", "OpenAI client, plain and span-constrained",
                      eval_argv(url, TASK, tasks.get(TASK).val_data(data), [BASE_NAME, TASK], rel(out / "eval"),
                                model, constrain="both", eval_args=("--fresh",)), needs=("serve",)))
    steps.append(Step("deploy", "Docker Compose bundle of the same config",
                      [*CLI, "deploy", serve_yaml, "--target", "compose", "--out", rel(out / "deploy")],
                      needs=("train",)))
    return steps


# ------------------------------------------------------------------------------------------ the real run

def probe(environ: Mapping[str, str]) -> dict:
    """.venv's torch (CUDA build? GPUs? bf16?) and deepspeed, .venv-vllm's vllm (a CUDA build?)."""
    facts: dict = {}
    try:
        res = subprocess.run([PY, "-c", PROBE], capture_output=True, text=True, timeout=300, env=dict(environ))
        facts.update(json.loads(res.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        facts["torch_error"] = f"the probe of .venv failed: {e}"
    if facts.get("torch_error"):
        facts["why"] = facts["torch_error"]
    elif not facts.get("cuda"):
        facts["why"] = f"torch {facts.get('torch')} is a CPU build"
    elif not facts.get("available"):
        facts["why"] = f"torch {facts.get('torch')} (CUDA {facts.get('cuda')}) sees no GPU"
    elif not facts.get("bf16"):
        facts.update(available=False, why="the GPU has no bf16")
    exe = venv_bin(VENV_VLLM, "vllm")
    version = ""
    if exe.exists():
        res = subprocess.run([str(venv_bin(VENV_VLLM, "python")), "-c", VLLM_PROBE], capture_output=True, text=True,
                             timeout=120)
        version = res.stdout.strip() if res.returncode == 0 else ""
    facts["vllm_version"] = version or None
    facts["vllm"] = bool(version) and "cpu" not in version
    if not facts["vllm"]:
        facts["vllm_why"] = (f"vllm {version} is the CPU build" if version else
                             f"no `{rel(exe)}`" if not exe.exists() else "its vllm does not import")
    return facts


def smi_gpus() -> int:
    """The GPUs `nvidia-smi -L` lists (0 when it cannot run)."""
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in res.stdout.splitlines()) if res.returncode == 0 else 0


def figure(step: Step, out: Path, port: int) -> str:
    """The one figure of a step that passed, read from what it wrote."""
    from pipelines.common.io import read_json

    if step.name == "data":
        rows = [len(read_json(out / "data" / f"{TASK}_{split}.json") or []) for split in ("train", "val")]
        return f"{rows[0]} train / {rows[1]} val records"
    if step.name in ("train", "torchrun", "deepspeed"):
        manifest = read_json(out / "adapters" / step.name / "pipelines_manifest.json") or {}
        loss = (manifest.get("results") or {}).get("train_loss")
        return f"train_loss {loss:.3f}" if isinstance(loss, int | float) else ""
    if step.name == "serve":
        from pipelines.serve.process import run_files

        state = read_json(run_files(port).state) or {}
        return f"ready in {state.get('ready_seconds', '?')} s: {', '.join([BASE_NAME, *state.get('adapters', [])])}"
    if step.name == "eval":
        metrics = read_json(out / "eval" / "metrics.json") or {}
        plain = (metrics.get("models") or {}).get(TASK, {})
        cons = (metrics.get("constrained") or {}).get(TASK, {})
        if "micro_f1" in plain:
            valid = 1 - plain.get("invalid_json_rate", float("nan"))
            return (f"adapter entity F1 {plain['micro_f1']:.3f} plain, {cons.get('micro_f1', float('nan')):.3f} "
                    f"constrained; valid JSON {valid:.3f}")
    if step.name == "deploy":
        files = sorted(p.name for p in (out / "deploy").iterdir()) if (out / "deploy").is_dir() else []
        return ", ".join(f for f in files if f.endswith((".yaml", ".md")))
    return ""


def execute(steps: list[Step], out: Path, port: int) -> list[dict]:
    """Run the steps in order; the server is stopped whatever happens."""
    rows: list[dict] = []
    status: dict[str, str] = {}
    try:
        for st in steps:
            blocked = [n for n in st.needs if status.get(n) != PASSED]
            how = "failed" if blocked and status.get(blocked[0]) == FAILED else "did not run"
            reason = st.missing or (f"needs `{blocked[0]}`, which {how}" if blocked else None)
            row = {"step": st.name, "what": st.what, "command": _fmt(st.argv), "seconds": None, "figure": ""}
            if reason:
                status[st.name] = NOT_RUN
                rows.append({**row, "ok": NOT_RUN, "reason": reason, "optional": st.optional})
                continue
            env = {k: v for k, v in {**os.environ, **st.env}.items() if v != "" or k not in st.env}
            print(f"\n==> [{st.name}] {' '.join(f'{k}={v}' for k, v in st.env.items() if v)} {_fmt(st.argv)}",
                  flush=True)
            t0 = time.time()
            try:
                rc = subprocess.run(st.argv, cwd=ROOT, env=env).returncode
            except KeyboardInterrupt:
                rc = 130
            status[st.name] = PASSED if rc == 0 else FAILED
            rows.append({**row, "seconds": round(time.time() - t0, 1), "ok": status[st.name],
                         "figure": figure(st, out, port) if rc == 0 else f"exit {rc}"})
            if rc == 130:
                break
    finally:
        if status.get("serve") == PASSED:
            print("\n==> [serve-stop]", flush=True)
            subprocess.run([*CLI, "serve", "stop", str(out / "serve.yaml"), "--port", str(port)], cwd=ROOT)
    return rows


def passed(rows: list[dict]) -> bool:
    """Every step passed, but for one not run for a fact of the machine (torchrun on one GPU)."""
    return bool(rows) and all(r["ok"] == PASSED or (r["ok"] == NOT_RUN and r.get("optional")) for r in rows)


def table(rows: list[dict]) -> str:
    lines = ["| step | seconds | figure | ok |", "|---|---:|---|---|"]
    for r in rows:
        secs = "–" if r["seconds"] is None else f"{r['seconds']:.1f}"
        ok = f"not run: {r['reason']}" if r["ok"] == NOT_RUN else r["ok"]
        lines.append(f"| {r['step']} ({r['what']}) | {secs} | {r['figure']} | {ok} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        dry_default = env_flag("DRY_RUN")
    except FlagError as e:
        print(f"gpu-check: {e}", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog="python -m pipelines gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("MODEL") or os.path.relpath(TINY_BASE, ROOT),
                    help="the base: the tiny base the project builds (default) or a real model (make: MODEL=)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="the check's vLLM server (default %(default)s)")
    ap.add_argument("--gpus", type=int, help="GPUs for torchrun and DeepSpeed (default: NPROC_PER_NODE, else all)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu-check", help="results (default %(default)s)")
    ap.add_argument("--dry-run", action="store_true", default=dry_default, help="print every command, run none")
    args = ap.parse_args(argv)
    out = resolve(args.out)
    try:
        cuda = has_cuda()
        nproc = args.gpus or int(os.environ.get("NPROC_PER_NODE") or 0) or None
    except ValueError as e:  # a bad PIPELINES_DEVICE or NPROC_PER_NODE
        print(f"gpu-check: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        gpus = nproc or (smi_gpus() if cuda else 0) or 2
        print(f"gpu-check: dry run; the commands on a machine with {gpus} GPUs (--gpus N for another count):")
        for st in plan(args.model, out, args.port, gpus, os.environ):
            env = " ".join(f"{k}={v}" for k, v in st.env.items() if v)
            print(f"\n[{st.name}] {st.what}\n  $ {(env + ' ') if env else ''}{_fmt(st.argv)}")
            for line in st.shown:
                print(f"    → {line}")
        print(f"\n  then: {_fmt([*CLI, 'serve', 'stop', rel(out / 'serve.yaml'), '--port', str(args.port)])}")
        return 0
    if not cuda:
        print("gpu-check: this machine has no CUDA GPU (`nvidia-smi -L` lists none), so there is nothing to check; "
              "run it on a CUDA machine, or add `--dry-run` (DRY_RUN=1) to print the commands it would run.",
              file=sys.stderr)
        return 1
    t0 = time.time()
    facts = probe(os.environ)
    gpus = nproc or int(facts.get("gpus") or 1)
    print(f"gpu-check: {gpus} GPU(s) {', '.join(facts.get('names') or [])}; torch {facts.get('torch')} "
          f"(CUDA {facts.get('cuda')}), deepspeed {facts.get('deepspeed')}, vllm {facts.get('vllm_version')}",
          flush=True)
    steps = plan(args.model, out, args.port, gpus, os.environ, facts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.yaml").write_text(yaml.safe_dump(serve_config(args.model, rel(out / "adapters" / "train"),
                                                                args.port), sort_keys=False), encoding="utf-8")
    rows = execute(steps, out, args.port)
    ok = passed(rows)
    text = table(rows)
    print("\n" + text)
    result = {"passed": ok, "seconds": round(time.time() - t0, 1), "model": args.model, "gpus": gpus,
              "machine": facts, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": rows, "table": text}
    (out / "gpu-check.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    counts = {k: sum(r["ok"] == k for r in rows) for k in (PASSED, NOT_RUN, FAILED)}
    print(f"\ngpu-check: {'passed' if ok else 'NOT passed'} in {result['seconds']:.0f} s: {counts[PASSED]} "
          f"passed, {counts[NOT_RUN]} not run, {counts[FAILED]} failed; {rel(out / 'gpu-check.json')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
