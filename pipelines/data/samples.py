"""The bundled raw samples: a seeded generator of small data sets in the sources' own raw formats.

`python -m pipelines samples` (re)writes `data/raw/`: the output is byte-identical for a given seed, so the
committed files can be checked against it. Every sentence, question and answer is written by this project
(templates × entity lists below); none is copied from the real data sets.

* `cluener_sample/{train,dev}.json` – CLUENER JSON lines `{"text", "label": {type: {entity: [[start, end]]}}}`
  (end inclusive) over all 10 types, 0–4 entities a sentence, some without any, some with a repeated entity.
* `ruozhiba_sample.json` – a JSON list of `{"instruction", "input", "output"}` (hfl/ruozhiba_gpt4's format).
* `huanhuan_sample.json` – a JSON list of role-play alpaca records (huanhuan-chat's format).
* `classification_sample.json` – JSON lines `{"text", "category": [...], "output"}` (zh_cls_fudan-news's format).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from pipelines.common.paths import RAW_DIR

SEED = 20240601
CLUENER_TRAIN_SIZE = 1000
CLUENER_DEV_SIZE = 200
RUOZHIBA_SIZE = 300
HUANHUAN_SIZE = 50
CLASSIFICATION_SIZE = 100
MAX_TEXT_CHARS = 50  # CLUENER's longest sentence

# ---------------------------------------------------------------------------------------------------- CLUENER
ENTITIES: dict[str, list[str]] = {
    "address": ["北京市海淀区", "上海浦东新区", "广州天河区", "杭州西湖边", "成都春熙路", "南京新街口", "深圳南山区",
                "武汉光谷", "西安钟楼", "重庆解放碑", "天津滨海新区", "苏州工业园区", "青岛八大关", "厦门鼓浪屿"],
    "book": ["《红楼梦》", "《三体》", "《平凡的世界》", "《围城》", "《活着》", "《边城》", "《白鹿原》",
             "《骆驼祥子》", "《人间词话》", "《长安的荔枝》", "《文化苦旅》", "《呐喊》"],
    "company": ["浙商银行", "华为公司", "腾讯控股", "阿里巴巴", "小米集团", "比亚迪", "招商银行", "京东商城",
                "网易游戏", "中国移动", "万科集团", "格力电器", "海尔集团", "百度公司"],
    "game": ["英雄联盟", "王者荣耀", "魔兽世界", "梦幻西游", "地下城与勇士", "穿越火线", "原神", "星际争霸",
             "炉石传说", "阴阳师", "CSOL", "DOTA2"],
    "government": ["国务院", "教育部", "财政部", "国家统计局", "公安部", "海关总署", "商务部", "北京市政府",
                   "卫生部", "证监会", "文化部", "交通运输部"],
    "movie": ["《流浪地球》", "《让子弹飞》", "《霸王别姬》", "《大话西游》", "《英雄》", "《无间道》",
              "《卧虎藏龙》", "《长津湖》", "《你好，李焕英》", "《唐人街探案》", "《少林足球》"],
    "name": ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨帆", "赵磊", "黄晓明", "周杰", "吴敏", "徐峰", "孙丽",
             "马超", "朱婷", "胡军", "郭靖", "林晓", "何平"],
    "organization": ["北京大学", "清华大学", "复旦大学", "中国足协", "皇家马德里", "巴塞罗那", "国际奥委会",
                     "红十字会", "中国科学院", "广州恒大", "湖人队", "上海申花"],
    "position": ["总经理", "董事长", "教授", "记者", "主任", "局长", "主教练", "总裁", "工程师", "院长",
                 "研究员", "首席执行官", "副市长", "编辑"],
    "scene": ["故宫博物院", "西湖", "黄山", "长城", "颐和园", "九寨沟", "张家界", "泰山", "外滩", "兵马俑",
              "鸟巢", "迪士尼乐园"],
}
TYPES = tuple(ENTITIES)

# `{type}` is an entity slot; `{type2}` a second, different entity of the same type; a repeated slot repeats
# the same entity (two spans). Templates without slots give sentences without entities.
TEMPLATES = [
    "{company}{position}{name}表示，今年将继续加大研发投入。",
    "{name}认为，{company}的新产品很有竞争力，{name}对此充满信心。",
    "{name}是{organization}的{position}，长期从事人工智能研究。",
    "据{government}消息，{address}将新建一座大型图书馆。",
    "{government}近日发布通知，要求各地加强食品安全监管。",
    "周末很多游客来到{scene}游玩，人气很旺。",
    "{name}最近在读{book}，觉得很有收获。",
    "{movie}上映首周票房突破十亿元，口碑不错。",
    "{name}主演的新片{movie}将于下月上映。",
    "玩家们在{game}的新版本里发现了不少彩蛋。",
    "{company}宣布旗下{game}将推出手机版。",
    "{organization}与{organization2}的比赛在{address}举行。",
    "{organization}{position}{name}赛后接受了媒体采访。",
    "{name}和{name2}一起去{scene}拍摄纪录片。",
    "{name}的{book}再版，销量持续走高。",
    "{address}的{company}门店今天正式开业。",
    "{government}{position}{name}到{address}调研。",
    "{name}出任{company}{position}，负责海外业务。",
    "来自{organization}的{position}{name}发表了演讲。",
    "{scene}附近的{address}交通十分拥堵。",
    "今天天气晴朗，适合出门散步。",
    "这款手机的电池续航时间比较长。",
    "会议将在下周一上午九点准时召开。",
    "他每天早上都会跑步半小时。",
    "{game}职业联赛总决赛在{address}落幕。",
    "{movie}改编自同名小说{book}。",
    "{company}发布财报，营收同比增长百分之二十。",
    "{position}{name}透露，{organization}正在筹备新的项目。",
    "{name}在{scene}偶遇了{position}{name2}。",
    "{government}表示，将支持{company}在{address}建厂。",
    "从{government}获悉，新规将于明年实施。",
    "{name}推荐大家看{movie}和{movie2}。",
    "{organization}的学生在{scene}举办了音乐会。",
    "{company}与{company2}签署了战略合作协议。",
    "{name}的{book}读书笔记在网上很受欢迎，{name}很开心。",
    "{address}市民纷纷前往{scene}赏花。",
    "{game}和{game2}都是今年最受欢迎的游戏。",
    "{position}{name}带队参观了{organization}。",
]
_SLOT = re.compile(r"\{([a-z]+)(\d?)\}")


def _cluener_line(rng: random.Random, template: str) -> dict:
    """Fill `template`, tracking every span; the label lists each entity once, its spans in text order."""
    chosen: dict[str, str] = {}  # slot -> entity
    text = ""
    label: dict[str, dict[str, list[list[int]]]] = {}  # type -> entity -> [start, end] spans
    pos = 0
    for m in _SLOT.finditer(template):
        text += template[pos:m.start()]
        pos = m.end()
        slot, etype = m.group(0), m.group(1)
        if slot not in chosen:
            used = set(chosen.values())
            chosen[slot] = rng.choice([e for e in ENTITIES[etype] if e not in used])
        entity = chosen[slot]
        start = len(text)
        text += entity
        label.setdefault(etype, {}).setdefault(entity, []).append([start, len(text) - 1])
    text += template[pos:]
    return {"text": text, "label": label}


def cluener_lines(seed: int, sizes: tuple[int, ...]) -> list[list[dict]]:
    """Disjoint lists of distinct sentences (train, dev, …) of the given sizes."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = []
    for n in sizes:
        rows: list[dict] = []
        while len(rows) < n:
            row = _cluener_line(rng, rng.choice(TEMPLATES))
            if len(row["text"]) <= MAX_TEXT_CHARS and row["text"] not in seen:
                seen.add(row["text"])
                rows.append(row)
        splits.append(rows)
    return splits


