"""`make download`: fetch the real data sets and the deployment schemas on a connected machine, verified by sha256.

    python -m pipelines download [--out downloads] [--only cluener,ruozhiba,huanhuan,schemas] [--cluener-url URL]
                                 [--ruozhiba-url BASE] [--github-url BASE] [--timeout S] [--no-verify]

Into OUT (default `downloads/`), laid out as `make test-real` reads it (`PIPELINES_SHARED=downloads`):

* `datasets/cluener2020/`: the official `cluener_public.zip`, unzipped (train, dev, test, README).
* `datasets/ruozhiba_gpt4/`: hfl/ruozhiba_gpt4's `ruozhiba_qa2449_gpt4o.json` and `…_gpt4t.json` (Hugging Face hub).
* `datasets/huanhuan/huanhuan.json`: KMnO4-zx/huanhuan-chat at a pinned commit.
* `deploy/compose-spec/compose-spec.json` and `deploy/vllm-stack/values.schema.json`: the deployment targets'
  official schemas at pinned commits (compose-spec, vllm-project/production-stack's chart 0.1.12).

Every file is checked against the sha256 recorded with the project's reference copies; a file already present
with the right checksum is not fetched again. `CLUENER_URL` / `RUOZHIBA_URL` (environment) or the flags point it
elsewhere, e.g. at a mirror. Then: `make data CLUENER_DIR=downloads/datasets/cluener2020
RUOZHIBA_FILE=downloads/datasets/ruozhiba_gpt4/ruozhiba_qa2449_gpt4o.json`, and `PIPELINES_SHARED=downloads make
test-real`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
from tqdm import tqdm

from pipelines.common.errors import PipelinesError
from pipelines.common.io import atomic_write, sha256_bytes
from pipelines.common.paths import DOWNLOADS_DIR

CLUENER_URL = "https://storage.googleapis.com/cluebenchmark/tasks/cluener_public.zip"
RUOZHIBA_URL = "https://huggingface.co/datasets/hfl/ruozhiba_gpt4/resolve/main"

# From ../shared/datasets/cluener2020/SOURCE.md (train 10748 lines, dev 1343, test 1345).
CLUENER_SHA256: dict[str, str | None] = {
    "train.json": "60299d202779dc84f3c3bd81f4dc08f5323d0dbf762cb50cd62dd51aa9a871f8",
    "dev.json": "90036b59832e007c45d11eafe5ed80549f58a18a29aaa7fe8b1229622c69ec38",
    "test.json": "5ca36f6fbe29230a6e3244110fcd9487fc2f5a672f5bfeba82a30f0ece72aa69",
}
CLUENER_OPTIONAL = ("README.md",)  # extracted when present, not verified
# From ../shared/datasets/ruozhiba_gpt4/SOURCE.md (2449 records each; the publisher's GitHub copies).
RUOZHIBA_SHA256: dict[str, str | None] = {
    "ruozhiba_qa2449_gpt4o.json": "ea80d2a2798c77e5a3f0e9cb3d8da0cc203a5bf1a26e264ce7cebbe171257983",
    "ruozhiba_qa2449_gpt4t.json": "46b02031f83877c7fb9f2c1eca427361a54f81a3e859a3335d98370de0f8cd12",
}
#: Single files at pinned commits: source -> {path under OUT: (path under GITHUB_RAW, sha256)}.
GITHUB_RAW = "https://raw.githubusercontent.com"
PINNED_FILES: dict[str, dict[str, tuple[str, str]]] = {
    "huanhuan": {  # KMnO4-zx/huanhuan-chat, dataset/train/lora/huanhuan.json (3729 records)
        "datasets/huanhuan/huanhuan.json": (
            "KMnO4-zx/huanhuan-chat/2d6c72909d6c3b35e3435cd7ce5658306737bfbd/dataset/train/lora/"
            "huanhuan.json", "1a0172c731eee506fb58f888f5efd953f7bb183f416affecbe3f93dbb9596a34"),
    },
    "schemas": {
        "deploy/compose-spec/compose-spec.json": (
            "compose-spec/compose-spec/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json",
            "1f91e091f16b2dd50ab8860e02bb391d22df553d91c145eacedb1b6eff9c3f0e"),
        "deploy/vllm-stack/values.schema.json": (
            "vllm-project/production-stack/a6c01db05f65f556235413ba8dbcfb0c01132fff/helm/"
            "values.schema.json", "c6f98c9146c09e4ef01609afb9a1667da1694de3ca4d84247c942d875622a86a"),
    },
}
SOURCES = ("cluener", "ruozhiba", *PINNED_FILES)


class DownloadError(PipelinesError):
    """A one-sentence problem (network, HTTP, checksum, archive); `main` prints it without a traceback."""


def verify(name: str, data: bytes, expected: str | None, origin: str) -> None:
    if expected is not None and sha256_bytes(data) != expected:
        raise DownloadError(f"`{name}` from `{origin}` has sha256 {sha256_bytes(data)}, not the expected {expected}; "
                            "the source changed or the download is corrupt (rerun, or `--no-verify` to accept it).")


def fetch(url: str, *, timeout: float = 60.0) -> bytes:
    """The body of `url`, with a progress bar on a terminal; network and HTTP errors as one sentence."""
    host = urlparse(url).netloc or url
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout) as c, c.stream("GET", url) as r:
            if r.status_code != 200:
                raise DownloadError(f"`{url}` answered HTTP {r.status_code}; check the URL (or the mirror).")
            total = int(r.headers.get("content-length", 0)) or None
            buf = io.BytesIO()
            with tqdm(total=total, unit="B", unit_scale=True, desc=Path(urlparse(url).path).name,
                      disable=None, leave=False) as bar:
                for chunk in r.iter_bytes():
                    buf.write(chunk)
                    bar.update(len(chunk))
            return buf.getvalue()
    except httpx.TransportError as e:  # DNS, refused, reset, timeout: offline or unreachable
        raise DownloadError(f"cannot reach `{host}` ({type(e).__name__}); `make download` needs a network "
                            "connection, or copy the files into the download folder yourself.") from None


def _present(folder: Path, expected: dict[str, str | None]) -> bool:
    """All files there with the expected checksums (unverified files never count as present)."""
    return all(v is not None and (folder / n).is_file() and sha256_bytes((folder / n).read_bytes()) == v
               for n, v in expected.items())


def unzip_members(archive: bytes, origin: str, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """`{basename: bytes}` of the wanted files, wherever they sit in the zip (only basenames are used)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(archive))
    except zipfile.BadZipFile:
        raise DownloadError(f"`{origin}` is not a zip archive; check the URL (or the mirror).") from None
    found = {}
    with zf:
        for info in zf.infolist():
            base = Path(info.filename).name
            if not info.is_dir() and base in wanted and base not in found:
                found[base] = zf.read(info)
    return found


