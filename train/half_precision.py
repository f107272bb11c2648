"""Copy a checkpoint with its weights stored in float16 or bfloat16: half the bytes, for shipping.

    python train/half_precision.py RUN_DIR NEW_DIR [--dtype float16]

Copies the best model of a run (its top-level files, not last/ or resume/, and not a model card) into NEW_DIR,
which must not exist, with every floating-point tensor cast and config.json's dtype set to match. bardterm
still loads it in float32 on the CPU. Issue 5 allows such storage if it costs under 0.005 nats/char: measure both with
`bardterm eval --split all`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bardterm.errors import BardtermError
from bardterm.models import check_checkpoint
from bardterm.training.checkpoint import staging_dir

# Not README.md: a model card describes the weights it sits beside; rerun train/model_card.py on the copy.
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "bardterm.json", "loss.png")


def store(source: Path, target: Path, dtype: str = "float16") -> None:
    """Write `target` as `source` with half-precision weights; staged in a temporary folder, then renamed."""
    import torch
    from safetensors.torch import load_file, save_file

    cast = {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if cast is None:
        raise BardtermError(f"invalid dtype {dtype!r}: use float16 or bfloat16")
    check_checkpoint(source)
    if not (source / "model.safetensors").is_file():
        raise BardtermError(f"{source} has no model.safetensors (sharded or renamed weights are not supported)")
    if target.exists():
        raise BardtermError(f"{target} already exists: give a new directory (nothing was written)")
    stage = staging_dir(target.parent, target.name)
    try:
        for name in MODEL_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, stage / name)
        tensors = load_file(source / "model.safetensors")
        halved = {key: t.to(cast) if t.is_floating_point() else t for key, t in tensors.items()}
        save_file(halved, stage / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = dtype
        (stage / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint directory (a run's best model)")
    parser.add_argument("target", type=Path, help="the new directory to write")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    args = parser.parse_args(argv)
    try:
        store(args.source, args.target, args.dtype)
    except BardtermError as error:
        print(f"half_precision: error: {error}", file=sys.stderr)
        return 2
    size = (args.target / "model.safetensors").stat().st_size
    print(f"wrote {args.target} ({args.dtype}, model.safetensors {size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