# --------------------------------------------------------------------------------------------------- ruozhiba
# Each pattern: a question template, a fill list of (x, y) pairs and an answer template. The answers follow a
# fixed shape per pattern, so a tiny model can learn the shape even where it cannot learn the facts.
RUOZHIBA_PATTERNS: list[tuple[str, list[tuple[str, ...]], str]] = [  # (question, fills of x[, y], answer)
    ("为什么{x}不能{y}？",
     [("鱼", "爬树"), ("石头", "游泳"), ("月亮", "吃饭"), ("冰箱", "唱歌"), ("雨伞", "飞行"), ("书包", "跑步"),
      ("椅子", "说话"), ("镜子", "睡觉"), ("蜡烛", "洗澡"), ("铅笔", "做饭"), ("电视", "散步"), ("杯子", "思考")],
     "因为{x}没有{y}所需要的身体结构和能力。这个问题把{x}当成了人，用幽默的方式提醒我们：每样东西都有自己的用途。"),
    ("{x}和{y}哪个更重？",
     [("一斤棉花", "一斤铁"), ("一公斤羽毛", "一公斤石头"), ("一吨木头", "一吨钢"), ("一两金子", "一两沙子"),
      ("一斤水", "一斤油"), ("一克盐", "一克糖"), ("一斤大米", "一斤面粉"), ("一公斤冰", "一公斤水")],
     "{x}和{y}一样重，因为它们的质量相同。这道题利用了人们对材料密度的直觉，容易让人答错。"),
    ("如果{x}会{y}，世界会怎样？",
     [("猫", "说话"), ("树", "走路"), ("太阳", "休假"), ("汽车", "做梦"), ("手机", "饿肚子"), ("云朵", "唱歌"),
      ("房子", "搬家"), ("钟表", "睡懒觉"), ("河流", "倒着流"), ("冰箱", "发脾气")],
     "这是一个有趣的假设。如果{x}真的会{y}，我们的生活会变得很热闹，但现实中{x}并不会{y}。"),
    ("{x}为什么叫{x}？",
     [("熊猫",), ("蜗牛",), ("西瓜",), ("地铁",), ("土豆",), ("火车",), ("雪糕",), ("黄瓜",), ("飞机",),
      ("电脑",), ("海马",), ("天鹅",)],
     "“{x}”这个名字来自人们对它的外形或用途的描述。名字只是约定俗成的叫法，不必按字面意思去理解。"),
    ("我把{x}放进{y}里，它还是{x}吗？",
     [("苹果", "冰箱"), ("书", "抽屉"), ("鸡蛋", "篮子"), ("手机", "口袋"), ("鞋子", "鞋柜"), ("钥匙", "盒子"),
      ("雨伞", "背包"), ("袜子", "洗衣机"), ("面包", "烤箱"), ("花", "花瓶")],
     "是的，{x}放进{y}里仍然是{x}。改变位置不会改变一个东西的本质，只是它所在的地方变了。"),
    ("{x}可以当{y}用吗？",
     [("筷子", "铅笔"), ("锅盖", "盾牌"), ("报纸", "被子"), ("枕头", "椅子"), ("脸盆", "帽子"), ("梳子", "叉子"),
      ("窗帘", "裙子"), ("茶杯", "花盆"), ("拖鞋", "苍蝇拍"), ("书本", "枕头")],
     "{x}在紧急情况下也许能临时当{y}用，但效果不好。最好还是用专门的{y}，既方便又安全。"),
    ("{x}的{y}是什么颜色的？",
     [("昨天", "影子"), ("声音", "衣服"), ("数字七", "头发"), ("星期一", "鞋子"), ("梦", "窗户"),
      ("风", "帽子"), ("音乐", "眼睛"), ("时间", "外套")],
     "{x}并没有真正的{y}，所以也谈不上颜色。这是一个把抽象事物具体化的玩笑问题。"),
    ("一天有{x}个小时，为什么我总觉得不够用？",
     [("二十四",), ("24",), ("廿四",)],
     "一天确实有{x}个小时，觉得不够用通常是因为安排的事情太多。合理规划时间、分清轻重缓急会有帮助。"),
    ("{x}掉进水里为什么不会{y}？",
     [("鱼", "淹死"), ("木头", "沉底"), ("鸭子", "湿透"), ("泡沫", "下沉"), ("乒乓球", "沉下去"),
      ("树叶", "沉没"), ("救生圈", "沉下去"), ("冰块", "沉底")],
     "{x}掉进水里不会{y}，是因为它的结构或密度让它能适应水。这是自然规律，不需要担心。"),
    ("既然{x}，那为什么还要{y}？",
     [("人总会饿", "吃饭"), ("房间总会乱", "打扫"), ("衣服总会脏", "洗衣服"), ("天总会黑", "开灯"),
      ("头发总会长", "理发"), ("花总会谢", "种花"), ("雪总会化", "堆雪人"), ("人总会累", "休息")],
     "虽然{x}，但{y}能让我们在当下过得更好。很多事情的意义在于过程，而不只是最终的结果。"),
]


