"""The package's shape: one command in front, stages that import only downwards, one helper per shared need."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import COMMANDS
from pipelines.common.flags import FlagError, env_flag, flag
from pipelines.common.paths import ROOT, is_local

PACKAGE = ROOT / "pipelines"
#: Stages in the order data flows; a module may import its own stage and the ones before it only.
STAGES = ("common", "data", "models", "train", "serve", "eval", "run", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipelines.x import module`
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: {i for i in imports(p) if i in MODULES and i != m} for m, p in MODULES.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else None


def test_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue  # a package and its own modules
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_stages_import_only_downwards():
    wrong = []
    for m, targets in GRAPH.items():
        own = stage(m)
        if own is None:
            continue
        for t in targets:
            other = stage(t)
            if other is not None and STAGES.index(other) > STAGES.index(own):
                wrong.append(f"{m} imports {t}")
    assert not wrong, "imports against the flow: " + "; ".join(sorted(wrong))


def test_only_the_plugin_imports_vllm_and_eval_imports_no_engine():
    vllm = [m for m, p in MODULES.items() if any(i == "vllm" or i.startswith("vllm.") for i in imports(p))]
    assert vllm == [], f"{vllm} import vllm; only serve/plugin may"
    engines = [m for m, p in MODULES.items() if m.startswith("pipelines.eval.") and m != "pipelines.eval.parity"
               and any(i.split(".")[0] in ("vllm", "llamafactory") for i in imports(p))]
    assert engines == [], f"{engines} import an engine; the evaluator knows the server only over HTTP"
    plugin = ROOT / "serve" / "plugin" / "pipelines_vllm_plugin.py"
    assert not any(i.split(".")[0] == "pipelines" for i in imports(plugin)), "the plugin cannot import pipelines"


def test_data_imports_nothing_above_it():
    for m, targets in GRAPH.items():
        if m.startswith("pipelines.data"):
            assert all(stage(t) in ("common", "data") for t in targets), (m, targets)


def test_few_modules_directly_in_the_package():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "cli.py", "venvs.py"], top


def test_every_subpackage_says_its_job_and_long_modules_say_why():
    for sub in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"{sub.name}/__init__.py has no docstring saying its job"
    for m, p in MODULES.items():
        lines = p.read_text(encoding="utf-8").count("\n")
        if lines > 350:
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
            assert "one module" in doc, f"{m} has {lines} lines; its docstring must say why it is one module"


def test_the_command_table_names_real_mains():
    import importlib

    for name, (module, text) in COMMANDS.items():
        assert text and "\n" not in text
        assert callable(getattr(importlib.import_module(module), "main", None)), name


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pipelines", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in out.stdout, name
    bad = subprocess.run([sys.executable, "-m", "pipelines", "evall"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean `eval`" in bad.stderr and "Traceback" not in bad.stderr


def test_make_help_has_colour_only_on_a_terminal():
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "serve-stop" in out.stdout and "\033[" not in out.stdout


FLAGS = [
    (None, False), ("", False), ("1", True), ("0", False), ("true", True), ("FALSE", False), ("Yes", True),
    ("no", False), ("ON", True), ("off", False), (" true ", True), (True, True), (False, False), (1, True), (0, False),
]


@pytest.mark.parametrize("value,expected", FLAGS)
def test_flag_table(value, expected):
    assert flag(value, "DRY_RUN") is expected
    assert env_flag("X", env={} if value is None else {"X": str(value)}) is expected


@pytest.mark.parametrize("value", ["2", "maybe", "y", "enable", "-1"])
def test_flag_refuses_anything_else_naming_the_variable(value):
    with pytest.raises(FlagError, match=f"`DRY_RUN={value}` is not a switch"):
        env_flag("DRY_RUN", env={"DRY_RUN": value})


def test_flag_default_applies_when_unset():
    assert env_flag("X", default=True, env={}) is True and env_flag("X", default=True, env={"X": ""}) is True


def test_the_plugin_reads_its_switch_as_the_project_does():
    import pipelines_vllm_plugin as plugin

    for value, expected in FLAGS:
        if isinstance(value, str) and value.strip():
            assert plugin.enabled({plugin.ENV_SWITCH: value}) is expected, value
    assert plugin.enabled({}) is True


@pytest.mark.parametrize("name,local", [
    ("models/tiny-qwen2-base", True), ("models/not-built-yet", True), ("saves/x", True), ("data/foo", True),
    ("/abs/path", True), ("./here", True), ("../there", True), ("a/b/c", True), ("~/models/x", True),
    ("Qwen/Qwen2.5-0.5B-Instruct", False), ("hfl/ruozhiba_gpt4", False), ("gpt2", False), ("", False),
])
def test_local_or_hub(name, local):
    assert is_local(name) is local


def test_cli_reports_a_project_error_in_one_sentence_and_keeps_a_bugs_traceback(monkeypatch, capsys):
    import types

    from pipelines import cli
    from pipelines.common.errors import PipelinesError
    from pipelines.eval import EvalError

    def failing(error: Exception):
        def main(argv):
            raise error
        return types.SimpleNamespace(main=main)

    monkeypatch.setitem(cli.COMMANDS, "boom", ("fake.boom", "raises"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: failing(EvalError("the server is gone.")))
    assert cli.main(["boom"]) == 1
    assert capsys.readouterr().err == "pipelines boom: the server is gone.\n"
    assert issubclass(EvalError, PipelinesError)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: failing(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])


def test_every_project_error_derives_from_the_one_base():
    import importlib
    import inspect
    import pkgutil

    import pipelines
    from pipelines.common.errors import PipelinesError

    loose = []
    for info in pkgutil.walk_packages(pipelines.__path__, "pipelines."):
        if info.name.endswith("__main__") or info.name in ("pipelines.bench.seeds",):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and name.endswith("Error") and not issubclass(obj, PipelinesError)):
                loose.append(f"{info.name}.{name}")
    assert loose == []


def test_a_renamed_command_keeps_its_old_name(capsys):
    from pipelines import cli

    assert cli.ALIASES == {"report": "eval-report"} and "report" not in cli.COMMANDS
    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0 and "python -m pipelines eval-report" in capsys.readouterr().out
