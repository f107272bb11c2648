"""`bardterm models`, and the download progress bar every command that takes a checkpoint shows.

`resolve_with_progress` is how the CLI turns `--checkpoint`/`--base` into a directory: a local directory at once,
a Hub id through hub.py with a rich progress bar on stderr while anything downloads.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bardterm import hub


def add_parsers(subparsers) -> None:
    models = subparsers.add_parser(
        "models", help="list the models you can load: the Hugging Face cache and local runs in checkpoints/",
        description="List downloaded Hub models (the Hugging Face cache: HF_HOME, HF_HUB_CACHE) and the local "
                    "model directories in checkpoints/, with size, parameters and architecture.")
    models.add_argument("--json", action="store_true", help="print the list as JSON")
    models.set_defaults(func=run_models)


def resolve_with_progress(spec, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Path:
    """`spec` (a directory or a Hub id, or None for the shipped checkpoint) as a directory; a rich bar on stderr
    while a download runs."""
    from bardterm.models import resolve_checkpoint

    with DownloadBar() as bar:
        return resolve_checkpoint(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                                  progress=bar.update)


class DownloadBar:
    """A rich progress bar that appears with the first byte and shows the file and the whole model's bytes."""

    def __init__(self):
        self.progress = None
        self.task = None

    def update(self, event: hub.Progress) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        if self.progress is None:
            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                     transient=False)
            self.progress.start()
            self.task = self.progress.add_task(event.repo, total=event.total)
        self.progress.update(self.task, completed=event.done, total=event.total,
                             description=f"{event.repo} {event.file}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


# -- bardterm models --------------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    name: str  # Hub id (with @revision unless main) or the local directory
    where: str  # "cache" or "local"
    path: Path
    size: int  # bytes on disk
    params: int | None
    architecture: str


def list_models() -> list[ModelEntry]:
    from bardterm.models import CHECKPOINTS_DIR

    found = []
    for repo in sorted(hub.cache_dir().glob("models--*")):
        refs = {}
        for ref in (repo / "refs").glob("*"):
            try:
                refs.setdefault(ref.read_text().strip(), []).append(ref.name)
            except OSError:
                pass
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if hub.complete(snapshot):
                name = hub.hub_id_of(snapshot)
                names = refs.get(snapshot.name, [])
                if "main" not in names:
                    name += "@" + (names[0] if names else snapshot.name[:12])
                found.append(_entry(name, "cache", snapshot))
    for config in sorted(CHECKPOINTS_DIR.glob("*/config.json")) + sorted(CHECKPOINTS_DIR.glob("*/*/config.json")):
        found.append(_entry(str(config.parent.relative_to(CHECKPOINTS_DIR.parent)), "local", config.parent))
    return found


def _entry(name: str, where: str, folder: Path) -> ModelEntry:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    architecture = (config.get("architectures") or [config.get("model_type", "?")])[0]
    files = [f for f in folder.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)  # through the cache's links to the blobs
    weights = [f for f in files if f.suffix == ".safetensors"]
    params = sum(_safetensors_params(f) for f in weights) if weights else None
    return ModelEntry(name, where, folder, size, params, architecture)


def _safetensors_params(file: Path) -> int:
    """How many numbers a safetensors file holds, read from its JSON header alone."""
    try:
        with file.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    except (OSError, ValueError):
        return 0
    total = 0
    for key, tensor in header.items():
        if key != "__metadata__":
            count = 1
            for dim in tensor.get("shape", []):
                count *= dim
            total += count
    return total


def _human(count: float, units: list[str], step: int = 1000) -> str:
    for unit in units[:-1]:
        if count < step:
            return f"{count:.3g} {unit}".strip()
        count /= step
    return f"{count:.3g} {units[-1]}"


def run_models(args) -> int:
    entries = list_models()
    if args.json:
        print(json.dumps([{"name": e.name, "where": e.where, "path": str(e.path), "size_bytes": e.size,
                           "params": e.params, "architecture": e.architecture} for e in entries], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Models (cache: {hub.cache_dir()})", title_justify="left")
    for column in ("name", "where", "size", "parameters", "architecture"):
        table.add_column(column, justify="right" if column in ("size", "parameters") else "left")
    for e in entries:
        params = _human(e.params, ["", "K", "M", "B"]) if e.params else "-"
        table.add_row(e.name, e.where, _human(e.size, ["B", "KB", "MB", "GB"]), params, e.architecture)
    console = Console()
    console.print(table)
    if not entries:
        print("no models yet: `bardterm --checkpoint OWNER/NAME` downloads one; `bardterm train` makes one",
              file=sys.stderr)
    return 0
