"""Deployment bundles (`make deploy`): nothing here runs a container or a cluster, so the files are checked, not
run: every `compose.yaml` and `values.yaml` against the targets' own JSON schemas (the `real` tier), the container's command
against `python -m pipelines serve command` for the same config, the checksums against the adapters, the key
against every file, and the refusals (one line, exit 1, nothing written). The adapters are real LoRA adapters of
the tiny base: PEFT ones with random weights (seconds) and, in the slow test, one trained by llamafactory-cli."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from realdata import real, schema
from serving import make_lora_adapter

from pipelines.common.paths import ROOT, VENV_VLLM, resolve, venv_bin
from pipelines.common.versions import VLLM_GPU_VERSION
from pipelines.serve import deploy, render
from pipelines.serve import manage as serve_cli
from pipelines.serve.config import ServeConfigError, from_dict

#: The official schemas, under SHARED/deploy: only the `real` tier reads them (`make test-real`); `make test` checks
#: what the project can check by itself (structure, the command equality, no key in any file).
COMPOSE_SCHEMA = "compose-spec/compose-spec.json"
CHART_SCHEMA = "vllm-stack/values.schema.json"
HUB_ID = "Qwen/Qwen2.5-0.5B-Instruct"
KEY = "secret-xyz"


# ---------------------------------------------------------------- adapters and configs


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_base_dir: Path) -> dict[str, Path]:
    """Two PEFT LoRA adapters of the tiny base (ranks 8 and 16), and copies of them that name the hub id."""
    root = tmp_path_factory.mktemp("deploy-adapters")
    made = {"cluener": make_lora_adapter(tiny_base_dir, root / "cluener", r=8, seed=1),
            "ruozhiba": make_lora_adapter(tiny_base_dir, root / "ruozhiba", r=16, seed=2)}
    for name, folder in list(made.items()):
        hub = shutil.copytree(folder, root / "hub" / name)
        conf = json.loads((hub / "adapter_config.json").read_text())
        (hub / "adapter_config.json").write_text(json.dumps({**conf, "base_model_name_or_path": HUB_ID}))
        made[f"hub-{name}"] = hub
    return made


def shipped(name: str) -> dict:
    return yaml.safe_load((ROOT / "serve" / name).read_text())


def write_config(tmp_path: Path, kind: str, adapters: dict[str, Path], base: Path, **extra) -> Path:
    """serve/tiny.yaml or serve/qwen2.5-0.5b.yaml with the test's adapters (the Qwen config on the tiny base
    folder, `qwen`, or on its hub id with adapters that name it, `hub`)."""
    if kind == "tiny":
        raw = shipped("tiny.yaml")
        if resolve(raw["model"]).resolve() != base.resolve():
            raw["model"] = str(base)
    else:
        raw = shipped("qwen2.5-0.5b.yaml")
        raw["model"] = HUB_ID if kind == "hub" else str(base)
    prefix = "hub-" if kind == "hub" else ""
    raw["adapters"] = {n: str(adapters[prefix + n]) for n in ("cluener", "ruozhiba")}
    raw.update(extra)
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_deploy(capsys, *args: str) -> tuple[int, str, str]:
    rc = deploy.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def serve_argv(capsys, config: Path) -> list[str]:
    """What `python -m pipelines serve command CONFIG` prints as the command, split."""
    assert serve_cli.main(["command", str(config)]) == 0
    return shlex.split(capsys.readouterr().out.strip().splitlines()[-1])


def flags(args: list[str]) -> tuple[list[str], dict[str, list]]:
    """Arguments -> (positionals before the first flag, {flag: [values…]}); `--lora-modules` values as dicts."""
    i = next((n for n, a in enumerate(args) if a.startswith("--")), len(args))
    out: dict[str, list] = {}
    flag = None
    for a in args[i:]:
        if a.startswith("--"):
            flag, _, inline = a.partition("=")
            out.setdefault(flag, [])
            if inline:
                out[flag].append(inline)
        else:
            out[flag].append(json.loads(a) if flag == "--lora-modules" else a)
    return args[:i], out


def validate(doc: dict, relpath: str) -> None:
    loaded = json.loads(schema(relpath).read_text())
    cls = jsonschema.Draft7Validator if "draft-07" in loaded.get("$schema", "") else \
        jsonschema.validators.validator_for(loaded)  # the draft the schema declares (the chart's is 2020-12)
    cls(loaded).validate(doc)


def bundle_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ---------------------------------------------------------------- compose


@pytest.mark.parametrize("kind", ["tiny", "qwen", "hub"])
def test_compose_runs_make_serves_command(kind, adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, kind, adapters, tiny_base_dir)
    out = tmp_path / "bundle"
    rc, _, err = run_deploy(capsys, conf, "--target", "compose", "--out", out)
    assert rc == 0, err
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    svc = doc["services"]["vllm"]
    assert svc["image"] == f"vllm/vllm-openai:v{VLLM_GPU_VERSION}" and svc["restart"] == "unless-stopped"
    assert svc["environment"]["VLLM_API_KEY"] == "${VLLM_API_KEY:?set VLLM_API_KEY}"
    assert svc["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert svc["ports"] == [{"target": 8000, "published": 8000, "host_ip": "127.0.0.1", "protocol": "tcp"}]
    assert "/health" in " ".join(svc["healthcheck"]["test"])
    mounts = {v["target"]: v for v in svc["volumes"]}
    assert mounts["/adapters"] == {"type": "bind", "source": "./adapters", "target": "/adapters", "read_only": True}

    # the same flags and values as `serve command`, the paths mapped to the mounts, --host aside
    (model,), want = flags(serve_argv(capsys, conf)[2:])
    (c_model,), got = flags(svc["command"])
    assert want.pop("--host") == ["127.0.0.1"] and got.pop("--host") == ["0.0.0.0"]
    if kind == "hub":
        assert c_model == model == HUB_ID and "/root/.cache/huggingface" in mounts
    else:
        mount = mounts[c_model]
        assert mount["read_only"] and mount["source"] == f"${{BASE_MODEL_DIR:-{model}}}"
    served = {m["name"]: m for m in want.pop("--lora-modules")}
    mapped = {m["name"]: m for m in got.pop("--lora-modules")}
    assert got == want
    for name, m in served.items():
        assert mapped[name] == {**m, "path": f"/adapters/{name}"}
        assert bundle_files(out / "adapters" / name) == bundle_files(Path(m["path"]))


@pytest.mark.parametrize("kind", ["tiny", "hub"])
def test_compose_with_two_replicas_renders_them_behind_the_router(kind, adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, kind, adapters, tiny_base_dir, replicas=2, gpus=2, routing="round_robin")
    out = tmp_path / "b"
    rc, _, err = run_deploy(capsys, conf, "--target", "compose", "--out", out)
    assert rc == 0, err
    doc = yaml.safe_load((out / "compose.yaml").read_text())
    assert sorted(doc["services"]) == ["router", "vllm-0", "vllm-1"]
    (tmp_path / "one").mkdir()
    single = write_config(tmp_path / "one", kind, adapters, tiny_base_dir, gpus=2)
    assert run_deploy(capsys, single, "--target", "compose", "--out", tmp_path / "one" / "b")[0] == 0
    one = yaml.safe_load((tmp_path / "one" / "b" / "compose.yaml").read_text())["services"]["vllm"]
    for i in (0, 1):  # each replica: the single server's service, unpublished, on GPUs of its own
        svc = doc["services"][f"vllm-{i}"]
        assert "ports" not in svc and svc["command"] == one["command"] and svc["environment"] == one["environment"]
        assert svc["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "device_ids": [str(2 * i), str(2 * i + 1)], "capabilities": ["gpu"]}]
    router = doc["services"]["router"]
    assert router["build"] == {"context": "./router"} and router["ports"] == one["ports"]
    dockerfile = (out / "router" / "Dockerfile").read_text().splitlines()
    assert dockerfile[1] == "RUN pip install --no-cache-dir vllm-router==0.1.17" and dockerfile[2] == 'ENTRYPOINT ["vllm-router"]'
    assert router["image"] == "pipelines-vllm-router:0.1.17"
    assert not (tmp_path / "one" / "b" / "router").exists()
    assert router["depends_on"] == {f"vllm-{i}": {"condition": "service_healthy"} for i in (0, 1)}
    _, args = flags(router["command"])
    assert args["--worker-urls"] == ["http://vllm-0:8000", "http://vllm-1:8000"]
    assert args["--policy"] == ["round_robin"] and args["--host"] == ["0.0.0.0"] and args["--port"] == ["8000"]
    assert "--api-key" not in args and "VLLM_API_KEY" not in router.get("environment", {})
    text = (out / "README.md").read_text()
    assert "router/Dockerfile" in text and "vllm-router 0.1.17" in text and "TARGET=k8s" in text


# ---------------------------------------------------------------- k8s


@pytest.mark.parametrize("kind", ["tiny", "qwen", "hub"])
def test_values_carry_make_serves_flags(kind, adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, kind, adapters, tiny_base_dir, replicas=2, gpu_type="NVIDIA-A100-SXM4-80GB",
                        cpus=6, memory="24Gi")
    out = tmp_path / "bundle"
    rc, _, err = run_deploy(capsys, conf, "--target", "k8s", "--out", out,
                            "--adapter-url", "ruozhiba=s3://bucket/adapters/ruozhiba")
    assert rc == 0, err
    values = yaml.safe_load((out / "values.yaml").read_text())
    (spec,) = values["servingEngineSpec"]["modelSpec"]
    assert values["servingEngineSpec"]["vllmApiKey"] == {"secretName": "vllm-api-key", "secretKey": "VLLM_API_KEY"}
    assert values["routerSpec"]["enableRouter"] and values["loraController"]["enableLoraController"]
    assert (spec["enableLoRA"], spec["replicaCount"], spec["requestGPU"], spec["requestCPU"],
            spec["requestMemory"]) == (True, 2, 1, 6, "24Gi")
    assert (spec["repository"], spec["tag"]) == ("vllm/vllm-openai", f"v{VLLM_GPU_VERSION}")
    assert spec["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["NVIDIA-A100-SXM4-80GB"]
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in spec["env"]
    lora = {a["name"]: a for a in values["loraAdapters"]}
    assert lora["cluener"]["adapterSource"] == {"type": "local", "adapterName": "cluener",
                                                "adapterPath": f"{render.LORA_DIR}/cluener"}
    assert lora["ruozhiba"]["adapterSource"] == {"type": "s3", "adapterName": "ruozhiba",
                                                 "repository": "s3://bucket/adapters/ruozhiba"}
    assert {a["baseModel"] for a in lora.values()} == {spec["name"]}
    assert (out / "push-pod.yaml").is_file() and (out / "adapters" / "ruozhiba").is_dir()

    # vllmConfig + extraArgs are `serve command`'s flags but those the chart and the LoRA controller set
    (model,), want = flags(serve_argv(capsys, conf)[2:])
    for f in ("--host", "--port", "--enable-lora", "--lora-modules"):
        want.pop(f)
    cfg = spec["vllmConfig"]
    assert cfg.pop("enablePrefixCaching") is True  # vLLM's default; the chart would pass --no-enable-prefix-caching
    _, got = flags(["-", *cfg.pop("extraArgs")])
    names = {v: k for k, (v, _) in render.VLLM_CONFIG_FLAGS.items()}
    got.update({names[k]: [str(v)] for k, v in cfg.items()})
    assert got == want
    assert spec["modelURL"] == (HUB_ID if kind == "hub" else f"{render.SHARED_PVC}/models/{Path(model).name}")


# ---------------------------------------------------------------- what every bundle holds


@pytest.mark.parametrize("target", ["compose", "k8s"])
def test_key_never_written_and_checksums_match(target, adapters, tiny_base_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    out = tmp_path / "bundle"
    rc, stdout, err = run_deploy(capsys, conf, "--target", target, "--out", out)
    assert rc == 0, err
    files = bundle_files(out)
    assert not [name for name, data in files.items() if KEY.encode() in data] and KEY not in stdout + err
    sums = (out / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in sums}
    assert set(listed) == {n for n in files if n.startswith("adapters/")}
    for name, digest in listed.items():
        _, adapter, file = name.split("/")
        assert digest == hashlib.sha256((adapters[adapter] / file).read_bytes()).hexdigest()
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    marker = json.loads((out / deploy.MARKER).read_text())
    assert marker["config_path"] == str(conf.resolve()) and marker["target"] == target
    assert "README.md" in files and "make eval BASE_URL=http://127.0.0.1:" in files["README.md"].decode()


def test_rerendering_the_same_config_replaces_its_bundle(adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, "tiny", adapters, tiny_base_dir)
    out = tmp_path / "bundle"
    assert run_deploy(capsys, conf, "--target", "compose", "--out", out)[0] == 0
    (out / "stale.txt").write_text("from an older render")
    assert run_deploy(capsys, conf, "--target", "k8s", "--out", out)[0] == 0
    assert not (out / "stale.txt").exists() and (out / "values.yaml").is_file() and not (out / "compose.yaml").exists()
    assert leftovers(out) == []


def test_absent_schemas_are_skipped_with_a_note(adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, "tiny", adapters, tiny_base_dir)
    rc, stdout, _ = run_deploy(capsys, conf, "--target", "compose", "--out", tmp_path / "b",
                               "--schemas", tmp_path / "nowhere")
    assert rc == 0 and "note: `compose.yaml` not checked" in stdout
    assert json.loads((tmp_path / "b" / deploy.MARKER).read_text())["schema_checked"].startswith("not checked")


def test_missing_jsonschema_skips_the_check_with_a_note(adapters, tiny_base_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` raises ImportError
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    rc, stdout, _ = run_deploy(capsys, conf, "--target", "k8s", "--out", tmp_path / "b")
    assert rc == 0 and "jsonschema is not installed" in stdout


# ---------------------------------------------------------------- refusals: one line, exit 1, nothing written


def _broken_adapter(adapters: dict[str, Path], tmp_path: Path) -> Path:
    broken = shutil.copytree(adapters["cluener"], tmp_path / "no-weights")
    (broken / "adapter_model.safetensors").unlink()
    return broken


REFUSALS = [
    # (name, target, config changes, extra arguments, expected in the message)
    ("bad adapter name for k8s", "k8s", {"rename": "Cluener_V2"}, [],
     "'Cluener_V2' is not a Kubernetes object name"),
    ("bad gpu type", "k8s", {"gpu_type": "NVIDIA/A100"}, [], "fix `gpu_type`"),
    ("negative replicas", "k8s", {"replicas": -1}, [], "`replicas` in"),
    ("gpus below tensor parallel", "compose", {"gpus": 1, "tensor_parallel_size": 2}, [], "`gpus` in"),
    ("missing adapter weights", "compose", {"broken": True}, [], "holds no weights"),
    ("unknown adapter url", "k8s", {}, ["--adapter-url", "nope=s3://b/x"], "names no adapter"),
    ("url for compose", "compose", {}, ["--adapter-url", "cluener=s3://b/x"], "is for `--target k8s`"),
]


@pytest.mark.parametrize("name, target, change, extra, expected", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, target, change, extra, expected, adapters, tiny_base_dir, tmp_path, capsys):
    change = dict(change)
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    raw = yaml.safe_load(conf.read_text())
    if change.pop("rename", None):
        raw["adapters"] = {"Cluener_V2": raw["adapters"]["cluener"]}
    if change.pop("broken", None):
        raw["adapters"]["cluener"] = str(_broken_adapter(adapters, tmp_path))
    raw.update(change)
    conf.write_text(yaml.safe_dump(raw))
    out = tmp_path / "deploy" / "bundle"
    rc, _, err = run_deploy(capsys, conf, "--target", target, "--out", out, *extra)
    assert rc == 1 and expected in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "deploy").exists()


def test_out_holding_another_bundle_or_other_files_is_refused(adapters, tiny_base_dir, tmp_path, capsys):
    first = write_config(tmp_path, "tiny", adapters, tiny_base_dir)
    other = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    out = tmp_path / "bundle"
    assert run_deploy(capsys, first, "--target", "compose", "--out", out)[0] == 0
    before = bundle_files(out)
    rc, _, err = run_deploy(capsys, other, "--target", "compose", "--out", out)
    assert rc == 1 and f"holds the bundle of `{first.resolve()}`" in err and len(err.strip().splitlines()) == 1
    assert bundle_files(out) == before and leftovers(out) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    rc, _, err = run_deploy(capsys, other, "--target", "compose", "--out", foreign)
    assert rc == 1 and "holds files but no bundle" in err and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_refusal_through_the_command_line_has_no_traceback(tmp_path):
    conf = tmp_path / "s.yaml"
    conf.write_text(yaml.safe_dump({"model": HUB_ID, "replicas": 0}))
    out = subprocess.run([sys.executable, "-m", "pipelines", "deploy", str(conf), "--target", "k8s", "--out",
                          str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"deploy: `replicas` in `{conf}` is 0; set it to a positive integer."


# ---------------------------------------------------------------- the official schemas (`make test-real`)


@real
@pytest.mark.parametrize("kind", ["tiny", "qwen", "hub"])
@pytest.mark.parametrize("target", ["compose", "k8s"])
def test_bundles_validate_against_the_official_schemas(kind, target, adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, kind, adapters, tiny_base_dir, replicas=2)  # compose: two services and the router
    out = tmp_path / "bundle"
    rc, _, err = run_deploy(capsys, conf, "--target", target, "--out", out,
                            "--schemas", schema(COMPOSE_SCHEMA).parents[1])
    assert rc == 0 and "not checked" not in err, err
    validate(yaml.safe_load((out / deploy.DOCUMENT[target]).read_text()),
             COMPOSE_SCHEMA if target == "compose" else CHART_SCHEMA)
    checked = json.loads((out / deploy.MARKER).read_text())["schema_checked"]
    assert checked.startswith(deploy.SCHEMAS[target][1]), checked


# ---------------------------------------------------------------- pure parts


@real
def test_schema_problems_name_the_field_and_the_config_key():
    values = {"servingEngineSpec": {"modelSpec": [{"name": "m", "replicaCount": "two"}]}}
    (problem,) = render.schema_problems(values, json.loads(schema(CHART_SCHEMA).read_text()), what="values.yaml",
                                        schema_name="the chart's schema", source="s.yaml")
    assert "`servingEngineSpec.modelSpec[0].replicaCount`" in problem and "fix `replicas` in `s.yaml`" in problem
    compose = {"services": {"vllm": {"image": "x", "restart": 5}}}
    (problem,) = render.schema_problems(compose, json.loads(schema(COMPOSE_SCHEMA).read_text()), what="compose.yaml",
                                        schema_name="compose", source="s.yaml")
    assert "`services.vllm.restart`" in problem and "5 is not of type 'string'" in problem


SPLITS = [
    (["--served-model-name", "m", "--max-model-len", "1024", "--dtype", "float32", "--enable-lora",
      "--max-loras", "2", "--lora-modules", "{}", "{}", "--enforce-eager"],
     {"enablePrefixCaching": True, "maxModelLen": 1024, "dtype": "float32", "maxLoras": 2},
     ["--served-model-name", "m", "--enforce-eager"]),
    (["--host", "0.0.0.0", "--port=8000", "--max-model-len", "4k", "--no-enable-prefix-caching"],
     {"enablePrefixCaching": False}, ["--max-model-len", "4k"]),
    (["--tensor-parallel-size=2", "--gpu-memory-utilization", "0.85"],
     {"enablePrefixCaching": True, "tensorParallelSize": 2}, ["--gpu-memory-utilization", "0.85"]),
]


@pytest.mark.parametrize("args, config, extra", SPLITS)
def test_split_args(args, config, extra):
    assert render.split_args(args) == (config, extra)


def test_k8s_name():
    assert render.k8s_name("qwen2.5-0.5b-instruct") == "qwen2-5-0-5b-instruct"
    assert render.k8s_name("Tiny_Base") == "tiny-base" and len(render.k8s_name("x" * 80)) == 40


DEPLOY_KEY_ERRORS = [
    ({"memory": "16GB"}, "`memory` in `t.yaml` is '16GB'; write it as a Kubernetes quantity"),
    ({"publish_host": "localhost"}, "`publish_host` in `t.yaml` is 'localhost'; set it to an IP address"),
    ({"image_tag": "v1:2"}, "`image_tag` in `t.yaml` is 'v1:2'"),
    ({"gpu_type": "A100 80GB"}, "`gpu_type` in `t.yaml` is 'A100 80GB'; set it to a non-empty string"),
    ({"gpus": 2, "tensor_parallel_size": 2, "data_parallel_size": 2}, "`gpus` in `t.yaml` is 2 but"),
    ({"cpus": 0}, "`cpus` in `t.yaml` is 0; set it to a positive integer."),
]


@pytest.mark.parametrize("extra, expected", DEPLOY_KEY_ERRORS)
def test_deploy_keys_are_checked(extra, expected):
    with pytest.raises(ServeConfigError, match=None) as e:
        from_dict({"model": HUB_ID, **extra}, source="t.yaml")
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems


def test_deploy_keys_default_and_shipped_config():
    cfg = from_dict({"model": HUB_ID, "tensor_parallel_size": 2})
    assert (cfg.replicas, cfg.gpu_count, cfg.publish_host, render.image(cfg)) == (
        1, 2, "127.0.0.1", ("vllm/vllm-openai", f"v{VLLM_GPU_VERSION}"))
    qwen = from_dict(shipped("qwen2.5-0.5b.yaml"))
    assert (qwen.replicas, qwen.gpu_count, qwen.cpus, qwen.memory) == (1, 1, 4, "16Gi")


def make_n(*args: str) -> str:
    return subprocess.run(["make", "-n", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout


def test_make_lines():
    line = " ".join(make_n("deploy", "SERVE=s.yaml", "TARGET=k8s", "OUT=o", "ADAPTER_URLS=a=s3://b/a c=https://d/c")
                    .replace("\\\n", " ").split())
    assert line == ".venv/bin/python -m pipelines deploy 's.yaml' --target 'k8s' --out 'o' --adapter-urls-from-env " \
        "PIPELINES_ADAPTER_URLS"
    assert "--base-url 'http://h:9/v1' " in make_n("eval", "BASE_URL=http://h:9/v1")
    assert "--base-url 'http://127.0.0.1:8123/v1' " in make_n("eval", "PORT=8123")
    assert "--out 'it'\\''s mine' " in make_n("eval", "EVAL_OUT=it's mine")


def test_make_deploy_passes_values_without_a_shell(adapters, tiny_base_dir, tmp_path):
    """ADAPTER_URLS with `;`, `>` and a presigned URL's `&` reach deploy whole, through the environment, and OUT
    may hold a space: nothing runs, nothing is cut (issue 24, items 1 and 11)."""
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    out = tmp_path / "a b"
    urls = {"cluener": "s3://b/x;id>pwned.txt", "ruozhiba": "https://h/a?X-Amz-Signature=1&Y=2$(id)"}
    proc = subprocess.run(["make", "--no-print-directory", "deploy", f"SERVE={conf}", "TARGET=k8s", f"OUT={out}",
                           "ADAPTER_URLS=" + " ".join(f"{n}={u}" for n, u in urls.items())],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not (ROOT / "pwned.txt").exists() and not (tmp_path / "pwned.txt").exists()
    assert json.loads((out / deploy.MARKER).read_text())["adapters"] == urls
    values = yaml.safe_load((out / "values.yaml").read_text())
    assert {a["adapterSource"]["repository"] for a in values["loraAdapters"]} == set(urls.values())
    aws = [line for line in (out / "README.md").read_text().splitlines() if line.startswith("aws s3 cp")]
    assert [shlex.split(line)[-1] for line in aws] == [urls["cluener"]]


def test_credentials_in_an_adapter_url_are_refused_unwritten(adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    out = tmp_path / "deploy" / "b"
    rc, stdout, err = run_deploy(capsys, conf, "--target", "k8s", "--out", out,
                                 "--adapter-url", "cluener=https://u:hunter2@h/a")
    assert rc == 1 and "carries credentials" in err and "https://***@h/a" in err, err
    assert "hunter2" not in stdout + err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "deploy").exists()
    assert deploy.redact("https://u:pw@h:9/a?x=1") == "https://***@h:9/a?x=1"
    assert deploy.redact("https://h/a?X=1&Y=2") == "https://h/a?X=1&Y=2"


def test_an_unwritable_out_is_one_sentence(adapters, tiny_base_dir, tmp_path):
    conf = write_config(tmp_path, "qwen", adapters, tiny_base_dir)
    (tmp_path / "file").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "pipelines", "deploy", str(conf), "--target", "compose", "--out",
                           str(tmp_path / "file" / "bundle")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("deploy: cannot write the bundle at") and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- vLLM's own parser and a trained adapter

VLLM_PY = venv_bin(VENV_VLLM, "python")
VLLM_PARSE = r"""
import json, sys
from vllm.utils.argparse_utils import FlexibleArgumentParser
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
except ImportError:  # vLLM < 0.30
    from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args
