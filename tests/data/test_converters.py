"""The converters' pure functions: exact outputs, the registry, the row errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.data import converters
from pipelines.data.converters import (
    CLUENER_INSTRUCTIONS,
    CLUENER_SYSTEM,
    CLUENER_TYPES,
    RowError,
    cluener,
    cluener_entities,
    cluener_target,
)

ROW = {"text": "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。叶老桂认为，",
       "label": {"name": {"叶老桂": [[9, 11], [32, 34]]}, "company": {"浙商银行": [[0, 3]]},
                 "position": {"博士": [[12, 13]]}}}


def test_registry_holds_every_source():
    assert set(converters.REGISTRY) == {"cluener", "ruozhiba", "huanhuan", "classification", "alpaca"}


def test_registry_refuses_a_duplicate_name():
    with pytest.raises(ValueError, match="`cluener` is already registered"):
        converters.register("cluener", raw_format="lines")(lambda row, fmt="dict": row)


def test_unknown_name_suggests_and_lists():
    with pytest.raises(converters.UnknownConverterError) as e:
        converters.get("clunr")
    assert str(e.value) == ("unknown converter `clunr`; did you mean `cluener`? available: `alpaca`, "
                            "`classification`, `cluener`, `huanhuan`, `ruozhiba`.")
    with pytest.raises(converters.UnknownConverterError, match=r"^unknown converter `zzz`; available: `alpaca`"):
        converters.get("zzz")


def test_cluener_dict_form_exact():
    record = cluener(ROW)
    assert record == {"instruction": CLUENER_INSTRUCTIONS["dict"], "input": ROW["text"],
                      "output": '{"company": ["浙商银行"], "name": ["叶老桂"], "position": ["博士"]}',
                      "system": CLUENER_SYSTEM}


def test_cluener_list_form_exact():
    assert cluener(ROW, fmt="list")["output"] == (
        '[{"label": "company", "text": "浙商银行"}, {"label": "name", "text": "叶老桂"}, '
        '{"label": "position", "text": "博士"}]')
    assert cluener(ROW, fmt="list")["instruction"] == CLUENER_INSTRUCTIONS["list"]


def test_cluener_orders_types_by_schema_and_entities_by_first_position():
    text = "张三和李四在北京见到王五"
    label = {"name": {"王五": [[10, 11]], "李四": [[3, 4]], "张三": [[0, 1]]}, "address": {"北京": [[6, 7]]}}
    assert cluener({"text": text, "label": label})["output"] == '{"address": ["北京"], "name": ["张三", "李四", "王五"]}'
    # first position decides, even when a later span is listed first
    label = {"name": {"李四": [[3, 4]], "张三": [[10, 11], [0, 1]]}}
    text = "张三和李四在北京见到张三"
    assert cluener({"text": text, "label": label})["output"] == '{"name": ["张三", "李四"]}'


def test_cluener_entity_in_two_types_is_kept_in_both():
    text = "北京队来到北京"
    label = {"organization": {"北京队": [[0, 2]]}, "address": {"北京": [[5, 6]]}, "scene": {"北京": [[0, 1]]}}
    out = cluener({"text": text, "label": label}, fmt="list")["output"]
    assert json.loads(out) == [{"label": "address", "text": "北京"}, {"label": "organization", "text": "北京队"},
                               {"label": "scene", "text": "北京"}]


@pytest.mark.parametrize("entity", ['"引号"', "反\\斜杠", "😀表情", "𠀀字", "a\tb", "</s>"])
def test_cluener_output_is_valid_json_whatever_the_entity(entity):
    text = f"前缀{entity}后缀"
    row = {"text": text, "label": {"book": {entity: [[2, 1 + len(entity)]]}}}
    assert json.loads(cluener(row)["output"]) == {"book": [entity]}
    assert json.loads(cluener(row, fmt="list")["output"]) == [{"label": "book", "text": entity}]


def test_cluener_without_entities_is_kept():
    assert cluener({"text": "今天天气晴朗。", "label": {}})["output"] == "{}"
    assert cluener({"text": "今天天气晴朗。", "label": {}}, fmt="list")["output"] == "[]"


def test_cluener_prompt_names_the_ten_types_and_the_format():
    assert CLUENER_TYPES == ("address", "book", "company", "game", "government", "movie", "name", "organization",
                             "position", "scene")
    for fmt, shape in (("dict", '{"company": ["浙商银行"], "name": ["叶老桂"]}'),
                       ("list", '[{"label": "company", "text": "浙商银行"}, {"label": "name"')):
        assert all(t in CLUENER_INSTRUCTIONS[fmt] for t in CLUENER_TYPES)
        assert shape in CLUENER_INSTRUCTIONS[fmt]
    assert "JSON" in CLUENER_SYSTEM


def test_cluener_target_rejects_an_unknown_format():
    with pytest.raises(ValueError, match="unknown CLUENER format `yaml`"):
        cluener_target([], "yaml")


@pytest.mark.parametrize("row, reason, words", [
    ([1, 2], "not an object", "JSON list"),
    ({"label": {}}, "missing text", "`text` is missing"),
    ({"text": "", "label": {}}, "empty text", "`text` is empty"),
    ({"text": 5, "label": {}}, "bad text", "`text` is a int"),
    ({"text": "张三"}, "missing label", "`label` is missing"),
    ({"text": "张三", "label": []}, "bad label", "`label` is a list"),
    ({"text": "张三", "label": {"person": {"张三": [[0, 1]]}}}, "unknown type", "unknown entity type `person`"),
    ({"text": "张三", "label": {"name": ["张三"]}}, "bad label", "`label.name` is not an object"),
    ({"text": "张三", "label": {"name": {"张三": []}}}, "bad span", "no list of [start, end]"),
    ({"text": "张三", "label": {"name": {"张三": [[0]]}}}, "bad span", "the span `[0]`"),
    ({"text": "张三", "label": {"name": {"张三": [[0, 2]]}}}, "span out of range", "outside a text of 2"),
    ({"text": "张三", "label": {"name": {"张三": [[1, 0]]}}}, "span out of range", "[1, 0]"),
    ({"text": "张三李四", "label": {"name": {"张三": [[2, 3]]}}}, "span text mismatch", "covers `李四`"),
    ({"text": "a\ud800b", "label": {}}, "bad text", "unpaired surrogate"),
])
def test_cluener_row_errors(row, reason, words):
    with pytest.raises(RowError) as e:
        cluener(row)
    assert e.value.reason == reason
    assert words in e.value.detail


def test_cluener_entities_returns_answer_order():
    assert cluener_entities(ROW["text"], ROW["label"]) == [("company", "浙商银行", 0), ("name", "叶老桂", 9),
                                                           ("position", "博士", 12)]


def test_ruozhiba_passes_through_with_the_default_system():
    row = {"instruction": "为什么鱼不能爬树？", "input": "", "output": "因为鱼没有腿。"}
    assert converters.ruozhiba(row) == {**row, "system": ""}
    assert converters.ruozhiba({"instruction": "问", "output": "答"})["input"] == ""


@pytest.mark.parametrize("row, reason", [
    ({"instruction": "问", "input": "", "output": ""}, "empty output"),
    ({"instruction": "问", "input": ""}, "missing output"),
    ({"instruction": " ", "output": "答"}, "empty instruction"),
    ({"instruction": "问", "input": 3, "output": "答"}, "bad input"),
    ({"instruction": "问", "output": ["答"]}, "bad output"),
    ("问答", "not an object"),
])
def test_instruction_row_errors(row, reason):
    for fn in (converters.ruozhiba, converters.huanhuan, converters.alpaca):
        with pytest.raises(RowError) as e:
            fn(row)
        assert e.value.reason == reason


def test_huanhuan_sets_the_role_system():
    record = converters.huanhuan({"instruction": "你是谁？", "input": "", "output": "臣妾甄嬛。"})
    assert record["system"] == converters.HUANHUAN_SYSTEM and "甄嬛" in record["system"]


def test_alpaca_keeps_its_own_system():
    record = converters.alpaca({"instruction": "问", "input": "补充", "output": "答", "system": "你是助手。"})
    assert record == {"instruction": "问", "input": "补充", "output": "答", "system": "你是助手。"}


def test_classification_exact_and_errors():
    row = {"text": "球队夺冠。", "category": ["体育", "财经"], "output": "体育"}
    assert converters.classification(row) == {
        "instruction": "判断下面文本的类别，候选类别：体育、财经。", "input": "球队夺冠。", "output": "体育",
        "system": converters.CLASSIFICATION_SYSTEM}
    assert converters.classification({"text": "t", "category": ["a", "b"], "label": "b"})["output"] == "b"
    for bad, reason in [({**row, "output": "军事"}, "label not in category"),
                        ({**row, "category": []}, "bad category"),
                        ({**row, "category": "体育"}, "bad category")]:
        with pytest.raises(RowError) as e:
            converters.classification(bad)
        assert e.value.reason == reason


def test_make_data_converts_every_registered_sample_in_registry_order(tmp_path):
    from pipelines.common.paths import RAW_DIR
    from pipelines.data import bundled, converters

    runs = bundled.plan({"cluener": "downloads/datasets/cluener2020"}, tmp_path)
    with_sample = [n for n, c in converters.REGISTRY.items() if c.sample]
    assert [r[0] for r in runs] == with_sample and "alpaca" not in with_sample
    assert runs[0] == ["cluener", "--raw", "downloads/datasets/cluener2020", "--out-dir", str(tmp_path)]
    assert all(Path(r[2]).exists() for r in runs[1:]) and runs[1][2] == str(RAW_DIR / "ruozhiba_sample.json")
    assert bundled.main(["--out-dir", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert {f"{n}_train" for n in with_sample} <= set(info)


def test_make_data_refuses_an_unknown_name():
    from pipelines.common.errors import PipelinesError
    from pipelines.data import bundled

    with pytest.raises(PipelinesError, match="unknown converter `cluenr`; did you mean `cluener`"):
        bundled.main(["--raw", "cluenr=x"])
