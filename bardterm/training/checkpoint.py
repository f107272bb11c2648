"""Checkpoints: atomic Hugging Face-format saves, and the resumable trainer state (no pickle).

Layout of a run directory `checkpoints/<run>/`:

    model.safetensors, config.json, generation_config.json,   <- the best model (lowest validation loss)
    tokenizer.json, tokenizer_config.json, bardterm.json, loss.png
    last/      the latest model, same files
    resume/    model.safetensors (exact fp32 weights; a LoRA run's adapter weights only), optimizer.safetensors,
               rng.safetensors (rng.rank<N>.safetensors for each further process),
               trainer_state.json (step, config, history, RNG of python/numpy, optimizer param groups)

Every file is written to a temporary name in the same directory and moved into place with os.replace; a
directory (last/, resume/) is staged whole and swapped in with two renames. A crash mid-save leaves the
previous checkpoint intact (a crash between the two renames leaves it under `.resume.old`, which
`load_resume` falls back to).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from bardterm.errors import BardtermError
from bardterm.files import atomic_write_bytes, umask


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def staging_dir(parent: Path, name: str) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent))
    os.chmod(stage, 0o777 & ~umask())
    return stage


def _fix_modes(stage: Path) -> None:
    mode = 0o666 & ~umask()
    for path in stage.iterdir():
        if path.is_file():
            os.chmod(path, mode)


def tied_copies(model) -> set:
    """Names of the weights that are another weight under a second name (a tied lm_head)."""
    seen, copies = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            copies.add(name)
        seen.add(id(param))
    return copies


def write_hf_files(stage: Path, model, tokenizer, meta: dict, weights: dict | None = None) -> None:
    """Save model (safetensors), config, generation config, tokenizer and bardterm.json into `stage`; `weights`:
    the model's full state dict where the model itself holds only a shard of it (FSDP)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if weights is not None:  # gathered tensors share no memory, so drop tied copies (lm_head = wte) here
        weights = {key: value for key, value in weights.items() if key not in tied_copies(model)}
    # A LoRA adapter: bardterm keeps the base's tokenizer, so its embeddings never change size; peft's "auto"
    # would ask the Hub for the base's config.json on every save to find that out.
    adapter = {"save_embedding_layers": False} if hasattr(model, "peft_config") else {}
    model.save_pretrained(stage, safe_serialization=True, state_dict=weights, **adapter)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(stage)
    tokenizer.save_pretrained(stage)
    (stage / "bardterm.json").write_text(json.dumps(meta, indent=2, default=_json_default) + "\n")
    _fix_modes(stage)


def publish_files(stage: Path, target: Path) -> None:
    """Move every file of `stage` into `target` (each an atomic rename), then remove `stage`.

    Used for the best model, which lives at the top of the run directory beside last/ and resume/.
    bardterm.json goes last, so it never describes weights that are not there yet.
    """
    target.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in stage.iterdir() if p.is_file())
    names.sort(key=lambda n: n == "bardterm.json")
    for name in names:
        os.replace(stage / name, target / name)
    shutil.rmtree(stage, ignore_errors=True)


def swap_dir(stage: Path, target: Path) -> None:
    """Replace directory `target` with `stage` (two renames; the old copy is removed afterwards)."""
    old = target.parent / f".{target.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.rename(target, old)
    os.rename(stage, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def save_model_dir(model, tokenizer, meta: dict, target: Path, *, top_level: bool, weights: dict | None = None) -> None:
    stage = staging_dir(target if top_level else target.parent, target.name if not top_level else "best")
    try:
        write_hf_files(stage, model, tokenizer, meta, weights)
        if top_level:
            publish_files(stage, target)
        else:
            swap_dir(stage, target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------- resume


def _state_dict_tensors(model) -> dict:
    """Model weights as independent contiguous CPU tensors (tied weights saved once per key). When some weights
    are frozen (a LoRA adapter on its base), only the trained ones: the base is reloaded from where it came."""
    params = dict(model.named_parameters())
    if len({p.requires_grad for p in params.values()}) < 2:  # all trained (or a weight average: none)
        items = model.state_dict().items()
    else:
        items = ((key, value) for key, value in params.items() if value.requires_grad)
    return {key: value.detach().to("cpu").clone().contiguous() for key, value in items}


def _frozen(model) -> set:
    """Names of the weights a resume state leaves out (see _state_dict_tensors)."""
    params = dict(model.named_parameters())
    if len({p.requires_grad for p in params.values()}) < 2:
        return set()
    return {key for key, value in params.items() if not value.requires_grad}


def optimizer_to_flat(state: dict) -> tuple[dict, dict]:
    """Split an optimizer state_dict into safetensors-able tensors and a JSON part."""
    import torch

    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for flat, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def capture_rng() -> tuple[dict, dict]:
    import random

    import numpy as np
    import torch

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    return tensors, meta


def restore_rng(tensors: dict, meta: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")),
                                             key=lambda k: int(k.split(".")[1]))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))


