"""`make deploy`: a self-contained deployment bundle of a serve config, for Docker Compose or the vllm-stack chart.

    python -m pipelines deploy CONFIG --target compose|k8s [--out DIR] [--adapter-url NAME=URL …] [--schemas DIR]

First the refusals of `make serve` (`precheck`: missing weights, rank, another base, a stale base), then the
documents (`render`), checked against the targets' own JSON schemas (`deploy/` of `pipelines.common.paths.SHARED`: ../shared, or what `make download`
fetched; where they are
absent the check is skipped with a note, since Compose and Helm check again when the bundle is used), and only
then a write: into a temporary folder beside OUT, swapped in at the end, so that a bundle is whole or absent.
OUT (default serve/deploy/<served model name>/) gets a marker naming its config; a folder that holds another
config's bundle, or anything else, is never overwritten. The API key is never written: Compose reads
VLLM_API_KEY when it starts, the chart a Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from pipelines.common.io import file_sha256
from pipelines.common.paths import SERVE_DIR, SHARED_DEPLOY, is_local, rel
from pipelines.common.versions import VLLM_ROUTER_VERSION
from pipelines.serve import render
from pipelines.serve.config import AdapterInfo, ServeConfig, ServeConfigError, load, model_arg, precheck

MARKER = "pipelines-bundle.json"
DEPLOY_DIR = SERVE_DIR / "deploy"
#: The targets' official schemas (`make download` fetches them at pinned commits); never copied into the project.
SCHEMAS_DIR = SHARED_DEPLOY
SCHEMAS = {"compose": ("compose-spec/compose-spec.json", "the Compose specification's schema"),
           "k8s": ("vllm-stack/values.schema.json", f"the {render.CHART} chart's values schema")}
DOCUMENT = {"compose": "compose.yaml", "k8s": "values.yaml"}
SKIPPED_FILES = ("training_args.bin",)  # a pickled Python object; nothing serving needs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines deploy", description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a serve config, e.g. serve/qwen2.5-0.5b.yaml")
    ap.add_argument("--target", required=True, choices=["compose", "k8s"])
    ap.add_argument("--out", type=Path, help="the bundle folder (default: serve/deploy/<served model name>/)")
    ap.add_argument("--adapter-url", action="append", default=[], metavar="NAME=URL",
                    help="k8s: the controller loads adapter NAME from an s3:// or http(s):// URL, not the volume")
    ap.add_argument("--adapter-urls-from-env", metavar="VAR",
                    help="more NAME=URL items from the environment variable VAR, split on whitespace only (what "
                         "`make deploy ADAPTER_URLS=…` uses: no shell ever reads the URLs)")
    ap.add_argument("--schemas", type=Path, default=SCHEMAS_DIR, help="the targets' JSON schemas (%(default)s)")
    args = ap.parse_args(argv)
    urls = list(args.adapter_url)
    if args.adapter_urls_from_env:
        urls += os.environ.get(args.adapter_urls_from_env, "").split()
    try:
        out = deploy(args.config, args.target, out=args.out, urls=urls, schemas=args.schemas)
    except ServeConfigError as e:
        print(f"deploy: {e}" if len(e.problems) == 1 else
              f"deploy: {len(e.problems)} problems:\n  - " + "\n  - ".join(e.problems), file=sys.stderr)
        return 1
    except OSError as e:
        where = e.filename or args.out or DEPLOY_DIR
        print(f"deploy: cannot write the bundle at `{where}` ({e.strerror or e}); choose a folder you can write "
              "with `OUT=`.", file=sys.stderr)
        return 1
    print(f"deploy: {args.target} bundle in {rel(out)}; start it as {rel(out)}/README.md says")
    return 0


def deploy(config: str | Path, target: str, out: Path | None = None, urls: list[str] | None = None,
           schemas: Path | None = SCHEMAS_DIR, echo: Callable[[str], None] = print) -> Path:
    """Check, render, validate, then write the bundle of `config` for `target`; returns its folder."""
    cfg = load(config)
    adapters = precheck(cfg, check_port=False)
    url_of = parse_urls(urls or [], cfg, target)
    out = Path(out) if out else DEPLOY_DIR / cfg.served_model_name.replace("/", "-")
    check_out(out, config)
    if target == "compose":
        docs = {"compose.yaml": render.render_compose(cfg, adapters)}
    else:
        docs = {"values.yaml": render.render_values(cfg, adapters, url_of, shared_gib(cfg, adapters))}
    checked = validate(docs[DOCUMENT[target]], target, cfg.source, schemas, echo)
    if target == "k8s" and (len(url_of) < len(adapters) or is_local(cfg.model)):
        docs["push-pod.yaml"] = render.push_pod(render.k8s_name(cfg.served_model_name))
    files = {name: _yaml(doc, cfg.source, target) for name, doc in docs.items()}
    if target == "compose" and cfg.replicas > 1:
        files["router/Dockerfile"] = render.ROUTER_DOCKERFILE
    files["README.md"] = readme(cfg, adapters, target, url_of, config)
    marker = {"pipelines_bundle": 1, "config": str(config), "config_path": str(Path(config).resolve()),
              "target": target, "served_model_name": cfg.served_model_name, "image": ":".join(render.image(cfg)),
              "adapters": {a.name: url_of.get(a.name, f"adapters/{a.name}") for a in adapters},
              "schema_checked": checked}
    files[MARKER] = json.dumps(marker, indent=2) + "\n"
    write_bundle(out, files, adapters)
    return out


def parse_urls(items: list[str], cfg: ServeConfig, target: str) -> dict[str, str]:
    """`NAME=URL` options -> {adapter name: URL}; each name an adapter of the config, each URL s3:// or http(s)://."""
    problems, urls = [], {}
    for item in items:
        name, _, url = item.partition("=")
        shown = f"{name}={redact(url)}"
        if redact(url) != url:
            problems.append(f"`--adapter-url {shown}` carries credentials in its URL; they would be written into "
                            "the bundle: give the LoRA controller its credentials another way (an IAM role, a "
                            "presigned URL) and pass the URL without them.")
            continue
        item = shown
        if any(c.isspace() or not c.isprintable() for c in url):
            problems.append(f"`--adapter-url {item!r}` holds white space or control characters; a URL has none.")
        elif target != "k8s":
            problems.append(f"`--adapter-url {item}` is for `--target k8s`; a compose bundle carries its adapters.")
        elif name not in cfg.adapters:
            problems.append(f"`--adapter-url {item}` names no adapter of `{cfg.source}`; use one of "
                            f"{', '.join(cfg.adapters) or '(none)'}.")
        elif not url.startswith(("s3://", "http://", "https://")):
            problems.append(f"`--adapter-url {item}` needs an s3:// or http(s):// URL for the LoRA controller.")
        else:
            urls[name] = url
    if problems:
        raise render.DeployError(problems)
    return urls