args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(json.load(sys.stdin))
validate_parsed_serve_args(args)
print(json.dumps({"model": args.model_tag, "host": args.host, "port": args.port,
                  "loras": [m.path for m in args.lora_modules]}))
"""


@pytest.mark.slow  # importing vLLM takes 15-80 s on 2 shared cores
@pytest.mark.usefixtures("vllm_venv")  # fails, never skips, without .venv-vllm
def test_vllm_parses_the_container_command(adapters, tiny_base_dir, tmp_path, capsys):
    conf = write_config(tmp_path, "tiny", adapters, tiny_base_dir)
    assert run_deploy(capsys, conf, "--target", "compose", "--out", tmp_path / "b")[0] == 0
    command = yaml.safe_load((tmp_path / "b" / "compose.yaml").read_text())["services"]["vllm"]["command"]
    out = subprocess.run([str(VLLM_PY), "-c", VLLM_PARSE], input=json.dumps(command), capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"model": "/models/tiny-qwen2-base", "host": "0.0.0.0", "port": 8000,
                   "loras": ["/adapters/cluener", "/adapters/ruozhiba"]}


@pytest.mark.slow
def test_bundles_of_a_trained_adapter(tiny_cluener_adapter, adapters, tiny_base_dir, tmp_path, capsys, monkeypatch):
    """serve/tiny.yaml and serve/qwen2.5-0.5b.yaml with the adapter llamafactory-cli trained on the tiny base
    (its manifest fingerprints the base, so the stale-base check runs) beside a PEFT one, for both targets."""
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    trained = {**adapters, "cluener": tiny_cluener_adapter}
    for kind in ("tiny", "qwen"):
        conf = write_config(tmp_path, kind, trained, tiny_base_dir)
        for target in ("compose", "k8s"):
            out = tmp_path / f"{kind}-{target}"
            rc, _, err = run_deploy(capsys, conf, "--target", target, "--out", out)
            assert rc == 0, err
            copied = sorted(p.name for p in (out / "adapters" / "cluener").iterdir())
            assert "adapter_model.safetensors" in copied and "pipelines_manifest.json" in copied
            assert not any(p.is_dir() for p in (out / "adapters" / "cluener").iterdir())  # no checkpoints
            assert not [n for n, d in bundle_files(out).items() if KEY.encode() in d]
            check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, check=False)
            assert check.returncode == 0
