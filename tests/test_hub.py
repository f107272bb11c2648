"""Loading by Hub id: against a Hub-like server on 127.0.0.1 (tests/hub_server.py), never the real Hub."""

from __future__ import annotations

import json
import socket

import pytest

from bardterm import hub
from bardterm.errors import BardtermError
from hub_server import HubServer

REPO = "tiny-org/tiny-chat"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer, gpt2):
    folder = tmp_path_factory.mktemp("hubmodel")
    gpt2.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("# tiny\n")
    (folder / "pytorch_model.bin").write_bytes(b"pickled decoy: never fetched")
    (folder / "flax_model.msgpack").write_bytes(b"not needed")
    return folder


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory, tokenizer, gpt2):
    folder = tmp_path_factory.mktemp("sharded")
    gpt2.save_pretrained(folder, max_shard_size="30KB")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def server(monkeypatch, tmp_path, model_folder):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_IMPLICIT_TOKEN", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 512)  # a tiny file in many chunks, as a big one arrives
    with HubServer() as server:
        server.add_repo(REPO, model_folder)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def file_requests(server) -> list[str]:
    return [path.rsplit("/", 1)[-1] for method, path, _ in server.requests if "/resolve/" in path]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parse_hub_id():
    assert hub.parse_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct") == hub.HubId("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub.parse_hub_id("gpt2") == hub.HubId("gpt2")
    assert hub.parse_hub_id("owner/name@v1.0") == hub.HubId("owner/name", "v1.0")
    for path in ("./runs/x", "/tmp/x", "~/x", "a/b/c", "owner/name/", "../x", "a b"):
        assert hub.parse_hub_id(path) is None, path


def test_download_fetches_only_what_a_model_needs_and_loads(server, model_folder):
    from bardterm.models import load_checkpoint

    events = []
    path = hub.resolve(REPO, progress=events.append).path
    assert sorted(file_requests(server)) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    assert path == hub.cache_dir() / "models--tiny-org--tiny-chat" / "snapshots" / server.repos[REPO]["sha"]
    assert (path.parent.parent / "refs" / "main").read_text() == server.repos[REPO]["sha"]
    assert (path / "model.safetensors").is_symlink()  # the standard cache: snapshot links to blobs
    assert (path / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()
    total = sum((model_folder / f).stat().st_size for f in file_requests(server))
    assert events[-1].done == events[-1].total == total
    assert any(0 < e.file_done < e.file_total for e in events if e.file == "model.safetensors")
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.model.config.n_layer == 2
    assert hub.display_name(path) == REPO

    before = len(file_requests(server))
    assert hub.resolve(REPO).path == path  # cached: the Hub is asked for the commit, no file is fetched again
    assert len(file_requests(server)) == before


def test_sharded_weights_fetch_every_shard(server, sharded_folder):
    server.add_repo("tiny-org/sharded", sharded_folder)
    path = hub.resolve("tiny-org/sharded").path
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    assert all((path / shard).is_file() for shard in shards)
    from bardterm.models import load_checkpoint

    assert load_checkpoint(path, device="cpu").model.config.n_layer == 2


def test_a_cut_download_resumes_in_the_same_run(server, model_folder):
    server.cut["model.safetensors"] = 1024
    server.break_after_cut = False
    path = hub.resolve(REPO).path
    ranges = [r for _, p, r in server.requests if p.endswith("model.safetensors")]
    assert ranges == [None, "bytes=1024-"]
    assert (path / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()


def test_an_interrupted_download_resumes_next_time_and_is_never_loaded_half_done(server, model_folder):
    server.cut["model.safetensors"] = 1024
    with pytest.raises(BardtermError, match="cut off.*run the same command again"):
        hub.resolve(REPO)
    folder = hub.repo_folder(REPO)
    partial = list((folder / "blobs").glob("*.incomplete"))
    assert [p.stat().st_size for p in partial] == [1024]
    assert hub.cached_snapshot(hub.HubId(REPO)) is None  # the weights are not in place: nothing loads
    monkeypatch_offline = pytest.MonkeyPatch()
    monkeypatch_offline.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BardtermError, match="not in the Hugging Face cache"):
        hub.resolve(REPO)
    monkeypatch_offline.undo()

    server.heal()
    server.requests.clear()
    path = hub.resolve(REPO).path
    assert [r for _, p, r in server.requests if p.endswith("model.safetensors")] == ["bytes=1024-"]
    assert (path / "model.safetensors").read_bytes() == (model_folder / "model.safetensors").read_bytes()
    assert not list((folder / "blobs").glob("*.incomplete"))


def test_a_corrupt_file_is_discarded_not_loaded(server):
    server.corrupt.add("model.safetensors")
    with pytest.raises(BardtermError, match="arrived corrupt"):
        hub.resolve(REPO)
    folder = hub.repo_folder(REPO)
    assert not [p for p in (folder / "blobs").iterdir() if p.stat().st_size > 10_000]  # neither blob nor partial
    assert hub.cached_snapshot(hub.HubId(REPO)) is None
    server.corrupt.clear()
    assert (hub.resolve(REPO).path / "model.safetensors").is_file()


def test_unknown_model_missing_file_and_revision_are_one_line_each(server):
    with pytest.raises(BardtermError, match="no model tiny-org/nope on the Hub"):
        hub.resolve("tiny-org/nope")
    with pytest.raises(BardtermError, match="has no revision 'v9'"):
        hub.resolve(REPO + "@v9")
    server.missing.add("tokenizer.json")
    with pytest.raises(BardtermError, match="tokenizer.json: HTTP 404"):
        hub.resolve(REPO)


def test_offline_cache_hit_touches_no_network(server, monkeypatch):
    path = hub.resolve(REPO).path
    server.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve(REPO).path == path
    assert server.requests == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # the network is down
    resolved = hub.resolve(REPO)
    assert resolved.path == path and "unreachable" in resolved.notices[0]
    sha = path.name
    assert hub.resolve(f"{REPO}@{sha}").path == path  # a commit is never re-checked


def test_no_network_and_not_cached_is_one_clear_line(server, monkeypatch, capsys):
    from bardterm.cli import main

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    code = main(["generate", "hi", "--checkpoint", REPO])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "is unreachable" in err[0] and "not in the cache" in err[0] and "connect" in err[0]


def test_pickled_only_repository_needs_allow_pickle(server, tmp_path):
    server.add_repo("tiny-org/pickled", files={"config.json": b'{"model_type": "gpt2"}',
                                               "pytorch_model.bin": b"pickle bytes"})
    with pytest.raises(BardtermError, match="only pickled weights.*--allow-pickle"):
        hub.resolve("tiny-org/pickled")
    assert "pytorch_model.bin" not in file_requests(server)
    path = hub.resolve("tiny-org/pickled", allow_pickle=True).path
    assert (path / "pytorch_model.bin").read_bytes() == b"pickle bytes"


def test_remote_code_files_only_when_trusted(server, model_folder):
    server.add_repo("tiny-org/custom", files={**{p.name: p.read_bytes() for p in model_folder.iterdir()},
                                              "modeling_custom.py": b"print('code')\n"})
    assert not (hub.resolve("tiny-org/custom").path / "modeling_custom.py").exists()
    assert (hub.resolve("tiny-org/custom", trust_remote_code=True).path / "modeling_custom.py").exists()


def test_a_local_directory_of_that_name_wins(server, monkeypatch, tmp_path, tiny_checkpoint):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_checkpoint, tmp_path / REPO)
    assert hub.resolve(REPO).path.resolve() == tmp_path / REPO
    assert server.requests == []


