"""The evaluator end to end against a gold-echo server: a small OpenAI-compatible server on 127.0.0.1 that
answers each prompt with its record's gold output (or a known perturbation of it).

The end-to-end test against the real vLLM server calls `run_eval(base_url, task, data, models, out)` the same way.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import pytest

from pipelines.common.net import free_port
from pipelines.data.records import RecordError, build_messages, load_records, user_text
from pipelines.eval import EvalError
from pipelines.eval.client import RetryPolicy, missing_models
from pipelines.eval.evaluate import EVAL_SPEC_VERSION, main, run_eval
from pipelines.eval.predictions import load_done
from pipelines.eval.prompts import build_request, estimate_max_tokens, fit_max_tokens, prompt_token_bound, request_key

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
NER_DATA = FIXTURES / "eval_cluener.json"
GEN_DATA = FIXTURES / "eval_generation.json"
FAST_RETRY = RetryPolicy(attempts=2, backoff_s=0.01)


# ---------------------------------------------------------------- the gold-echo server


class GoldEcho:
    """OpenAI-compatible test server: /v1/models and /v1/chat/completions answering with gold outputs.

    `answers` maps a model name to a function record -> answer (default: the gold output). The model `judge`
    prefers whichever answer equals the reference. After `die_after` completions it drops every connection.
    """

    def __init__(self, data: Path, models=("base", "adapter", "judge"), answers=None, delay=0.0, die_after=None,
                 max_model_len=None, roots=None, reject_constrained=False, lie=None, finish_reason="stop"):
        records = load_records(data)
        self.by_prompt = {(r["system"], user_text(r)): r for r in records}
        self.models = list(models)
        self.answers: dict[str, Callable[[dict], str]] = answers or {}
        self.delay, self.die_after, self.max_model_len = delay, die_after, max_model_len
        self.roots: dict[str, str] = roots or {}  # model → the `root` its card lists (as vLLM: the loaded path)
        self.reject_constrained = reject_constrained  # answer requests with `structured_outputs` with HTTP 400
        self.lie = lie  # one of LIES: a 200 answer that is no chat completion of the model asked for
        self.finish_reason = finish_reason  # "length": every answer says it was cut at max_tokens
        self.completions: list[dict] = []  # request bodies answered
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, client_address: None  # a killed client is expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, body: dict) -> str:
        msgs = body["messages"]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else ""
        user = msgs[-1]["content"]
        if body["model"] == "judge":
            ref, a, b = re.search(r"\[Reference answer\]\n(.*)\n\n\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich",
                                  user, re.DOTALL).groups()
            return "A" if a == ref != b else "B" if b == ref != a else "tie"
        record = self.by_prompt[(system, user)]
        return self.answers.get(body["model"], lambda r: r["output"])(record)

    def _handler(self):
        echo = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    cards = [{"id": m, "object": "model", "created": 0, "owned_by": "test",
                              **({"root": echo.roots[m]} if m in echo.roots else {})} for m in echo.models]
                    if echo.max_model_len:  # as vLLM: on the base model's card only
                        cards[0]["max_model_len"] = echo.max_model_len
                    self._send(200, {"object": "list", "data": cards})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with echo.lock:
                    dead = echo.die_after is not None and len(echo.completions) >= echo.die_after
                    if not dead:
                        echo.completions.append(body)
                if dead:
                    self.close_connection = True  # no response at all: the client sees a dropped connection
                    return
                if echo.reject_constrained and "structured_outputs" in body:
                    self._send(400, {"error": {"message": "grammar backend unavailable", "type": "BadRequestError"}})
                    return
                if body["model"] not in echo.models:
                    self._send(404, {"error": {"message": f"model {body['model']} not found"}})
                    return
                time.sleep(echo.delay)
                if echo.lie:
                    ctype, data = LIES[echo.lie](body["model"])
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._send(200, {
                    "id": "cmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": echo.finish_reason,
                                 "message": {"role": "assistant", "content": echo.answer(body)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

        return Handler


def _completion(model: str, choices: list) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": choices,
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


_CHOICE = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "{}"}}
#: a lying server's 200 answers: (content type, body) for the model asked for
LIES: dict[str, Callable[[str], tuple[str, bytes]]] = {
    "another model": lambda m: ("application/json", _completion("gpt-4o", [_CHOICE])),
    "truncated JSON": lambda m: ("application/json", _completion(m, [_CHOICE])[:40]),
    "no choices": lambda m: ("application/json", _completion(m, [])),
    "an HTML proxy page": lambda m: ("text/html", b"<html><body><h1>Sign in to the proxy</h1></body></html>"),
}


def drop_last_entity(record_id: str) -> Callable[[dict], str]:
    """A perturbation: record `record_id` loses the last entity of its gold answer."""

    def answer(r: dict) -> str:
        if r["id"] != record_id:
            return r["output"]
        gold = json.loads(r["output"])
        last = list(gold)[-1]
        gold[last] = gold[last][:-1]
        return json.dumps({k: v for k, v in gold.items() if v}, ensure_ascii=False)

    return answer


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- stage 1 (pure)


def test_build_request_from_record():
    r = {"id": "1", "instruction": "抽取实体。", "input": "叶老桂在浙商银行", "output": "{}", "system": "你是助手"}
    assert build_request(r, 40) == {
        "messages": [{"role": "system", "content": "你是助手"}, {"role": "user", "content": "抽取实体。\n叶老桂在浙商银行"}],
        "max_tokens": 40,
        "temperature": 0,
    }
    # no system: none sent (the chat template adds its default, as LLaMA-Factory's template does); no input: no "\n"
    assert build_messages({**r, "system": "", "input": ""}) == [{"role": "user", "content": "抽取实体。"}]
    # LLaMA-Factory's join skips an empty instruction too
    assert user_text({**r, "instruction": ""}) == "叶老桂在浙商银行"


def test_request_key_changes_with_what_is_sent():
    r = {"id": "1", "instruction": "a", "input": "", "output": "{}", "system": ""}
    k = request_key(build_request(r, 10))
    assert k == request_key(build_request(dict(r), 10)) and len(k) == 64
    assert k != request_key(build_request(r, 11))
    assert k != request_key(build_request({**r, "system": "s"}, 10))


def test_estimate_max_tokens_is_utf8_length_plus_margin():
    assert estimate_max_tokens(['{"name": ["叶老桂"]}', "ab"]) == len('{"name": [""]}') + 9 + 16
    assert estimate_max_tokens([], margin=4) == 4


def test_fit_max_tokens_to_the_served_context():
    assert fit_max_tokens(100, None, 500) == 100
    assert fit_max_tokens(100, 1024, 500) == 100
    assert fit_max_tokens(900, 1024, 500) == 524
    with pytest.raises(EvalError, match="more than the served context of 400"):
        fit_max_tokens(100, 400, 400)
    r = {"id": "1", "instruction": "叶", "input": "a", "output": "", "system": "s"}
    assert prompt_token_bound([r], overhead=10) == len("s叶\na".encode()) + 10 == 16


def test_max_tokens_is_lowered_to_fit_the_served_context(tmp_path):
    records = load_records(NER_DATA)
    bound = prompt_token_bound(records)
    with GoldEcho(NER_DATA, max_model_len=bound + 50) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["adapter"], tmp_path, progress=False)
        assert {b["max_tokens"] for b in srv.completions} == {50}
    assert metrics["settings"]["max_tokens"] == 50
    assert f"lowered from {estimate_max_tokens([r['output'] for r in records])} to fit" in (
        metrics["settings"]["max_tokens_from"])


LOAD_ERRORS = [
    ("missing file", None, "does not exist"),
    ("not JSON", "{", "is not valid JSON"),
    ("not a list", '{"a": 1}', "non-empty JSON list"),
    ("empty list", "[]", "non-empty JSON list"),
    ("no output", '[{"instruction": "x"}]', "record 0 of"),
]


@pytest.mark.parametrize("name,content,expected", LOAD_ERRORS, ids=[c[0] for c in LOAD_ERRORS])
def test_load_records_errors(tmp_path, name, content, expected):
    path = tmp_path / "data.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RecordError, match=expected):
        load_records(path)


def test_load_records_fills_defaults_and_limits(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"id": 7, "instruction": "c", "output": "d"}]))
    assert load_records(path) == [
        {"id": "0", "instruction": "a", "input": "", "output": "b", "system": ""},
        {"id": "7", "instruction": "c", "input": "", "output": "d", "system": ""},
    ]
    assert len(load_records(path, limit=1)) == 1


def test_missing_models_message_is_one_sentence():
    assert missing_models(["a"], ["a", "b"], "u") is None
    msg = missing_models(["a", "x"], ["a"], "http://h/v1")
    assert msg.startswith("`x` is not served at `http://h/v1`, which serves `a`") and msg.count(".") == 1


def test_load_done_cuts_a_truncated_last_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a", "key": "k", "answer": "x"}\n{"id": "b", "key": "k", "ans')
    assert list(load_done(path)) == [("a", "k")]
    assert path.read_text() == '{"id": "a", "key": "k", "answer": "x"}\n'


# ---------------------------------------------------------------- against the gold-echo server


def test_gold_echo_gives_perfect_scores_and_writes_outputs(tmp_path):
    with GoldEcho(NER_DATA) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path, concurrency=4, progress=False)
    m = metrics["models"]["base"]
    assert m["n"] == 12
    assert (m["micro_f1"], m["precision"], m["recall"], m["macro_f1"], m["type_f1"], m["exact_match"]) == (1.0,) * 6
    assert (m["invalid_json_rate"], m["trailing_text_rate"], m["truncated_rate"]) == (0.0, 0.0, 0.0)
    assert metrics["eval_spec_version"] == EVAL_SPEC_VERSION
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    # what was sent: greedy, max_tokens from the gold answers, the record's own messages
    records = load_records(NER_DATA)
    want = estimate_max_tokens([r["output"] for r in records])
    assert metrics["settings"]["max_tokens"] == want
    assert {(b["temperature"], b["max_tokens"]) for b in srv.completions} == {(0, want)}
    assert sorted(json.dumps(b["messages"]) for b in srv.completions) == sorted(
        json.dumps(build_messages(r)) for r in records)
    rows = rows_of(tmp_path / "base" / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records)
    report = (tmp_path / "report.md").read_text()
    assert "| micro_f1 | 1.000 [1.000, 1.000] |" in report and "![per_type_f1.png](per_type_f1.png)" in report
    assert "95% intervals in brackets" in report
    assert (tmp_path / "per_type_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_known_perturbation_gives_its_known_scores(tmp_path):
    answers = {
        "adapter": drop_last_entity("ner-02"),  # loses position 博士 (1 of 23 entities, 1 of 21 record types)
        "base": lambda r: r["output"] + ("\n好的" if r["id"] == "ner-00" else ""),  # trailing text, still right
    }
    with GoldEcho(NER_DATA, answers=answers) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base", "adapter"], tmp_path, progress=False)
    a, b = metrics["models"]["adapter"], metrics["models"]["base"]
    # adapter: tp 22, predicted 22, gold 23 → P = 1, R = 22/23, F1 = 44/45
    assert a["precision"] == 1.0 and a["recall"] == pytest.approx(22 / 23, abs=1e-12)
    assert a["micro_f1"] == pytest.approx(44 / 45, abs=1e-12)
    assert a["per_type"]["position"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert a["type_f1"] == pytest.approx(40 / 41, abs=1e-12)  # types: tp 20, predicted 20, gold 21
    assert a["exact_match"] == pytest.approx(11 / 12) and a["trailing_text_rate"] == 0.0
    assert b["micro_f1"] == 1.0 and b["trailing_text_rate"] == pytest.approx(1 / 12) and b["exact_match"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "### `ner-00`" in report and "### `ner-02`" in report  # the records where the models differ


def test_generation_gold_echo(tmp_path):
    with GoldEcho(GEN_DATA) as srv:
        metrics = run_eval(srv.url, "ruozhiba", GEN_DATA, ["base"], tmp_path, progress=False)
    m = metrics["models"]["base"]
    assert (m["bleu_4"], m["rouge_1"], m["rouge_2"], m["rouge_l"]) == (100.0,) * 4
    outputs = [r["output"] for r in load_records(GEN_DATA)]
    assert m["mean_length"] == m["mean_reference_length"] == sum(map(len, outputs)) / len(outputs)
    assert "percent" in metrics["scale"]
    assert (tmp_path / "scores.png").exists()


def test_judge_win_rate(tmp_path):
    answers = {"base": drop_last_entity("ner-02")}
    with GoldEcho(NER_DATA, answers=answers) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base", "adapter"], tmp_path, judge="judge", progress=False)
    # the adapter is right where the base dropped an entity (1 win), both right elsewhere (11 ties)
    assert metrics["judge"] == {"judge": "judge", "baseline": "base", "models": {
        "adapter": {"wins": 1, "losses": 0, "ties": 11, "invalid": 0, "win_rate": 6.5 / 12}}}


def test_limit_and_rerun_sends_nothing_new(tmp_path):
    with GoldEcho(NER_DATA) as srv:
        first = run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path, limit=5, progress=False)
        n_sent = len(srv.completions)
        again = run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path, limit=5, progress=False)
        assert len(srv.completions) == n_sent == 5
    assert first == again and first["models"]["base"]["n"] == 5


def test_missing_model_stops_with_one_sentence(tmp_path, capsys):
    with GoldEcho(NER_DATA) as srv:
        rc = main(["--base-url", srv.url, "--task", "cluener", "--data", str(NER_DATA), "--model", "base",
                   "--model", "cluener-lora", "--out", str(tmp_path), "--no-progress"])
        assert srv.completions == []
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("evaluate: `cluener-lora` is not served at ") and "\n" not in err and err.endswith(".")


@pytest.mark.parametrize("lie, said", [
    ("another model", "with an answer from model `gpt-4o`, not `adapter`"),
    ("truncated JSON", "with a body that is not valid JSON ("),
    ("no choices", "with no choices (`choices: []`)"),
    ("an HTML proxy page", "with a body that is not a JSON object (it starts `<html><body><h1>Sign in"),
], ids=["another model", "truncated JSON", "no choices", "HTML page"])
def test_a_lying_server_stops_the_run_in_one_sentence(lie, said, tmp_path, capsys):
    """A 200 answer that is no chat completion of the model asked for is an error, never a score (issue 24: 5, 10)."""
    with GoldEcho(NER_DATA, lie=lie) as srv:
        rc = main(["--base-url", srv.url, "--task", "cluener", "--data", str(NER_DATA), "--model", "adapter",
                   "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert f"the server at `{srv.url}` answered record `" in line and said in line, err
    assert "answers are kept in" in line
    assert not (tmp_path / "metrics.json").exists()


def test_dead_server_gives_a_clear_error(tmp_path, capsys):
    rc = main(["--base-url", f"http://127.0.0.1:{free_port()}/v1", "--task", "cluener", "--data", str(NER_DATA),
               "--model", "base", "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("evaluate: cannot reach the server at `http://127.0.0.1:") and "\n" not in err
    assert "make serve" in err


def test_server_dying_mid_run_keeps_answers_and_resumes(tmp_path):
    with GoldEcho(NER_DATA) as srv:
        clean = run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path / "clean", progress=False)
    out = tmp_path / "run"
    stopped = r"stopped answering .*5 of 12 answers are kept in .*rerun the same"
    with GoldEcho(NER_DATA, die_after=5) as srv, pytest.raises(EvalError, match=stopped):
        run_eval(srv.url, "cluener", NER_DATA, ["base"], out, concurrency=1, retry=FAST_RETRY, progress=False)
    assert len(rows_of(out / "base" / "predictions.jsonl")) == 5
    with GoldEcho(NER_DATA) as srv:
        resumed = run_eval(srv.url, "cluener", NER_DATA, ["base"], out, progress=False)
        assert len(srv.completions) == 7
    for m in (resumed, clean):  # another server, another port
        del m["settings"]["base_url"]
    assert resumed == clean


def test_kill_and_resume_gives_identical_metrics(tmp_path):
    clean_out, out = tmp_path / "clean", tmp_path / "killed"
    with GoldEcho(NER_DATA, answers={"adapter": drop_last_entity("ner-02")}, delay=0.3) as srv:
        args = ["--base-url", srv.url, "--task", "cluener", "--data", str(NER_DATA), "--model", "adapter",
                "--concurrency", "2", "--no-progress"]
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.eval.evaluate", *args, "--out", str(out)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        preds = out / "adapter" / "predictions.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if preds.exists() and preds.read_text(encoding="utf-8").count("\n") >= 3:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        n_before = preds.read_text(encoding="utf-8").count("\n")
        assert 3 <= n_before < 12, "the run should have been killed part way"
        with open(preds, "a", encoding="utf-8") as f:  # as if killed in the middle of a write
            f.write('{"id": "ner-11", "key": "0123')
        assert main([*args, "--out", str(out)]) == 0
        assert main([*args, "--out", str(clean_out)]) == 0
    resumed, clean = (json.loads((d / "metrics.json").read_text()) for d in (out, clean_out))
    assert resumed == clean
    assert resumed["models"]["adapter"]["micro_f1"] == pytest.approx(44 / 45, abs=1e-12)
    rows = rows_of(preds)
    assert len(rows) == 12 and len({(r["id"], r["key"]) for r in rows}) == 12


def test_parity_mismatch_stops_before_any_request(tmp_path, monkeypatch):
    from pipelines.eval import parity

    seen = {}

    def fake_check(tokenizer, records, template):
        seen.update(tokenizer=tokenizer, n=len(records), template=template)
        return parity.ParityReport(len(records), False, "record `ner-04`: … differ at token 1 …")

    monkeypatch.setattr(parity, "check", fake_check)
    with GoldEcho(NER_DATA) as srv:
        with pytest.raises(EvalError, match="differ at token 1"):
            run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path, tokenizer="models/x", progress=False)
        assert srv.completions == []
    assert seen == {"tokenizer": "models/x", "n": 12, "template": "qwen"}
    monkeypatch.setattr(parity, "check", lambda tokenizer, records, template: parity.ParityReport(12, True, "ok"))
    with GoldEcho(NER_DATA) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base"], tmp_path, tokenizer="models/x", progress=False)
    parity_summary = {"tokenizer": "models/x", "template": "qwen", "records": 12, "identical": True}
    assert metrics["settings"]["parity"] == parity_summary


def test_the_scoring_path_imports_neither_llamafactory_nor_vllm():
    code = ("import sys, pipelines.eval.evaluate, pipelines.eval.scoring, pipelines.eval.report, pipelines.eval.judge; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'llamafactory', 'transformers', 'vllm', 'torch'}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# ---------------------------------------------------------------- intervals and comparisons (eval spec 3)


def test_metrics_hold_intervals_and_comparisons_that_compare_reproduces_offline(tmp_path, capsys):
    from pipelines.eval import compare, significance, tasks

    with GoldEcho(NER_DATA, answers={"base": lambda r: "{}"}) as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base", "adapter"], tmp_path, progress=False)
    assert metrics["settings"]["intervals"] == {
        "level": 0.95, "resamples": 1000, "seed": 0, "method": significance.BOOTSTRAP_METHOD, "permutations": 1000,
        "compare_method": significance.COMPARE_METHOD}
    rows = tasks.get("cluener").rows
    for name, m in metrics["models"].items():
        assert set(rows) <= set(m["intervals"]), name
        for metric in rows:
            assert m["intervals"][metric]["low"] <= m[metric] <= m["intervals"][metric]["high"], (name, metric)
    assert metrics["models"]["adapter"]["intervals"]["micro_f1"] == {"low": 1.0, "high": 1.0}
    compared = [c for c in metrics["comparisons"]]
    assert {(c["a"], c["b"]) for c in compared} == {("adapter", "base")}
    assert [c["metric"] for c in compared] == list(rows)
    for c in compared:
        assert {"a", "b", "metric", "diff", "low", "high", "p_value", "method", "resamples"} <= set(c)
    f1 = next(c for c in compared if c["metric"] == "micro_f1")
    # 12 records: a permutation that swaps every one (1 in 4096) ties the observed difference
    assert f1["diff"] == 1.0 and f1["low"] == f1["high"] == 1.0 and f1["p_value"] < 0.01
    assert f1["method"] == significance.COMPARE_METHOD and f1["resamples"] == 1000
    assert (tmp_path / "adapter" / compare.STATS_FILE).exists() and (tmp_path / "base" / compare.STATS_FILE).exists()
    report = (tmp_path / "report.md").read_text()
    assert "## Comparisons" in report and "| `adapter` | `base` | micro_f1 | +1.000 | [+1.000, +1.000] | 0.00" in report
    # offline, no server: the same figures bit for bit, and other settings on request
    assert compare.main([str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((tmp_path / "metrics.json").read_text())
    other = compare.recompute(tmp_path, compare.Resampling(resamples=200, seed=3))
    assert other["settings"]["intervals"]["resamples"] == 200 and other["comparisons"][0]["resamples"] == 200
    assert other["models"]["base"]["micro_f1"] == metrics["models"]["base"]["micro_f1"]
    res = subprocess.run([sys.executable, "-m", "pipelines", "compare", str(tmp_path), "--resamples", "200"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "95% intervals in brackets" in res.stdout and "| micro_f1 | 0.000 [0.000, 0.000] | 1.000 [1.000, 1.000] |" \
        in res.stdout and "| `adapter` | `base` | micro_f1 | +1.000 |" in res.stdout


def test_identical_models_give_difference_0_and_p_1(tmp_path):
    with GoldEcho(NER_DATA, answers={"adapter": drop_last_entity("ner-02"), "base": drop_last_entity("ner-02")}) \
            as srv:
        metrics = run_eval(srv.url, "cluener", NER_DATA, ["base", "adapter"], tmp_path, progress=False, resamples=300,
                           seed=7)
    assert metrics["settings"]["intervals"]["resamples"] == 300 and metrics["settings"]["intervals"]["seed"] == 7
    assert metrics["comparisons"]
    for c in metrics["comparisons"]:
        assert (c["diff"], c["low"], c["high"], c["p_value"]) == (0.0, 0.0, 0.0, 1.0), c


def test_compare_refuses_an_older_spec_or_missing_statistics_in_one_sentence(tmp_path):
    with GoldEcho(NER_DATA) as srv:
        run_eval(srv.url, "cluener", NER_DATA, ["base", "adapter"], tmp_path / "new", progress=False)
    cases = {"none": tmp_path / "empty"}
    old = tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({**json.loads((tmp_path / "new" / "metrics.json").read_text()),
                                                  "eval_spec_version": "2"}))
    cases["old"] = old
    (tmp_path / "new" / "base" / "stats.json").unlink()
    cases["missing"] = tmp_path / "new"
    for name, folder in cases.items():
        res = subprocess.run([sys.executable, "-m", "pipelines", "compare", str(folder)], cwd=ROOT,
                             capture_output=True, text=True)
        err = res.stderr.strip()
        assert res.returncode == 1 and err.startswith("compare: ") and "\n" not in err and "Traceback" not in err, name
    assert "eval spec 2" in subprocess.run([sys.executable, "-m", "pipelines", "compare", str(old)], cwd=ROOT,
                                           capture_output=True, text=True).stderr


def test_significance_errors_become_one_sentence_eval_errors():
    from pipelines.eval import compare, tasks

    with pytest.raises(EvalError, match=r"^cannot compute the intervals: .*\.$"):
        compare.intervals(tasks.get("cluener"), {"kind": "ner", "n": -1}, compare.Resampling())
    with pytest.raises(EvalError, match="--resamples 0"):
        run_eval("http://127.0.0.1:9/v1", "cluener", NER_DATA, ["base"], "unused", resamples=0)