def download_cluener(out_dir: Path, url: str = CLUENER_URL, *, expected: dict[str, str | None] | None = None,
                     timeout: float = 60.0) -> list[Path]:
    """Fetch and unzip CLUENER into `out_dir` (e.g. `downloads/datasets/cluener2020`), verified; returns the files."""
    expected = CLUENER_SHA256 if expected is None else expected
    if _present(out_dir, expected):
        print(f"cluener: {out_dir} already holds verified {', '.join(expected)}")
        return [out_dir / n for n in expected]
    archive = fetch(url, timeout=timeout)
    members = unzip_members(archive, url, tuple(expected) + CLUENER_OPTIONAL)
    missing = [n for n in expected if n not in members]
    if missing:
        raise DownloadError(f"`{url}` holds no {', '.join(f'`{m}`' for m in missing)}; check the URL (or the mirror).")
    for name in expected:
        verify(name, members[name], expected[name], url)
    written = []
    for name, data in members.items():
        atomic_write(out_dir / name, data, mode=0o644)
        written.append(out_dir / name)
    print(f"cluener: {len(written)} files → {out_dir}" + (" (sha256 verified)" if any(expected.values()) else ""))
    return written


def download_ruozhiba(out_dir: Path, base_url: str = RUOZHIBA_URL, *,
                      expected: dict[str, str | None] | None = None, timeout: float = 60.0) -> list[Path]:
    """Fetch the hfl/ruozhiba_gpt4 files into `out_dir` (e.g. `downloads/datasets/ruozhiba_gpt4`), verified."""
    expected = RUOZHIBA_SHA256 if expected is None else expected
    written = []
    for name, digest in expected.items():
        path = out_dir / name
        if _present(out_dir, {name: digest}):
            print(f"ruozhiba: {path} already present and verified")
        else:
            url = f"{base_url.rstrip('/')}/{name}"
            data = fetch(url, timeout=timeout)
            verify(name, data, digest, url)
            atomic_write(path, data, mode=0o644)
            print(f"ruozhiba: {path}" + (" (sha256 verified)" if digest else ""))
        written.append(path)
    return written


def download_pinned(out: Path, files: dict[str, tuple[str, str]], base_url: str = GITHUB_RAW, *,
                    verify_sha: bool = True, timeout: float = 60.0) -> list[Path]:
    """Fetch each `{path under out: (path under base_url, sha256)}` not already there with its checksum."""
    written = []
    for name, (remote, digest) in files.items():
        url = f"{base_url.rstrip('/')}/{remote}"
        path = out / name
        expected = digest if verify_sha else None
        if _present(path.parent, {path.name: digest}):
            print(f"download: {path} already present and verified")
        else:
            data = fetch(url, timeout=timeout)
            verify(path.name, data, expected, url)
            atomic_write(path, data, mode=0o644)
            print(f"download: {path}" + (" (sha256 verified)" if expected else ""))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines download", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOWNLOADS_DIR, help=f"default: {DOWNLOADS_DIR}")
    parser.add_argument("--only", default=",".join(SOURCES), help=f"comma-separated subset of {','.join(SOURCES)}")
    parser.add_argument("--cluener-url", default=os.environ.get("CLUENER_URL", CLUENER_URL))
    parser.add_argument("--ruozhiba-url", default=os.environ.get("RUOZHIBA_URL", RUOZHIBA_URL),
                        help="base URL the two file names are appended to")
    parser.add_argument("--github-url", default=os.environ.get("GITHUB_RAW_URL", GITHUB_RAW),
                        help="base URL of the pinned huanhuan file and the schemas (`owner/repo/commit/path` appended)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--no-verify", action="store_true", help="accept files whose sha256 differs")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SOURCES]
    if unknown:
        print(f"error: `--only {','.join(unknown)}` is unknown; use any of {','.join(SOURCES)}.", file=sys.stderr)
        return 2
    drop = (lambda d: dict.fromkeys(d)) if args.no_verify else (lambda d: d)
    try:
        if "cluener" in only:
            download_cluener(args.out / "datasets" / "cluener2020", args.cluener_url, expected=drop(CLUENER_SHA256),
                             timeout=args.timeout)
        if "ruozhiba" in only:
            download_ruozhiba(args.out / "datasets" / "ruozhiba_gpt4", args.ruozhiba_url, expected=drop(RUOZHIBA_SHA256),
                              timeout=args.timeout)
        for source, files in PINNED_FILES.items():
            if source in only:
                download_pinned(args.out, files, args.github_url, verify_sha=not args.no_verify, timeout=args.timeout)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
