"""Datasets for `bardterm train` and `bardterm eval`: text in, (train, validation, test) text out.

A dataset spec is one of
- `tiny_shakespeare`: built in. The 1,115,394-character corpus from karpathy/char-rnn, downloaded once into
  the user cache (sha256-verified, written atomically), or read from a local copy given by `--data-file` or
  the `BARDTERM_TINY_SHAKESPEARE` environment variable. Splits are Hugging Face's: train [0, 1003854),
  validation [1003854, 1059624), test [1059624, 1115394).
- a local UTF-8 text file, or a folder of `*.txt` files (sorted by name, joined with a blank line): the first
  90% of characters train, the next 5% validation, the last 5% test.
- `hf:OWNER/NAME`: a Hugging Face Hub dataset, through the `datasets` library when it is installed and online.
  Its train/validation/test splits are used if it has them (text joined from the first string column),
  else its train split is cut 90/5/5 like a local file.

Only the standard library is imported at module level, so the CLI starts fast.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bardterm.errors import BardtermError

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_CHARS = 1_115_394
TINY_SHAKESPEARE_SPLITS = {
    "train": (0, 1_003_854),
    "validation": (1_003_854, 1_059_624),
    "test": (1_059_624, 1_115_394),
}
ENV_VAR = "BARDTERM_TINY_SHAKESPEARE"
BUILTIN = ("tiny_shakespeare",)
SPLITS = ("train", "validation", "test", "valtest")


@dataclass
class Dataset:
    """A corpus cut into splits. `sha256` identifies the exact text (for tiny_shakespeare, the file's hash)."""

    name: str
    splits: dict[str, str]
    sha256: str
    source: str = ""
    meta: dict = field(default_factory=dict)

    def split(self, name: str) -> str:
        """The text of one split; `valtest` is validation followed by test (nanoGPT's "val")."""
        if name == "valtest":
            return self.splits["validation"] + self.splits["test"]
        if name not in self.splits:
            raise BardtermError(
                f"unknown split {name!r} for dataset {self.name!r}; use one of {', '.join(SPLITS)}"
            )
        return self.splits[name]


def cache_dir() -> Path:
    override = os.environ.get("BARDTERM_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("bardterm"))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, *, timeout: float = 30.0, progress: bool = True) -> Path:
    """Download `url` to `dest` with a progress bar; verify sha256; write atomically.

    The bytes go to a temporary file beside `dest`, which replaces `dest` (os.replace) only once the hash
    matches. A partial or corrupt download is deleted and never used.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as error:
                raise BardtermError(
                    f"could not download {url} ({_reason(error)}); check your connection, or point "
                    f"--data-file or ${ENV_VAR} at a local copy of the file"
                ) from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with _progress(progress, total, f"downloading {dest.name}") as advance:
                    while True:
                        try:
                            block = response.read(1 << 16)
                        except OSError as error:
                            raise BardtermError(
                                f"download of {url} broke off ({_reason(error)}); run the command again, or "
                                f"point --data-file or ${ENV_VAR} at a local copy"
                            ) from None
                        if not block:
                            break
                        out.write(block)
                        digest.update(block)
                        advance(len(block))
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256:
            raise BardtermError(
                f"download of {url} is corrupt or incomplete (sha256 {got[:12]}…, expected {sha256[:12]}…); "
                f"it was discarded; run the command again, or point --data-file or ${ENV_VAR} at a good copy"
            )
        os.replace(tmp_name, dest)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return dest


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return str(reason).strip() or type(error).__name__


class _progress:
    """A rich download bar, or nothing when disabled."""

    def __init__(self, enabled: bool, total: int | None, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self._progress.__enter__()
        task = self._progress.add_task(self.label, total=self.total)
        return lambda n: self._progress.advance(task, n)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def tiny_shakespeare_path(data_file: str | None = None, *, url: str = TINY_SHAKESPEARE_URL,
                          progress: bool = True) -> Path:
    """Path of a verified tiny_shakespeare: `data_file`, else $BARDTERM_TINY_SHAKESPEARE, else the cache
    (downloading it there on first use)."""
    local = data_file or os.environ.get(ENV_VAR)
    if local:
        path = Path(local).expanduser()
        origin = "--data-file" if data_file else f"${ENV_VAR}"
        if not path.is_file():
            raise BardtermError(f"{origin} points at {path}, which is not a file; fix the path or unset it")
        got = sha256_file(path)
        if got != TINY_SHAKESPEARE_SHA256:
            raise BardtermError(
                f"{path} (from {origin}) is not tiny_shakespeare: sha256 {got[:12]}…, expected "
                f"{TINY_SHAKESPEARE_SHA256[:12]}…; point it at the char-rnn input.txt, or use --dataset {path} "
                "to train on it as a plain text file"
            )
        return path
    cached = cache_dir() / "tiny_shakespeare" / "input.txt"
    if cached.is_file() and sha256_file(cached) == TINY_SHAKESPEARE_SHA256:
        return cached
    return download(url, cached, TINY_SHAKESPEARE_SHA256, progress=progress)


def read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BardtermError(f"cannot read {path}: {error.strerror or error}; check the path and permissions")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BardtermError(
            f"{path} is not UTF-8 text (bad byte at offset {error.start}); convert it, e.g. with "
            f"`iconv -t UTF-8`, or pick another file"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def split_fractions(text: str, train: float = 0.9, validation: float = 0.05) -> dict[str, str]:
    n = len(text)
    a = int(n * train)
    b = a + int(n * validation)
    return {"train": text[:a], "validation": text[a:b], "test": text[b:]}


def load_dataset(spec: str, *, data_file: str | None = None, progress: bool = True) -> Dataset:
    """Resolve a dataset spec (see the module docstring) to its splits. Errors are one-line BardtermErrors."""
    if not spec or not str(spec).strip():
        raise BardtermError("no dataset given; use --dataset tiny_shakespeare, a text file, a folder or hf:OWNER/NAME")
    spec = str(spec)
    if spec == "tiny_shakespeare":
        path = tiny_shakespeare_path(data_file, progress=progress)
        text = read_text_file(path)
        splits = {name: text[a:b] for name, (a, b) in TINY_SHAKESPEARE_SPLITS.items()}
        return Dataset("tiny_shakespeare", splits, TINY_SHAKESPEARE_SHA256, source=str(path))
    if spec.startswith("hf:"):
        return _load_hf(spec[3:])
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise BardtermError(f"folder {path} holds no *.txt files; add some text files or pick another folder")
        text = "\n\n".join(read_text_file(p) for p in files)
        kind = f"{len(files)} files"
    elif path.is_file():
        text = read_text_file(path)
        kind = "file"
    else:
        if os.sep in spec or spec.endswith(".txt") or path.suffix:
            raise BardtermError(f"dataset file {spec} does not exist; check the path")
        raise BardtermError(
            f"unknown dataset {spec!r}; use tiny_shakespeare, a path to a text file or folder, or hf:OWNER/NAME"
        )
    if not text.strip():
        raise BardtermError(f"dataset {spec} is empty; give it some text")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Dataset(path.name or spec, split_fractions(text), digest, source=str(path.resolve()),
                   meta={"kind": kind})


def _load_hf(name: str) -> Dataset:
    if "/" not in name.strip("/"):
        raise BardtermError(f"hf:{name} is not a Hub dataset id; write it as hf:OWNER/NAME")
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise BardtermError(
            f"hf:{name} needs the `datasets` library, which is not installed; `pip install datasets`, "
            "or download the text and pass it as a file"
        ) from None
    try:
        loaded = datasets.load_dataset(name)
    except Exception as error:  # network, auth, missing: the library raises many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BardtermError(
            f"could not load Hub dataset {name} ({first[:160]}); check the name and your connection, "
            "or download the text and pass it as a file"
        ) from None

    def text_of(split) -> str:
        columns = [c for c, f in split.features.items() if getattr(f, "dtype", None) == "string"]
        if not columns:
            raise BardtermError(f"Hub dataset {name} has no text column; pass the text as a file instead")
        return "\n".join(str(x) for x in split[columns[0]])

    if all(s in loaded for s in ("train", "validation", "test")):
        splits = {s: text_of(loaded[s]) for s in ("train", "validation", "test")}
    else:
        first_split = "train" if "train" in loaded else next(iter(loaded))
        splits = split_fractions(text_of(loaded[first_split]))
    if not splits["train"].strip():
        raise BardtermError(f"Hub dataset {name} is empty; pick another dataset")
    joined = "\x00".join(splits[s] for s in ("train", "validation", "test"))
    return Dataset(f"hf:{name}", splits, hashlib.sha256(joined.encode("utf-8")).hexdigest(), source=f"hf:{name}")
