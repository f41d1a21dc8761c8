"""`pipelines.data.download` against files served from 127.0.0.1 (no internet needed)."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import realdata
from realdata import shared

from pipelines.common.paths import SHARED
from pipelines.data import download
from pipelines.data.download import DownloadError

FAKE = {"train.json": b'{"text": "a", "label": {}}\n', "dev.json": b'{"text": "b", "label": {}}\n',
        "test.json": b'{"id": 0, "text": "c"}\n'}
FAKE_SHA = {name: hashlib.sha256(data).hexdigest() for name, data in FAKE.items()}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of an HTTP server on a free loopback port."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def make_zip(files: dict[str, bytes], prefix: str = "cluener_public/") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(prefix + name, data)
    return buf.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cluener_zip_is_fetched_verified_and_unzipped(server, tmp_path, capsys):
    root, url = server
    (root / "cluener_public.zip").write_bytes(make_zip({**FAKE, "README.md": b"readme\n"}))
    out = tmp_path / "dl"
    files = download.download_cluener(out, f"{url}/cluener_public.zip", expected=FAKE_SHA)
    assert sorted(p.name for p in files) == ["README.md", "dev.json", "test.json", "train.json"]
    assert all((out / n).read_bytes() == d for n, d in FAKE.items())
    assert "sha256 verified" in capsys.readouterr().out
    # present and verified: no request at all (the URL is dead)
    download.download_cluener(out, f"http://127.0.0.1:{closed_port()}/x.zip", expected=FAKE_SHA)
    assert "already holds verified" in capsys.readouterr().out


@pytest.mark.parametrize("archive, path, words", [
    (make_zip({**FAKE, "train.json": b"changed\n"}), "cluener_public.zip",
     "`train.json` from `{url}/cluener_public.zip` has sha256"),
    (make_zip({"train.json": FAKE["train.json"]}), "cluener_public.zip", "holds no `dev.json`, `test.json`"),
    (b"not a zip", "cluener_public.zip", "is not a zip archive"),
    (None, "missing.zip", "`{url}/missing.zip` answered HTTP 404"),
])
def test_cluener_bad_downloads_fail_in_one_sentence(server, tmp_path, archive, path, words):
    root, url = server
    if archive is not None:
        (root / path).write_bytes(archive)
    with pytest.raises(DownloadError) as e:
        download.download_cluener(tmp_path / "dl", f"{url}/{path}", expected=FAKE_SHA)
    assert words.format(url=url) in str(e.value) and str(e.value).endswith(".")
    assert not (tmp_path / "dl" / "train.json").exists()  # nothing half-written


def test_offline_is_one_sentence_and_nonzero(tmp_path, capsys):
    port = closed_port()
    rc = download.main(["--out", str(tmp_path), "--cluener-url", f"http://127.0.0.1:{port}/cluener_public.zip",
                        "--timeout", "5"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert err == (f"error: cannot reach `127.0.0.1:{port}` (ConnectError); `make download` needs a network "
                   "connection, or copy the files into the download folder yourself.\n")


def test_main_with_env_url_and_no_verify(server, tmp_path, monkeypatch, capsys):
    root, url = server
    (root / "c.zip").write_bytes(make_zip(FAKE, prefix=""))
    monkeypatch.setenv("CLUENER_URL", f"{url}/c.zip")
    assert download.main(["--out", str(tmp_path), "--only", "cluener", "--no-verify"]) == 0
    assert (tmp_path / "datasets" / "cluener2020" / "dev.json").read_bytes() == FAKE["dev.json"]
    # with verification on, the official checksums reject the fake files
    assert download.main(["--out", str(tmp_path / "v"), "--only", "cluener"]) == 1
    assert "has sha256" in capsys.readouterr().err


def test_ruozhiba_files_are_fetched_and_verified(server, tmp_path):
    root, url = server
    data = {"a.json": b'[{"instruction": "q", "input": "", "output": "a"}]\n', "b.json": b"[]\n"}
    for name, body in data.items():
        (root / name).write_bytes(body)
    expected = {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}
    files = download.download_ruozhiba(tmp_path / "r", url + "/", expected=expected)
    assert [p.read_bytes() for p in files] == list(data.values())
    with pytest.raises(DownloadError, match="`a.json` from .* has sha256"):
        download.download_ruozhiba(tmp_path / "r2", url, expected={"a.json": "0" * 64})


def test_unknown_source_is_refused(capsys):
    assert download.main(["--only", "cluener,imdb"]) == 2
    assert "`--only imdb` is unknown" in capsys.readouterr().err


@realdata.real
def test_pinned_checksums_accept_the_reference_copies(server, tmp_path, capsys):
    """The real files, zipped and served locally, pass `make download`'s own checksums end to end."""
    root, url = server
    real = {n: shared("cluener2020", n).read_bytes() for n in ("train.json", "dev.json", "test.json", "README.md")}
    (root / "cluener_public.zip").write_bytes(make_zip(real))
    for name in download.RUOZHIBA_SHA256:
        (root / name).write_bytes(shared("ruozhiba_gpt4", name).read_bytes())
    for files in download.PINNED_FILES.values():  # the pinned files under their GitHub paths
        for local, (remote, _) in files.items():
            (root / remote).parent.mkdir(parents=True, exist_ok=True)
            (root / remote).write_bytes(SHARED.joinpath(local).read_bytes())
    assert download.main(["--out", str(tmp_path), "--cluener-url", f"{url}/cluener_public.zip",
                          "--ruozhiba-url", url, "--github-url", url]) == 0
    data = tmp_path / "datasets"
    assert (data / "cluener2020" / "train.json").read_bytes() == real["train.json"]
    assert len((data / "cluener2020" / "train.json").read_text().splitlines()) == 10748
    assert all((data / "ruozhiba_gpt4" / n).is_file() for n in download.RUOZHIBA_SHA256)
    # the folder is one that `make test-real` accepts as PIPELINES_SHARED
    assert (data / "huanhuan" / "huanhuan.json").is_file()
    assert (tmp_path / "deploy" / "compose-spec" / "compose-spec.json").is_file()
    assert (tmp_path / "deploy" / "vllm-stack" / "values.schema.json").is_file()
    assert not realdata.missing(tmp_path)
