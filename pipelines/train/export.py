"""`make export`: merge a LoRA adapter into its base model with `llamafactory-cli export`.

    python -m pipelines export ADAPTER [key=value …] [--out DIR] [--base MODEL] [--template NAME] [--dry-run]

The base model comes from the adapter's `adapter_config.json` (`base_model_name_or_path`), else from the
manifest `pipelines.train.launch` wrote beside it; the template from that manifest, else `qwen`. The merged model
goes to `--out` (default: ADAPTER + "-merged"), with the export YAML kept there as `pipelines_export.yaml`.
`export_args` is the pure core; extra `key=value` are LLaMA-Factory export keys (e.g. `export_size=2`).
DRY_RUN=1 (or --dry-run) prints the export config and the command and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from pipelines.common import lfcli
from pipelines.common.errors import PipelinesError
from pipelines.common.flags import FlagError, env_flag
from pipelines.common.paths import is_local, resolve
from pipelines.train.manifest import read_manifest

DEFAULT_TEMPLATE = "qwen"
EXPORT_YAML = "pipelines_export.yaml"


class ExportError(PipelinesError):
    """One sentence naming the file or key and what to do."""


def adapter_info(adapter: Path) -> tuple[dict, dict]:
    """(adapter_config.json, manifest config) of an adapter folder; raises ExportError if it is no adapter."""
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.is_file():
        raise ExportError(f"`{adapter}` holds no `adapter_config.json`; pass the `output_dir` of a LoRA run "
                          "(e.g. `ADAPTER=saves/tiny/lora/cluener`).")
    try:
        adapter_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"`{cfg_path}` line {e.lineno} is not valid JSON; train the adapter again.") from None
    manifest = (read_manifest(adapter) or {}).get("config") or {}
    return adapter_cfg, manifest


def export_args(adapter: str, adapter_cfg: dict, manifest_cfg: dict, out: str | None = None,
                base: str | None = None, template: str | None = None) -> dict:
    """The LLaMA-Factory export config. Pure."""
    base = base or adapter_cfg.get("base_model_name_or_path") or manifest_cfg.get("model_name_or_path")
    if not base:
        raise ExportError(f"`{adapter}/adapter_config.json` names no `base_model_name_or_path` and no manifest "
                          "gives `model_name_or_path`; pass `--base MODEL`.")
    return {
        "model_name_or_path": base,
        "adapter_name_or_path": adapter,
        "template": template or manifest_cfg.get("template") or DEFAULT_TEMPLATE,
        "finetuning_type": "lora",
        "trust_remote_code": bool(manifest_cfg.get("trust_remote_code", False)),
        "export_dir": out or adapter.rstrip("/") + "-merged",
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines export", description=__doc__.splitlines()[0])
    ap.add_argument("adapter", metavar="ADAPTER", help="a LoRA output folder, e.g. saves/tiny/lora/cluener")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="further LLaMA-Factory export keys")
    ap.add_argument("--out", help="export_dir (default: ADAPTER-merged)")
    ap.add_argument("--base", help="base model (default: from adapter_config.json or the manifest)")
    ap.add_argument("--template", help=f"LLaMA-Factory template (default: the manifest's, else {DEFAULT_TEMPLATE})")
    ap.add_argument("--dry-run", action="store_true", help="print the export config and command (or DRY_RUN=1)")
    args = ap.parse_intermixed_args(argv)
    try:
        dry_run = env_flag("DRY_RUN")
        for o in args.overrides:
            if "=" not in o:
                raise ExportError(f"override `{o}` is not `key=value`; write it as e.g. `export_size=2`.")
        adapter_cfg, manifest_cfg = adapter_info(resolve(args.adapter))
        cfg = export_args(args.adapter, adapter_cfg, manifest_cfg, args.out, args.base, args.template)
        base = cfg["model_name_or_path"]
        if is_local(base) and not (resolve(base) / "config.json").is_file():
            raise ExportError(f"the base model `{cfg['model_name_or_path']}` is not there; build or download it, "
                              "or pass `--base`.")
    except (ExportError, FlagError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    text = "# written by pipelines.train.export\n" + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / EXPORT_YAML
        config.write_text(text, encoding="utf-8")
        cmd = lfcli.cli("export", str(config), *args.overrides)
        if args.dry_run or dry_run:
            print(text, end="")
            print("$", " ".join(cmd))
            return 0
        env = lfcli.cli_env(offline=is_local(cfg["model_name_or_path"]))
        rc = lfcli.run(cmd, env=env)
        out = resolve(cfg["export_dir"])
        if rc != 0:
            print(f"export: `llamafactory-cli export` failed with exit {rc}; see its output above.", file=sys.stderr)
            return rc
        shutil.copy2(config, out / EXPORT_YAML)
    print(f"export: merged `{args.adapter}` into `{cfg['model_name_or_path']}` → {cfg['export_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