def save_resume(run_dir: Path, model, optimizer, trainer_state: dict, *, average=None, rank_rngs=None,
                gathered: tuple[dict, dict] | None = None) -> None:
    """Everything to continue exactly: weights, optimizer, RNG, counters, and the weight average if kept.

    With several processes, rank 0 writes it all; `rank_rngs` is every rank's `capture_rng()` (their dropout
    draws differ), saved as rng.safetensors for rank 0 and rng.rank<N>.safetensors for the others. A sharded
    model (FSDP) passes its `gathered` (full weights, full optimizer state): the same files result."""
    from safetensors.torch import save_file

    stage = staging_dir(run_dir, "resume")
    try:
        weights, optimizer_state = gathered or (_state_dict_tensors(model), optimizer.state_dict())
        save_file({key: value.contiguous() for key, value in weights.items()}, str(stage / "model.safetensors"))
        if average is not None:
            save_file(_state_dict_tensors(average), str(stage / "average.safetensors"))
        opt_tensors, opt_meta = optimizer_to_flat(optimizer_state)
        save_file(opt_tensors, str(stage / "optimizer.safetensors"))
        rank_rngs = rank_rngs or [capture_rng()]
        rng_meta = rank_rngs[0][1]
        for rank, (rng_tensors, _) in enumerate(rank_rngs):
            save_file(rng_tensors, str(stage / ("rng.safetensors" if rank == 0 else f"rng.rank{rank}.safetensors")))
        state = dict(trainer_state, optimizer=opt_meta, rng=rng_meta)
        if len(rank_rngs) > 1:
            state["rank_rng"] = {str(rank): meta for rank, (_, meta) in enumerate(rank_rngs) if rank}
        (stage / "trainer_state.json").write_text(json.dumps(state, indent=2, default=_json_default) + "\n")
        _fix_modes(stage)
        swap_dir(stage, run_dir / "resume")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def resume_dir(run_dir: Path) -> Path | None:
    for name in ("resume", ".resume.old"):
        candidate = Path(run_dir) / name
        if (candidate / "trainer_state.json").is_file():
            return candidate
    return None


def read_resume_state(run_dir: Path) -> dict:
    found = resume_dir(run_dir)
    if found is None:
        raise BardtermError(
            f"nothing to resume in {run_dir}: no resume/trainer_state.json there; start a new run "
            "(drop --resume), or point --output at the run directory to continue"
        )
    try:
        return json.loads((found / "trainer_state.json").read_text())
    except (OSError, ValueError) as error:
        raise BardtermError(f"resume state in {found} is unreadable ({error}); start a new run with --overwrite")


def load_resume(run_dir: Path, model, optimizer, *, average=None, rank: int = 0, sharded: bool = False) -> dict:
    """Restore what save_resume wrote; `sharded`: the model is split over the ranks (FSDP), each keeps its slice."""
    from safetensors.torch import load_file

    found = resume_dir(run_dir)
    state = read_resume_state(run_dir)
    mismatch = f"resume state in {found} does not match the model; start a new run with --overwrite"
    optimizer_state = optimizer_from_flat(load_file(str(found / "optimizer.safetensors")), state["optimizer"])
    if sharded:  # FSDP (which keeps no weight average): every rank takes its slice of the full files
        from bardterm.training import sharding

        try:
            sharding.load_full(model, optimizer, load_file(str(found / "model.safetensors")), optimizer_state)
        except (RuntimeError, KeyError, IndexError, ValueError):
            raise BardtermError(mismatch) from None
    else:
        for target, name in [(model, "model.safetensors")] + ([(average, "average.safetensors")] if average else []):
            weights = load_file(str(found / name))
            missing, unexpected = target.load_state_dict(weights, strict=False)
            frozen = _frozen(target)
            if unexpected or [k for k in missing if not k.endswith("lm_head.weight") and k not in frozen]:
                raise BardtermError(mismatch)
        optimizer.load_state_dict(optimizer_state)
    if rank == 0:
        restore_rng(load_file(str(found / "rng.safetensors")), state["rng"])
    else:
        restore_rng(load_file(str(found / f"rng.rank{rank}.safetensors")), state["rank_rng"][str(rank)])
    return state


# ------------------------------------------------------------------------------------------------ load


def load_model(path, device=None, dtype="float32"):
    """(model, tokenizer) from a checkpoint directory, through the project's safe loader, in fp32 unless asked."""
    from bardterm.models import load_checkpoint

    loaded = load_checkpoint(path, device=device or "cpu", dtype=dtype, native=False)  # trainable, savable
    return loaded.model, loaded.tokenizer
