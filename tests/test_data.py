"""Datasets: tiny_shakespeare download (against a server on 127.0.0.1), local copies, splits, bad input."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from bardterm import data
from bardterm.errors import BardtermError

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"


@pytest.fixture(scope="module")
def corpus_bytes() -> bytes:
    if not CORPUS.is_file():
        pytest.skip(f"tiny_shakespeare test copy not found at {CORPUS}")
    return CORPUS.read_bytes()


@pytest.fixture(autouse=True)
def no_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("BARDTERM_CACHE_DIR", str(tmp_path / "cache"))


class _Server:
    """Serves fixed bodies on 127.0.0.1: /good, /corrupt, /truncated (promises more bytes than it sends)."""

    def __init__(self, routes: dict[str, tuple[bytes, int | None]]):
        routes_ = routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path not in routes_:
                    self.send_response(404)
                    self.end_headers()
                    return
                body, length = routes_[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                if length is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(corpus_bytes):
    corrupt = bytearray(corpus_bytes)
    corrupt[1000] ^= 0x20
    with _Server({
        "/good": (corpus_bytes, None),
        "/corrupt": (bytes(corrupt), None),
        "/truncated": (corpus_bytes[:5000], len(corpus_bytes)),
    }) as s:
        yield s


def test_download_verifies_and_writes_atomically(server, tmp_path, corpus_bytes):
    dest = tmp_path / "dl" / "input.txt"
    got = data.download(server.url("/good"), dest, data.TINY_SHAKESPEARE_SHA256, progress=True)
    assert got == dest
    assert dest.read_bytes() == corpus_bytes
    assert [p.name for p in dest.parent.iterdir()] == ["input.txt"]  # no temp file left


@pytest.mark.parametrize("route", ["/corrupt", "/truncated"])
def test_corrupt_or_partial_download_is_never_used(server, tmp_path, route):
    dest = tmp_path / "dl" / "input.txt"
    with pytest.raises(BardtermError, match="corrupt|broke off|incomplete"):
        data.download(server.url(route), dest, data.TINY_SHAKESPEARE_SHA256, progress=False)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_corrupt_download_keeps_previous_good_file(server, tmp_path, corpus_bytes):
    dest = tmp_path / "input.txt"
    dest.write_bytes(b"previous")
    with pytest.raises(BardtermError):
        data.download(server.url("/corrupt"), dest, data.TINY_SHAKESPEARE_SHA256, progress=False)
    assert dest.read_bytes() == b"previous"


def test_unreachable_server_is_one_clear_line(tmp_path):
    with pytest.raises(BardtermError) as info:
        data.download("http://127.0.0.1:9/none", tmp_path / "x.txt", "0" * 64, progress=False, timeout=2)
    message = str(info.value)
    assert "\n" not in message and "--data-file" in message and data.ENV_VAR in message
    assert not (tmp_path / "x.txt").exists()


def test_first_use_downloads_into_cache_then_reuses_it(server, tmp_path, corpus_bytes):
    path = data.tiny_shakespeare_path(url=server.url("/good"), progress=False)
    assert path == tmp_path / "cache" / "tiny_shakespeare" / "input.txt"
    assert path.read_bytes() == corpus_bytes
    # Second use: the cache is verified and used; a broken URL proves no network access happened.
    assert data.tiny_shakespeare_path(url="http://127.0.0.1:9/unused", progress=False) == path


def test_corrupt_cache_is_replaced(server, tmp_path, corpus_bytes):
    cached = tmp_path / "cache" / "tiny_shakespeare" / "input.txt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(corpus_bytes[:100])
    path = data.tiny_shakespeare_path(url=server.url("/good"), progress=False)
    assert path.read_bytes() == corpus_bytes


def test_env_var_and_data_file_point_at_local_copy(monkeypatch, corpus_bytes):
    assert data.tiny_shakespeare_path(str(CORPUS)) == CORPUS
    monkeypatch.setenv(data.ENV_VAR, str(CORPUS))
    assert data.tiny_shakespeare_path(url="http://127.0.0.1:9/unused") == CORPUS


def test_local_copy_with_wrong_hash_is_refused(tmp_path):
    fake = tmp_path / "input.txt"
    fake.write_text("not shakespeare")
    with pytest.raises(BardtermError, match="is not tiny_shakespeare"):
        data.tiny_shakespeare_path(str(fake))
    with pytest.raises(BardtermError, match="not a file"):
        data.tiny_shakespeare_path(str(tmp_path / "missing.txt"))


def test_tiny_shakespeare_splits_match_hugging_face(corpus_bytes):
    ds = data.load_dataset("tiny_shakespeare", data_file=str(CORPUS))
    assert ds.sha256 == data.TINY_SHAKESPEARE_SHA256 == hashlib.sha256(corpus_bytes).hexdigest()
    lengths = {k: len(v) for k, v in ds.splits.items()}
    assert lengths == {"train": 1_003_854, "validation": 55_770, "test": 55_770}
    text = corpus_bytes.decode()
    assert ds.split("train") + ds.split("validation") + ds.split("test") == text
    assert ds.split("valtest") == text[1_003_854:] and len(ds.split("valtest")) == 111_540
    assert ds.split("validation").startswith(text[1_003_854:1_003_900])
    with pytest.raises(BardtermError, match="unknown split"):
        ds.split("dev")


def test_local_file_and_folder(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x" * 1000)
    ds = data.load_dataset(str(f))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 900, "validation": 50, "test": 50}
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "2.txt").write_text("second")
    (folder / "1.txt").write_text("first")
    (folder / "skip.md").write_text("ignored")
    ds = data.load_dataset(str(folder))
    assert "".join(ds.splits.values()) == "first\n\nsecond"


@pytest.mark.parametrize("case, pattern", [
    ("unknown", "unknown dataset 'tiny_shakespear'"),
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("whitespace", "is empty"),
    ("binary", "is not UTF-8"),
    ("empty_folder", "no \\*.txt files"),
])
def test_bad_datasets_are_one_clear_line(tmp_path, case, pattern):
    spec = {
        "unknown": "tiny_shakespear",
        "missing": str(tmp_path / "nope.txt"),
        "empty": str(tmp_path / "empty.txt"),
        "whitespace": str(tmp_path / "ws.txt"),
        "binary": str(tmp_path / "latin1.txt"),
        "empty_folder": str(tmp_path / "folder"),
    }[case]
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ws.txt").write_text("  \n\n ")
    (tmp_path / "latin1.txt").write_bytes("café olé".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(BardtermError, match=pattern) as info:
        data.load_dataset(spec)
    assert "\n" not in str(info.value)


def test_hf_dataset_without_library_or_network_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(BardtermError, match="needs the `datasets` library") as info:
        data.load_dataset("hf:Trelis/tiny-shakespeare")
    assert "\n" not in str(info.value)
    with pytest.raises(BardtermError, match="hf:OWNER/NAME"):
        data.load_dataset("hf:noslash")
