"""Checkpoints by Hugging Face Hub id: `owner/name` or `owner/name@revision`, into the Hub's standard cache.

    path = resolve("HuggingFaceTB/SmolLM2-135M-Instruct", progress=show)   # a snapshot folder, loadable offline

A local directory of the same name always wins. Only what a causal LM needs is fetched: config, generation
config, tokenizer files and safetensors weights (every shard an index names). Pickled weights are fetched only
with `allow_pickle`, a checkpoint's own Python files only with `trust_remote_code`.

The cache layout is huggingface_hub's (`models--owner--name/{blobs,snapshots,refs}`), so transformers,
`hf cache` and `bardterm models` all see the same files. We write each file ourselves, through huggingface_hub's
`http_get`, because huggingface_hub 2.x deletes a partial download when it is interrupted; here it is kept as
`blobs/<etag>.incomplete` and resumed with an HTTP Range request next time. A file is moved into place only
after its size and hash (sha256 for LFS files, the git blob sha1 for the rest) match what the Hub lists, so a
partial or corrupt file is never loaded.

`HF_ENDPOINT`, `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` are read at each call (huggingface_hub reads
them once, at import), so that tests and users can change them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bardterm.errors import BardtermError
from bardterm.files import atomic_write_bytes

# `owner/name` (or a legacy bare `name` such as gpt2), then optionally `@revision`.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}(?:/[A-Za-z0-9][\w.-]{0,95})?)(?:@(?P<revision>[^\s@]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_REVISION = "main"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model",
                   "chat_template.jinja", "chat_template.json")
CONFIG_FILES = ("config.json", "generation_config.json")
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str = DEFAULT_REVISION

    def __str__(self) -> str:
        return self.repo if self.revision == DEFAULT_REVISION else f"{self.repo}@{self.revision}"


@dataclass
class Progress:
    """Where a download stands, for a progress bar: bytes of this file and of the whole model."""

    repo: str
    file: str
    file_done: int
    file_total: int
    done: int
    total: int


@dataclass
class Resolved:
    path: Path
    hub_id: HubId | None = None  # None: a local directory
    notices: list[str] = field(default_factory=list)


def parse_hub_id(spec: str) -> HubId | None:
    """The Hub id `spec` names, or None if it cannot be one (a path such as ./runs/x or /tmp/x)."""
    if spec.startswith((".", "/", "~", "\\")) or spec.endswith("/"):
        return None
    match = _HUB_ID.match(spec)
    if match is None or ".." in match["repo"]:
        return None
    return HubId(match["repo"], match["revision"] or DEFAULT_REVISION)


def resolve(spec: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
            progress: Callable[[Progress], None] | None = None) -> Resolved:
    """A checkpoint directory for `spec`: a local directory if one exists, else the Hub id's cached snapshot,
    downloading what is missing. Raises BardtermError with one line on any failure."""
    local = Path(spec).expanduser()
    if local.exists():
        return Resolved(local)
    hub_id = parse_hub_id(str(spec))
    if hub_id is None:
        raise BardtermError(f"checkpoint {spec} does not exist: pass --checkpoint with a model directory or a "
                            "Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
    return download(hub_id, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress)


# -- the cache --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The Hub cache huggingface_hub uses: `HF_HUB_CACHE`, else `HF_HOME/hub`, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return constants.HF_HUB_OFFLINE if flag is None else flag.strip().lower() in ("1", "true", "yes", "on")


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def repo_folder(repo: str) -> Path:
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def hub_id_of(path: str | Path) -> str | None:
    """`owner/name` if `path` is a snapshot folder in the Hub cache, else None."""
    parts = Path(path).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return None


def display_name(path: str | Path) -> str:
    """What to call a checkpoint on screen: its Hub id, or its directory's name."""
    return hub_id_of(path) or Path(path).name


def cached_snapshot(hub_id: HubId) -> Path | None:
    """The complete cached snapshot for `hub_id`, found without the network, or None."""
    folder = repo_folder(hub_id.repo)
    commit = hub_id.revision if _COMMIT.match(hub_id.revision) else None
    if commit is None:
        try:
            commit = (folder / "refs" / hub_id.revision).read_text().strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / commit
    return snapshot if complete(snapshot) else None


