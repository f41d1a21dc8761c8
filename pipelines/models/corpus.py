"""The tiny model's pre-training text: `make tiny-base` (`pipelines.models.pretrain`) pre-trains on it, and the
tokenizer is trained on it.

It holds the raw sentences of the bundled samples (CLUENER texts, ruozhiba questions) plus generic Chinese,
English and JSON text generated here. It holds no NER answers and no system prompt: what the adapters learn
later (the output contract) is left to LoRA. Deterministic for a given seed and the same raw files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pipelines.common.paths import RAW_DIR

_ZH_SUBJECTS = ["我们", "他", "她", "老师", "学生", "工程师", "医生", "记者", "公司", "政府", "城市", "这本书",
                "那部电影", "研究人员", "朋友们", "市民", "球队", "银行", "学校", "游客"]
_ZH_VERBS = ["认为", "发现", "宣布", "希望", "讨论", "记录", "介绍", "计划", "支持", "参观", "学习", "推荐",
             "分析", "报道", "解释", "组织", "完成", "关注", "改变", "提出"]
_ZH_OBJECTS = ["新的方案", "这个问题", "今天的天气", "明年的目标", "历史文化", "科学研究", "经济发展", "体育比赛",
               "一次旅行", "网络游戏", "传统节日", "环境保护", "教育改革", "医疗服务", "城市交通", "市场变化",
               "一个故事", "人工智能", "数据分析", "音乐会"]
_ZH_TAILS = ["。", "，大家都很满意。", "，并且取得了进展。", "，但是还有困难。", "，这很重要。", "？", "！",
             "，然后回家了。", "，效果不错。", "，需要更多时间。"]
_ZH_WORDS = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "中国", "世界", "时间",
             "问题", "方法", "结果", "原因", "答案", "生活", "工作", "学习", "因为", "所以", "如果", "但是",
             "可以", "应该", "非常", "已经", "一起", "没有", "什么", "为什么", "怎么", "如何", "是不是"]
_EN_SUBJECTS = ["The model", "A student", "Our team", "The city", "This book", "The engineer", "A small company",
                "The new movie", "Every player", "The government", "My friend", "The report"]
_EN_VERBS = ["describes", "explains", "changes", "supports", "announces", "discusses", "records", "improves",
             "visits", "reads", "builds", "tests"]
_EN_OBJECTS = ["the data", "a long story", "the results", "an old problem", "the next game", "the market",
               "a new plan", "the weather", "the schedule", "a simple method", "the first chapter", "the answer"]
_JSON_KEYS = ["name", "company", "address", "book", "game", "government", "movie", "organization", "position",
              "scene", "id", "title", "text", "label", "type", "items", "count", "value", "city", "tags", "score",
              "date", "user", "status", "result", "data", "list", "price"]
_JSON_WORDS = ["北京", "上海", "苹果", "长江", "黄河", "工程师", "经理", "阳光", "天空", "学校", "中心", "公园",
               "alpha", "beta", "red", "blue", "ok", "true", "open", "closed", "red team", "的", "公司", "大学"]


def _zh_sentence(rng: random.Random) -> str:
    s = rng.choice(_ZH_SUBJECTS) + rng.choice(_ZH_VERBS) + rng.choice(_ZH_OBJECTS) + rng.choice(_ZH_TAILS)
    if rng.random() < 0.4:
        s += "".join(rng.choice(_ZH_WORDS) for _ in range(rng.randint(2, 5))) + "。"
    return s


def _en_sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_EN_SUBJECTS)} {rng.choice(_EN_VERBS)} {rng.choice(_EN_OBJECTS)}"
    if rng.random() < 0.5:
        s += f" and {rng.choice(_EN_VERBS)} {rng.choice(_EN_OBJECTS)}"
    return s + rng.choice([".", "!", "?", ", again."])


def _json_record(rng: random.Random) -> str:
    obj: dict = {}
    for key in rng.sample(_JSON_KEYS, rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.5:
            obj[key] = [rng.choice(_JSON_WORDS) + rng.choice(_JSON_WORDS) for _ in range(rng.randint(1, 3))]
        elif kind < 0.75:
            obj[key] = rng.choice(_JSON_WORDS)
        elif kind < 0.9:
            obj[key] = rng.randint(0, 2000)
        else:
            obj[key] = {"text": rng.choice(_JSON_WORDS), "label": rng.choice(_JSON_KEYS)}
    if rng.random() < 0.3:
        return json.dumps([obj, {rng.choice(_JSON_KEYS): rng.choice(_JSON_WORDS)}], ensure_ascii=False)
    return json.dumps(obj, ensure_ascii=False)


def raw_sentences(raw_dir: Path = RAW_DIR) -> list[str]:
    """Texts of the bundled raw samples: CLUENER sentences and ruozhiba questions (never their answers)."""
    texts: list[str] = []
    for name in ("train.json", "dev.json"):
        path = raw_dir / "cluener_sample" / name
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    texts.append(json.loads(line)["text"])
    ruozhiba = raw_dir / "ruozhiba_sample.json"
    if ruozhiba.exists():
        texts += [r["instruction"] for r in json.loads(ruozhiba.read_text(encoding="utf-8"))]
    return texts


def task_prompts() -> list[str]:
    """The fixed prompt texts of the converters (system prompts, instructions): tokenizer training only."""
    from pipelines.data import converters

    return [converters.CLUENER_SYSTEM, *converters.CLUENER_INSTRUCTIONS.values(), converters.HUANHUAN_SYSTEM,
            converters.CLASSIFICATION_SYSTEM]


def pretrain_corpus(seed: int = 0, generic: int = 400, raw_dir: Path = RAW_DIR) -> list[str]:
    """Documents for pre-training and for the tokenizer, in a seeded order."""
    rng = random.Random(seed)
    docs = list(raw_sentences(raw_dir))
    docs += [_zh_sentence(rng) + _zh_sentence(rng) for _ in range(generic)]
    docs += [_en_sentence(rng) + " " + _en_sentence(rng) for _ in range(generic)]
    docs += [_json_record(rng) for _ in range(generic)]
    rng.shuffle(docs)
    return docs