def ruozhiba_records(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    pool = []
    for question, fills, answer in RUOZHIBA_PATTERNS:
        for fill in fills:
            x, y = fill[0], fill[-1]
            pool.append((question.format(x=x, y=y), answer.format(x=x, y=y)))
    # Prefixes keep instructions distinct when the pool is smaller than `n`.
    prefixes = ["", "请问", "我想知道，", "有个问题：", "说真的，", "认真问一下，", "好奇：", "求解答："]
    return _distinct_qa(rng, pool, prefixes, n)


# --------------------------------------------------------------------------------------------------- huanhuan
HUANHUAN_PAIRS = [
    ("你是谁？", "臣妾甄嬛，家父是大理寺少卿甄远道。"),
    ("你好", "皇上万福，臣妾给皇上请安。"),
    ("今天的天气怎么样？", "回皇上，今日天朗气清，正适合去御花园走走。"),
    ("你喜欢什么花？", "臣妾最爱倚梅园的梅花，凌寒独开，自有风骨。"),
    ("朕今晚去你宫里用膳可好？", "臣妾这就吩咐小厨房准备皇上爱吃的菜。"),
    ("你觉得华妃如何？", "华妃娘娘出身将门，性子直爽，臣妾不敢妄议。"),
    ("你会弹琴吗？", "臣妾略通一二，愿为皇上抚一曲《长相思》。"),
    ("最近宫里可有什么新鲜事？", "宫中一切安好，只是前几日御花园的海棠开得格外好。"),
    ("你想家吗？", "臣妾虽思念家中父母，但能陪伴皇上左右，已是福分。"),
    ("你读过哪些书？", "臣妾读过《诗经》与《史记》，也爱看些诗词小品。"),
    ("槿汐，今日可有人来过？", "回小主，敬妃娘娘派人送来了一盒点心。"),
    ("小主，夜深了，该歇息了。", "知道了，把烛火熄了吧，明日还要早起去给皇后请安。"),
    ("你为何总是闷闷不乐？", "臣妾只是想起了从前的一些旧事，让皇上挂心了。"),
    ("朕赏你一对玉镯。", "谢皇上隆恩，臣妾定当好好珍藏。"),
    ("你觉得朕是个好皇帝吗？", "皇上勤政爱民，天下百姓皆感念皇上恩德。"),
    ("你愿意陪朕下棋吗？", "臣妾棋艺不精，还请皇上手下留情。"),
    ("嬛嬛，朕想听你作诗。", "那臣妾便以今夜明月为题，献丑了。"),
    ("你怕不怕？", "有皇上在，臣妾什么都不怕。"),
    ("你的宫女可还尽心？", "流朱和浣碧都很尽心，臣妾身边离不开她们。"),
    ("皇后娘娘今日召见你说了什么？", "皇后娘娘叮嘱臣妾要好好侍奉皇上，和睦六宫。"),
    ("端午节快到了，你打算怎么过？", "臣妾想亲手包些粽子，给皇上和太后尝尝。"),
    ("你身子可好些了？", "多谢皇上挂念，太医说臣妾已无大碍。"),
    ("温太医医术如何？", "温太医医术精湛，为人也忠厚可靠。"),
    ("这件衣裳好看吗？", "这是内务府新送来的料子，皇上喜欢便好。"),
    ("你最擅长什么？", "臣妾擅长惊鸿舞，只是许久未跳，怕是生疏了。"),
]
HUANHUAN_PREFIXES = ["", "嬛嬛，", "莞嫔，", "甄嬛，"]


def _distinct_qa(rng: random.Random, pairs, prefixes, n: int) -> list[dict]:
    """`n` alpaca records drawn from (question, answer) pairs, a prefix keeping every instruction distinct."""
    records: list[dict] = []
    seen: set[str] = set()
    while len(records) < n:
        question, answer = rng.choice(pairs)
        instruction = rng.choice(prefixes) + question
        if instruction in seen:
            continue
        seen.add(instruction)
        records.append({"instruction": instruction, "input": "", "output": answer})
    return records


def huanhuan_records(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    return _distinct_qa(rng, HUANHUAN_PAIRS, HUANHUAN_PREFIXES, n)


# --------------------------------------------------------------------------------------------- classification
CLASSES: dict[str, list[str]] = {
    "体育": ["{team}昨晚以三比一战胜对手，提前锁定联赛冠军。", "{team}主力前锋受伤，将缺席接下来的两场比赛。",
           "马拉松比赛在{city}举行，三万名选手参赛。"],
    "财经": ["{city}上半年地区生产总值同比增长百分之六。", "央行宣布下调存款准备金率，释放长期资金。",
           "{company}股价今日大涨，市值突破千亿元。"],
    "科技": ["{company}发布新一代芯片，性能提升百分之四十。", "科学家在{city}建成新的量子计算实验室。",
           "新款智能手机搭载了更大容量的电池。"],
    "教育": ["{city}今年新增中小学学位两万个。", "教育部发布通知，进一步减轻学生课业负担。",
           "多所高校宣布扩大研究生招生规模。"],
    "娱乐": ["新电影在{city}举行首映礼，众多明星到场。", "这部电视剧收视率持续走高，网友热议不断。",
           "歌手在{city}举办演唱会，门票一售而空。"],
    "军事": ["海军舰艇编队在远海开展联合训练。", "新型战斗机完成首次试飞，各项指标正常。",
           "部队在{city}附近山区进行野外生存演练。"],
    "农业": ["{city}小麦喜获丰收，亩产再创新高。", "农民利用无人机喷洒农药，省时又省力。",
           "新品种水稻在南方试种成功，抗病能力更强。"],
    "医药": ["{company}研发的新药获批上市，可治疗高血压。", "{city}多家医院开通线上预约挂号服务。",
           "专家提醒，换季时节要注意预防流感。"],
}
FILLS = {
    "team": ["上海申花", "北京国安", "广州队", "山东泰山", "湖人队"],
    "city": ["北京", "上海", "广州", "成都", "西安", "杭州", "武汉"],
    "company": ["华为公司", "腾讯控股", "比亚迪", "恒瑞医药", "小米集团"],
}


def classification_records(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    labels = list(CLASSES)
    records: list[dict] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()  # (text, categories)
    while len(records) < n:
        label = labels[len(records) % len(labels)]
        text = rng.choice(CLASSES[label]).format(**{k: rng.choice(v) for k, v in FILLS.items()})
        others = rng.sample([c for c in labels if c != label], rng.randint(1, 3))
        category = others + [label]
        rng.shuffle(category)
        if (text, tuple(category)) not in seen:
            seen.add((text, tuple(category)))
            records.append({"text": text, "category": category, "output": label})
    return records


# -------------------------------------------------------------------------------------------------- writing
def _as_json_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _json_list(rows: list[dict]) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=4) + "\n"


def render(seed: int = SEED) -> dict[str, str]:
    """Every sample file, as `{relative path: text}`: a pure function of `seed`."""
    train, dev = cluener_lines(seed, (CLUENER_TRAIN_SIZE, CLUENER_DEV_SIZE))
    return {
        "cluener_sample/train.json": _as_json_lines(train),
        "cluener_sample/dev.json": _as_json_lines(dev),
        "ruozhiba_sample.json": _json_list(ruozhiba_records(seed, RUOZHIBA_SIZE)),
        "huanhuan_sample.json": _json_list(huanhuan_records(seed, HUANHUAN_SIZE)),
        "classification_sample.json": _as_json_lines(classification_records(seed, CLASSIFICATION_SIZE)),
    }


def write(out_dir: Path, seed: int = SEED) -> list[Path]:
    paths = []
    for rel, text in render(seed).items():
        path = Path(out_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines samples", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=RAW_DIR, help=f"default: {RAW_DIR}")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    for path in write(args.out_dir, args.seed):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