def test_generate_and_eval_take_a_hub_id(server, capsys, tmp_path):
    from bardterm.cli import main

    code = main(["generate", "To be", "--checkpoint", REPO, "--decoder", "greedy", "--max-new-tokens", "3",
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["stats"]["tokens"] == 3
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question.\n" * 40)
    assert main(["eval", "--checkpoint", REPO, "--dataset", str(data), "--json"]) == 0


def test_models_lists_cache_and_local_runs(server, capsys):
    from bardterm.cli import main

    hub.resolve(REPO)
    assert main(["models", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    cached = entries[REPO]
    assert cached["where"] == "cache" and cached["architecture"] == "GPT2LMHeadModel"
    assert cached["params"] > 0 and cached["size_bytes"] > 0
    assert entries["checkpoints/shakespeare"]["where"] == "local"
    assert main(["models"]) == 0
    assert REPO in capsys.readouterr().out


def test_generate_shows_a_rich_download_bar_on_stderr(server, capsys, monkeypatch):
    from bardterm.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # one line, so the bytes read whole
    code = main(["generate", "To be", "--checkpoint", REPO, "--decoder", "greedy", "--max-new-tokens", "1",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["stats"]["tokens"] == 1  # the bar never mixes into stdout
    fetched = set(file_requests(server))
    total = sum(len(data) for name, data in server.repos[REPO]["files"].items() if name in fetched)
    bar = [line for line in captured.err.splitlines() if line.startswith(f"{REPO} ")]
    assert len(bar) == 1, captured.err  # the final state of the bar: which model, file, bar, bytes done/total
    assert "━" in bar[0] and f"{total / 1000:.1f}/{total / 1000:.1f} kB" in bar[0], bar[0]
