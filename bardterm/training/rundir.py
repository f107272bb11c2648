"""The run directory: its name, the checks before anything is written, the loss plot, and the hardware a run
records in bardterm.json."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import matplotlib
import torch

from bardterm.errors import BardtermError

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def default_run_name(config: dict) -> str:
    dataset = Path(str(config["dataset"]).removeprefix("hf:")).name or "data"
    base = "scratch-" + config["preset"] if config["base"] == "scratch" else Path(config["base"]).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}-{base}").strip("-") or "run"


def run_dir_for(config: dict) -> Path:
    if config.get("output"):
        return Path(config["output"]).expanduser()
    return Path("checkpoints") / (config.get("run_name") or default_run_name(config))


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise BardtermError("--resume and --overwrite contradict each other; pick one")
    if run_dir.exists() and not run_dir.is_dir():
        raise BardtermError(f"output {run_dir} exists and is not a directory; pick another --output")
    if resume:
        return
    if _nonempty_dir(run_dir) and not overwrite:
        raise BardtermError(
            f"output directory {run_dir} already exists; pass --resume to continue that run, --overwrite to "
            "replace it, or choose another --output/--run-name"
        )


def probe_writable(run_dir: Path) -> None:
    """Create the run directory (if needed) and a probe file in it; one clear line if that fails."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise BardtermError(
            f"cannot write to output directory {run_dir} ({error.strerror or error}); choose a writable --output"
        ) from None


def hardware(accelerator) -> dict:
    info = {
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if accelerator.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(accelerator.device)
    return info


def plot(history: list, path: Path) -> None:
    train = [(h["step"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
    val = [(h["step"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if not train and not val:
        return
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except OSError:
        pass
    finally:
        plt.close(fig)