def complete(snapshot: Path) -> bool:
    """Whether a folder holds a config and every weight file it needs (every shard its index names)."""
    if not (snapshot / "config.json").is_file():
        return False
    for index in (SAFETENSORS_INDEX, PICKLE_INDEX):
        if (snapshot / index).is_file():
            try:
                shards = set(json.loads((snapshot / index).read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError):
                return False
            return all((snapshot / shard).is_file() for shard in shards)
    return any(snapshot.glob("*.safetensors")) or any(snapshot.glob("pytorch_model*.bin"))


# -- downloading ------------------------------------------------------------------------------------------


def download(hub_id: HubId, *, allow_pickle: bool = False, trust_remote_code: bool = False,
             progress: Callable[[Progress], None] | None = None) -> Resolved:
    """Fetch what `hub_id` needs into the cache (resuming partial files); the snapshot folder."""
    cached = cached_snapshot(hub_id)
    if offline():
        if cached is not None:
            return Resolved(cached, hub_id)
        raise BardtermError(f"{hub_id} is not in the Hugging Face cache ({cache_dir()}) and offline mode is on "
                            "(HF_HUB_OFFLINE): unset HF_HUB_OFFLINE and connect once to download it, or pass a "
                            "local model directory")
    if cached is not None and _COMMIT.match(hub_id.revision):
        return Resolved(cached, hub_id)  # a commit never changes: nothing to ask the Hub
    try:
        info = _model_info(hub_id)
    except _Unreachable as error:
        if cached is not None:
            return Resolved(cached, hub_id, [f"the Hub is unreachable ({error}): using the cached copy of {hub_id}"])
        raise BardtermError(f"cannot download {hub_id}: the Hub ({endpoint()}) is unreachable ({error}) and the "
                            f"model is not in the cache ({cache_dir()}); connect to the internet and retry, or "
                            "pass a local model directory") from None
    files = {s.rfilename: s for s in info.siblings or [] if "/" not in s.rfilename}
    wanted = _wanted_files(hub_id, files, allow_pickle, trust_remote_code)
    folder = repo_folder(hub_id.repo)
    snapshot = folder / "snapshots" / info.sha
    fetch = _Fetcher(hub_id, info.sha, folder, files, progress)
    index = next((i for i in (SAFETENSORS_INDEX, PICKLE_INDEX) if i in wanted), None)
    if index is not None:  # the shards it names are the weights: fetch it first to know them
        fetch.total = sum(files[name].size or 0 for name in wanted)
        with _quiet_hub_logs():
            fetch(index)
        try:
            shards = sorted(set(json.loads((snapshot / index).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            raise BardtermError(f"{hub_id}'s {index} is not a valid weight index ({error})") from None
        missing = [s for s in shards if s not in files]
        if missing:
            raise BardtermError(f"{hub_id}'s {index} names {missing[0]}, which the repository does not have")
        wanted = [name for name in wanted if name != index] + shards
    fetch.total = sum(files[name].size or 0 for name in wanted) + fetch.done
    with _quiet_hub_logs():  # its retry warnings would garble the TUI; failures reach the user as one line
        for name in wanted:
            fetch(name)
    if hub_id.revision != info.sha:
        _write_ref(folder, hub_id.revision, info.sha)
    return Resolved(snapshot, hub_id)


class _Unreachable(Exception):
    pass


def _model_info(hub_id: HubId):
    """The repository's commit and file list (sizes and hashes) at the revision, in one request."""
    import httpx2  # what huggingface_hub 2.x speaks HTTP with
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    try:
        return HfApi(endpoint=endpoint()).model_info(hub_id.repo, revision=hub_id.revision, files_metadata=True,
                                                      timeout=15)
    except GatedRepoError:
        raise BardtermError(f"{hub_id.repo} is gated: accept its terms on the Hub and log in with `hf auth login`, "
                            "then retry") from None
    except RevisionNotFoundError:
        raise BardtermError(f"{hub_id.repo} has no revision {hub_id.revision!r}: check the name after '@'") from None
    except RepositoryNotFoundError:
        raise BardtermError(f"no model {hub_id.repo} on the Hub ({endpoint()}), and no local directory of that "
                            "name: check the id (owner/name), or log in with `hf auth login` if it is private") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status is not None and status >= 500:
            raise _Unreachable(f"HTTP {status}") from None
        raise BardtermError(f"the Hub refused {hub_id} (HTTP {status}): {str(error).splitlines()[0]}") from None
    except (httpx2.TransportError, OSError) as error:
        raise _Unreachable(type(error).__name__) from None


def _wanted_files(hub_id: HubId, files: dict, allow_pickle: bool, trust_remote_code: bool) -> list[str]:
    if "config.json" not in files:
        raise BardtermError(f"{hub_id} has no config.json: it is not a transformers model bardterm can load")
    wanted = [name for name in (*CONFIG_FILES, *TOKENIZER_FILES) if name in files]
    if SAFETENSORS_INDEX in files:
        wanted.append(SAFETENSORS_INDEX)
    elif "model.safetensors" in files:
        wanted.append("model.safetensors")
    else:
        pickled = [n for n in files if re.fullmatch(r"pytorch_model(-\d+-of-\d+)?\.bin", n)]
        if not pickled:
            raise BardtermError(f"{hub_id} holds no weights transformers can load (no model.safetensors)")
        if not allow_pickle:
            raise BardtermError(f"{hub_id} has only pickled weights ({pickled[0]}), which can run code when loaded: "
                                "pass --allow-pickle only if you trust its author, or pick a safetensors model")
        wanted += [PICKLE_INDEX] if PICKLE_INDEX in files else pickled
    if trust_remote_code:
        wanted += sorted(n for n in files if n.endswith(".py"))
    return wanted


class _Fetcher:
    """Fetches files of one commit into the cache, one at a time, reporting bytes to `progress`."""

    def __init__(self, hub_id: HubId, commit: str, folder: Path, files: dict, progress):
        self.hub_id, self.commit, self.folder, self.files = hub_id, commit, folder, files
        self.progress = progress
        self.done = 0
        self.total = 0

    def __call__(self, name: str) -> None:
        from huggingface_hub.utils import WeakFileLock

        sibling = self.files[name]
        etag = sibling.lfs.sha256 if sibling.lfs is not None else sibling.blob_id
        size = sibling.lfs.size if sibling.lfs is not None else sibling.size
        if not etag or size is None:
            raise BardtermError(f"the Hub lists no hash for {self.hub_id}'s {name}: cannot check it, so not "
                                "downloading it")
        blob = self.folder / "blobs" / etag
        pointer = self.folder / "snapshots" / self.commit / name
        lock = self.folder.parent / ".locks" / self.folder.name / f"{etag}.lock"  # the lock huggingface_hub takes
        for directory in (blob.parent, pointer.parent, lock.parent):
            directory.mkdir(parents=True, exist_ok=True)
        with WeakFileLock(lock):  # one writer per file, across processes
            if not blob.is_file() or blob.stat().st_size != size:
                self._get(name, blob, etag, size)
            else:
                self._report(name, size, size)
        self.done += size
        if not pointer.exists():
            _link(blob, pointer)

    def _get(self, name: str, blob: Path, etag: str, size: int) -> None:
        """Append to `blob.incomplete` from where it ends (an HTTP Range request), check it, move it in place."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        partial = blob.with_name(blob.name + ".incomplete")
        have = partial.stat().st_size if partial.exists() else 0
        if have > size:
            partial.unlink()
            have = 0
        url = hf_hub_url(self.hub_id.repo, name, revision=self.commit, endpoint=endpoint())
        try:
            with partial.open("ab") as handle:
                http_get(url, handle, resume_size=have, headers=build_hf_headers(), expected_size=size,
                         displayed_filename=name,
                         tqdm_class=functools.partial(_Bar, lambda n: self._report(name, n, size)))
        except BardtermError:
            raise
        except Exception as error:  # network trouble: the partial file stays, to resume next time
            from huggingface_hub.errors import HfHubHTTPError

            status = getattr(getattr(error, "response", None), "status_code", None)
            if isinstance(error, HfHubHTTPError) and status is not None and status < 500:
                raise BardtermError(f"cannot download {self.hub_id}'s {name}: HTTP {status} from "
                                    f"{endpoint()}") from None
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise BardtermError(f"download of {self.hub_id}'s {name} was cut off ({first[:120]}): run the same "
                                "command again to resume it") from None
        actual = _file_hash(partial, "sha256" if len(etag) == 64 else "git-sha1")
        if partial.stat().st_size != size or actual != etag:
            partial.unlink()
            raise BardtermError(f"{self.hub_id}'s {name} arrived corrupt (its hash does not match the Hub's): it "
                                "was discarded; run the same command again to download it afresh")
        os.replace(partial, blob)

    def _report(self, name: str, file_done: int, file_total: int) -> None:
        if self.progress is not None:
            self.progress(Progress(str(self.hub_id), name, file_done, file_total, self.done + file_done,
                                   max(self.total, self.done + file_done)))


class _Bar:
    """A stand-in for tqdm that `http_get` drives: passes the bytes so far to a callback, draws nothing."""

    def __init__(self, callback, *, initial: int = 0, **_):
        self.callback, self.n = callback, initial
        callback(self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.callback(self.n)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextlib.contextmanager
def _quiet_hub_logs():
    from huggingface_hub.utils import logging as hub_logging

    logger = hub_logging.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def _file_hash(path: Path, kind: str) -> str:
    """sha256 of the file, or the git blob sha1 (`sha1("blob <size>\\0" + content)`), which the Hub lists."""
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _link(blob: Path, pointer: Path) -> None:
    """snapshots/<commit>/<file> -> ../../blobs/<etag>, as huggingface_hub does; a copy where links fail."""
    temp = pointer.with_name(pointer.name + ".tmp-link")
    temp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), temp)
    except OSError:
        shutil.copyfile(blob, temp)
    os.replace(temp, pointer)


def _write_ref(folder: Path, revision: str, commit: str) -> None:
    ref = folder / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(ref, commit.encode())
