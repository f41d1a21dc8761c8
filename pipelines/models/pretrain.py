"""`make tiny-base`: give the tiny model a short CPU pre-training with LLaMA-Factory (stage pt, full).

Writes the corpus (`pipelines.models.corpus`) to data/pretrain/ with its own dataset_info.json, runs
`llamafactory-cli train conf/tiny_pretrain.yaml`, and keeps the tokenizer files of the tiny model
byte-identical in the result. Cached: it re-runs only when the tiny model, the config or the corpus change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from pipelines.common import lfcli
from pipelines.common.errors import PipelinesError
from pipelines.common.paths import CONF_DIR, DATA_DIR, ROOT, TINY_BASE, TINY_MODEL
from pipelines.models import tiny as tiny_model
from pipelines.models.corpus import pretrain_corpus

CONFIG = CONF_DIR / "tiny_pretrain.yaml"
CORPUS_DIR = DATA_DIR / "pretrain"


def write_corpus(out_dir: Path = CORPUS_DIR, seed: int = tiny_model.SEED) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.json"
    corpus.write_text(json.dumps([{"text": d} for d in pretrain_corpus(seed)], ensure_ascii=False, indent=0),
                      encoding="utf-8")
    info = {"tiny_pretrain": {"file_name": "corpus.json", "columns": {"prompt": "text"}}}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return corpus


def digest(base: Path, corpus: Path, overrides: list[str]) -> str:
    h = hashlib.sha256()
    for f in (base / "pipelines-build.sha256", CONFIG, corpus):
        h.update(f.read_bytes())
    h.update(json.dumps(overrides).encode())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines tiny-base", description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key=value overrides of conf/tiny_pretrain.yaml")
    ap.add_argument("--model", default=TINY_MODEL, help="the random-weight tiny model (default: %(default)s)")
    ap.add_argument("--out", default=TINY_BASE, help="output folder (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="pre-train again even if the cache is valid")
    args = ap.parse_args(argv)

    tiny_model.main(["--out", args.model])
    model, out = Path(args.model), Path(args.out)
    corpus = write_corpus()
    want = digest(model, corpus, args.overrides)
    stamp = out / "pipelines-base.sha256"
    if not args.force and stamp.exists() and stamp.read_text().strip() == want:
        print(f"tiny-base: {out} is up to date (cached pre-training)")
        return 0

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    print(f"tiny-base: pre-training {model} on {corpus} (about 45 s on 2 cores) …", flush=True)
    cmd = lfcli.cli("train", str(CONFIG), f"model_name_or_path={model}", f"output_dir={tmp}", *args.overrides)
    rc = lfcli.run(cmd)
    if rc != 0:
        raise PipelinesError(f"`llamafactory-cli train {CONFIG.relative_to(ROOT)}` failed with exit {rc}; "
                         "see its output above.")
    tiny_model.copy_tokenizer(model, tmp)  # the base keeps the tiny model's tokenizer and chat template exactly
    for junk in tmp.glob("checkpoint-*"):
        shutil.rmtree(junk)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    stamp.write_text(want + "\n")
    print(f"tiny-base: wrote {out} in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