def redact(url: str) -> str:
    """`url` with the user-info part of its host (`user:password@`) replaced by `***@`; other URLs unchanged."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return url
    if "@" not in netloc:
        return url
    return url.replace(netloc, "***@" + netloc.rpartition("@")[2], 1)


def shared_gib(cfg: ServeConfig, adapters: list[AdapterInfo]) -> int:
    """The shared volume's size: a quarter more than the adapters and a local base hold, at least 10 GiB."""
    files = [f for a in adapters for f in adapter_files(a.path)]
    if is_local(cfg.model):
        files += [f for f in Path(model_arg(cfg.model)).rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    return max(10, math.ceil(total * 1.25 / 2**30))


def validate(doc: dict, target: str, source: str, schemas: Path | None, echo: Callable[[str], None]) -> str:
    """Check `doc` against the target's schema (and, for k8s, what Kubernetes refuses beyond it); raise
    DeployError with every problem. A schema that is absent, or jsonschema missing, skips the check with a note.
    Returns what was checked, for the marker."""
    what, (relpath, name) = DOCUMENT[target], SCHEMAS[target]
    path = Path(schemas or SCHEMAS_DIR) / relpath
    later = "`docker compose config`" if target == "compose" else "`helm lint`"
    try:
        import jsonschema  # noqa: F401 - in the `dev` extra
    except ImportError:
        note = "not checked: jsonschema is not installed (`pip install jsonschema`)"
        echo(f"deploy: note: `{what}` {note}; {later} checks it where the bundle is used.")
        return note
    problems = [] if target == "compose" else render.schema_problems(
        doc, render.STRICT_VALUES, what=what, schema_name="what Kubernetes accepts", source=source)
    if path.is_file():
        problems += render.schema_problems(doc, json.loads(path.read_text(encoding="utf-8")), what=what,
                                           schema_name=name, source=source)
    if problems:
        raise render.DeployError(problems)
    if not path.is_file():
        note = f"not checked against {name}: `{path}` is absent"
        echo(f"deploy: note: `{what}` {note}; {later} checks it where the bundle is used.")
        return note
    return f"{name} ({path.name}){' and what Kubernetes accepts' if target == 'k8s' else ''}"


def _yaml(doc: dict, source: str, target: str) -> str:
    head = (f"# Rendered by `make deploy SERVE={source} TARGET={target}` from `{source}`; re-render rather than "
            "edit.\n# The API key is not here: it comes from VLLM_API_KEY (compose) or the Secret `vllm-api-key` "
            "(k8s).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


# ---------------------------------------------------------------- the bundle's README


def readme(cfg: ServeConfig, adapters: list[AdapterInfo], target: str, urls: dict[str, str],
           config: str | Path) -> str:
    """The bundle's README.md: what it runs, and the commands to start, push the adapters, check, evaluate, stop."""
    repo, tag = render.image(cfg)
    names = [a.name for a in adapters]
    local_model = model_arg(cfg.model)
    where = "Docker Compose" if target == "compose" else render.CHART
    listed = ", ".join(f"`{n}`" for n in names) or "(none)"
    lines = [f"# `{cfg.served_model_name}` on {where}: vLLM's OpenAI-compatible server and its LoRA adapters", "",
             (f"Rendered by `make deploy SERVE={config} TARGET={target}` from `{config}`; re-render rather than edit. "
              f"Image `{repo}:{tag}`; base model `{cfg.model}`; adapters {listed}"
              f"{' in `adapters/`, their checksums in `SHA256SUMS`' if names else ''}. The server runs the `vllm "
              f"serve` arguments of `make serve SERVE={config}`, with the paths of the container and `--host 0.0.0.0`. "
              "The API key is never in these files: export `VLLM_API_KEY` first; clients send it."), ""]

    def section(title: str, *cmds: str, text: str = "") -> None:
        lines.extend([f"## {title}", "", *([text, ""] if text else []), *(["```bash", *cmds, "```", ""] if cmds else [])])

    check = 'curl -s -H "Authorization: Bearer $VLLM_API_KEY" {url}/models'
    q = shlex.quote  # every value in a shell line is one quoted word
    evaluate = (f'make eval BASE_URL={{url}} MODELS={q(" ".join([cfg.served_model_name, *names[:1]]))} '
                f"MODEL={q(local_model)} TASK=… EVAL_DATA=…")
    sums = ["sha256sum -c SHA256SUMS            # the adapters are the ones rendered"] if names else []
    if target == "compose":
        host = "127.0.0.1" if cfg.publish_host in ("0.0.0.0", "::") else cfg.publish_host
        url = f"http://{f'[{host}]' if ':' in host else host}:{cfg.port}/v1"
        model = (f"the local folder `{local_model}` is mounted read-only at `{render.model_target(cfg)}` (set "
                 "`BASE_MODEL_DIR=` to where it lies on another host)" if is_local(cfg.model) else
                 f"`{cfg.model}` comes from the host's Hugging Face cache (`${{HF_HOME:-~/.cache/huggingface}}`), "
                 "downloaded on the first start (`HF_TOKEN` is passed when set)")
        what = (f"One container on {cfg.gpu_count} NVIDIA GPU(s) (NVIDIA Container Toolkit), port {cfg.port} "
                f"published on {cfg.publish_host}" if cfg.replicas == 1 else
                f"{cfg.replicas} vLLM containers (`vllm-0` …, {cfg.gpu_count} NVIDIA GPU(s) each, GPUs "
                f"0-{cfg.replicas * cfg.gpu_count - 1} of the host, NVIDIA Container Toolkit) behind the `router` "
                f"service (vllm-router {VLLM_ROUTER_VERSION}, the release `make serve REPLICAS=` runs; policy "
                f"`{cfg.routing}`), which alone publishes port {cfg.port} on {cfg.publish_host}. `docker compose "
                f"up` builds the router's image `{render.ROUTER_IMAGE}` from `router/Dockerfile` (the vLLM "
                "project ships vllm-router on PyPI: the pinned wheel on a Python image; the build needs PyPI). "
                "The router forwards each request's API key; every replica checks it")
        section("Start", *sums, "export VLLM_API_KEY=…", "docker compose up -d",
                "docker compose ps                  # `healthy` once /health answers",
                text=f"{what}; {model}; `adapters/` is mounted read-only at `{render.ADAPTERS_MOUNT}`.")
        section("Which bundle", text=(
            "Compose: one GPU host, replicas on its GPUs behind one router, `docker compose` only. Several hosts, "
            "autoscaling or a LoRA controller that loads adapters into every replica: `make deploy TARGET=k8s` "
            "(vllm-stack with its own router; `replicas` is its `replicaCount`)."))
        section("Check", check.format(url=url))
        section("Evaluate", evaluate.format(url=url), text="From the repository, with the same `VLLM_API_KEY`:")
        section("Stop", "docker compose down")
        section("Push the adapters", "rsync -a ./ HOST:PATH/ && ssh HOST 'cd PATH && sha256sum -c SHA256SUMS'",
                text="The folder is the whole bundle: copy it to the GPU host and check the adapters there.")
    else:
        name = render.k8s_name(cfg.served_model_name)
        pod, url = f"{name}-push", "http://127.0.0.1:30080/v1"
        gpu = f" on nodes labelled `{render.GPU_LABEL}={cfg.gpu_type}`" if cfg.gpu_type else ""
        section("Start", "export VLLM_API_KEY=…",
                'kubectl create secret generic vllm-api-key --from-literal=VLLM_API_KEY="$VLLM_API_KEY"',
                "helm repo add vllm https://vllm-project.github.io/production-stack",
                f"helm install {render.RELEASE} vllm/vllm-stack --version 0.1.12 -f values.yaml",
                text=f"One model (`{name}`: {cfg.replicas} replica(s) of {cfg.gpu_count} GPU(s){gpu}) behind the "
                     "stack's router, and the LoRA controller, which loads every `loraAdapters` entry into each "
                     "replica (the engine allows runtime LoRA loading for it). `make serve`'s arguments are "
                     "`vllmConfig` and `extraArgs`; the chart sets `--host`, `--port` and `--enable-lora`. The key "
                     "comes from the Secret `vllm-api-key`.")
        local = [n for n in names if n not in urls]
        model_on_pvc = render.model_target(cfg, render.SHARED_PVC + "/models")  # None for a hub id
        push = [f"kubectl apply -f push-pod.yaml && kubectl wait --for=condition=Ready pod/{pod}",
                f"kubectl exec {pod} -- mkdir -p {render.LORA_DIR} {render.SHARED_PVC}/models",
                *(f"kubectl cp {q(f'adapters/{n}')} {q(f'{pod}:{render.LORA_DIR}/{n}')}" for n in local),
                *([f"kubectl cp {q(local_model)} {q(pod + ':' + model_on_pvc)}"] if model_on_pvc is not None else []),
                f"kubectl delete pod {pod}"] if local or is_local(cfg.model) else []
        uploads = [f"aws s3 cp --recursive {q(f'adapters/{n}')} {q(u)}" if u.startswith("s3://") else
                   f"# publish the files of adapters/{n}/ at {u}" for n, u in urls.items()]
        section("Push the adapters", *sums, *push, *uploads, "kubectl get loraadapters           # each one loaded",
                text=f"Local adapters{' and the base model' if is_local(cfg.model) else ''} go onto the chart's "
                     f"shared volume `{render.RELEASE}-shared-pvc-storage-claim` (ReadWriteMany; add "
                     "`--set sharedPvcStorage.storageClass=…` to `helm install` where the default class cannot), "
                     "through a pod that mounts it; adapters given a URL are uploaded there.")
        section("Check", f"kubectl port-forward svc/{render.RELEASE}-router-service 30080:80 &", check.format(url=url))
        section("Evaluate", evaluate.format(url=url), text="From the repository, with the same `VLLM_API_KEY`:")
        section("Stop", "kubectl delete loraadapters.production-stack.vllm.ai --all   # first, as the chart says",
                f"helm uninstall {render.RELEASE}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the bundle folder


def check_out(out: Path, config: str | Path) -> None:
    """Refuse an OUT that holds another config's bundle or files that are no bundle; the same config's bundle is
    replaced."""
    if not out.exists():
        return
    if not out.is_dir():
        raise render.DeployError([f"`{out}` is a file; choose a folder for the bundle with `OUT=`."])
    marker = out / MARKER
    if marker.is_file():
        try:
            other = json.loads(marker.read_text(encoding="utf-8"))["config_path"]
        except (OSError, ValueError, KeyError, TypeError):
            raise render.DeployError([(f"`{marker}` is not a bundle marker this version reads; remove `{out}` or "
                                       "choose another folder with `OUT=`.")]) from None
        if Path(other) != Path(config).resolve():
            raise render.DeployError([(f"`{out}` holds the bundle of `{other}`; render `{config}` into another "
                                       "folder with `OUT=`, or remove that bundle first.")])
        return
    if any(out.iterdir()):
        raise render.DeployError([(f"`{out}` holds files but no bundle (no `{MARKER}`); choose an empty or new "
                                   "folder with `OUT=`.")])


def adapter_files(folder: Path) -> list[Path]:
    """What a bundle carries of an adapter folder: its top-level files (weights, config, tokenizer, manifest), not
    training's checkpoints and logs in subfolders."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name not in SKIPPED_FILES)


def write_bundle(out: Path, files: dict[str, str], adapters: list[AdapterInfo]) -> None:
    """Write into a temporary folder beside `out`, with `SHA256SUMS` of the copied adapters, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        sums = []
        for a in adapters:
            dest = tmp / "adapters" / a.name
            dest.mkdir(parents=True)
            for f in adapter_files(a.path):
                shutil.copy2(f, dest / f.name)
                sums.append(f"{file_sha256(dest / f.name)}  adapters/{a.name}/{f.name}")
        if adapters:
            (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
        for name, text in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
