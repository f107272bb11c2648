"""Loading a checkpoint safely: any Hugging Face causal LM directory, weights from safetensors only.

Pickled weights (`pytorch_model.bin`) can run code when loaded, and so can `trust_remote_code`; both are
refused unless the caller asks for them (`--allow-pickle`, `--trust-remote-code`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bardterm.errors import BardtermError
from bardterm.lora import is_adapter_dir
from bardterm.precision import apply as apply_precision
from bardterm.precision import resolve as resolve_precision

CHECKPOINTS_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED_CHECKPOINT = CHECKPOINTS_DIR / "shakespeare"


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    path: Path
    device: str
    dtype: str  # float32, bfloat16, float16 or int8 (see precision.py)
    dtype_label: str = ""  # for the status line: "int8 (auto)" when --dtype auto chose it
    dtype_note: str = ""  # why auto chose it, or that the precision asked for is not native here


def default_device() -> str:
    """cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_checkpoint() -> Path:
    """The shipped checkpoint. (A newer run becomes the default only when passed with --checkpoint.)"""
    return SHIPPED_CHECKPOINT


def resolve_checkpoint(spec: str | Path | None, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                       progress=None, notify=None) -> Path:
    """The checkpoint directory to use: a local directory, a Hub id's cached snapshot (downloaded if need be,
    reporting to `progress`; see hub.py), else the shipped one, with a clear line if none exists. A note such
    as "the Hub is unreachable: using the cached copy" goes to `notify` (default: stderr)."""
    if spec is not None:
        from bardterm import hub

        resolved = hub.resolve(spec, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                               progress=progress)
        for notice in resolved.notices:
            (notify or _note)(notice)
        return resolved.path
    shipped = default_checkpoint()
    if not (shipped / "config.json").is_file():
        raise BardtermError(f"no checkpoint given and the shipped one ({shipped}) is missing: pass --checkpoint DIR, "
                            "or train one with `bardterm train`")
    return shipped


def _note(message: str) -> None:
    import sys

    print(f"bardterm: note: {message}", file=sys.stderr)


def check_checkpoint(path: str | Path, allow_pickle: bool = False) -> Path:
    """Fail early, with one line, on anything that is not a loadable model directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BardtermError(f"checkpoint {path} does not exist: pass --checkpoint with a model directory or a "
                            "Hub id (owner/name)")
    if not path.is_dir():
        raise BardtermError(f"checkpoint {path} is not a directory: pass the folder that holds config.json")
    if not (path / "config.json").is_file():
        raise BardtermError(f"{path} is not a model directory (no config.json): pass a Hugging Face model folder")
    safetensors = list(path.glob("*.safetensors"))
    pickled = [p for p in path.glob("*.bin") if "model" in p.name] + list(path.glob("*.pt")) + list(path.glob("*.pth"))
    if not safetensors:
        if pickled and not allow_pickle:
            raise BardtermError(f"{path} holds only pickled weights ({pickled[0].name}), which can run code when "
                                "loaded: convert them to safetensors, or pass --allow-pickle if you trust them")
        if not pickled:
            raise BardtermError(f"{path} holds no weights (no *.safetensors file)")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as error:
            raise BardtermError(f"{index} is corrupt ({error}): re-download the checkpoint") from None
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise BardtermError(f"{path} lacks {missing[0]}, a shard its index names: re-download the checkpoint")
    for file in safetensors:
        _check_safetensors(file)
    return path


def _check_safetensors(file: Path) -> None:
    """A safetensors file starts with an 8-byte header length and a JSON header; check both and the size."""
    size = file.stat().st_size
    try:
        with file.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError("bad header length")
            header = json.loads(handle.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end != size:
            raise ValueError("truncated")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise BardtermError(f"{file} is corrupt ({error}): re-download or re-train the checkpoint") from None


def load_checkpoint(path: str | Path, device: str | None = None, dtype: str | None = None,
                    allow_pickle: bool = False, trust_remote_code: bool = False, native: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer from a directory, on `device` (default: best available).

    A plain GPT-2 checkpoint loads as bardterm's own model (`gpt2.py`, `tokenizer.py`), without importing
    transformers, which is most of the start-up time; `native=False` asks for transformers' classes whatever
    the checkpoint (training and LoRA need them). Both give the same logits."""
    import torch

    if is_adapter_dir(path):
        return load_adapter_checkpoint(path, device, dtype, allow_pickle, trust_remote_code)
    path = check_checkpoint(path, allow_pickle)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise BardtermError(f"{path / 'config.json'} is corrupt ({error}): re-download or re-train the checkpoint") from None
    if "auto_map" in config and not trust_remote_code:
        raise BardtermError(f"{path} needs its own Python code to load (auto_map in config.json): pass "
                            "--trust-remote-code only if you trust its author")
    device = device or default_device()
    precision = resolve_precision(dtype, device)  # checks the name before anything slow
    torch_dtype = getattr(torch, precision.load_dtype)
    own_model = native and why_not_native(path, config) is None
    if own_model:
        model, tokenizer = _load_native(path, torch_dtype)
    else:
        model, tokenizer = _load_transformers(path, torch_dtype, allow_pickle, trust_remote_code)
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as error:
        raise BardtermError(f"could not use device {device!r} ({str(error).splitlines()[0]}): try --device cpu") from None
    model.eval()
    apply_precision(model, precision)
    if device == "cpu":
        from bardterm import native_step

        native_step.library()  # loads this machine's build of the native decode step, or starts building it
        if own_model and precision.name == "float32":
            native_step.lay_out_float32(model)  # inference only, never saved: laid out for the native step
    return LoadedModel(model, tokenizer, path, device, precision.name, precision.label, precision.note)


def why_not_native(path: Path, config: dict) -> str | None:
    """Why the checkpoint in `path` needs transformers' classes, or None when bardterm's own GPT-2 runs it."""
    from bardterm import gpt2, tokenizer

    if not isinstance(config, dict):
        return "config.json is not an object"
    if not (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").exists():
        return "weights not in one model.safetensors"
    if not gpt2.names_weights_as_transformers_does(path / "model.safetensors"):
        return "weights named as GPT2Model saves them"
    return gpt2.supports(config) or tokenizer.supports(path)


def _load_native(path: Path, torch_dtype):
    from bardterm import gpt2
    from bardterm.tokenizer import Tokenizer

    try:
        return gpt2.load(path, torch_dtype), Tokenizer(path)
    except (ValueError, KeyError, TypeError, RuntimeError, OSError) as error:
        raise BardtermError(f"could not load {path}: {str(error).splitlines()[0]}") from None


def _load_transformers(path: Path, torch_dtype, allow_pickle: bool, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own UI reports progress; theirs would garble the stream
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=not allow_pickle or None, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise BardtermError(f"{path} needs its own Python code to load: pass --trust-remote-code only if you "
                                "trust its author") from None
        raise BardtermError(f"could not load {path}: {str(error).splitlines()[0]}") from None
    except (OSError, KeyError, RuntimeError) as error:
        raise BardtermError(f"could not load {path}: {str(error).splitlines()[0]}") from None
    return model, tokenizer


def load_adapter_checkpoint(path: str | Path, device: str | None = None, dtype: str | None = None,
                            allow_pickle: bool = False, trust_remote_code: bool = False) -> LoadedModel:
    """A LoRA adapter folder (see lora.py): the base it names, loaded like any checkpoint, with the adapter merged."""
    from transformers import AutoTokenizer

    from bardterm import lora

    path = Path(path).expanduser()
    precision = resolve_precision(dtype, device or default_device())  # int8: quantized after the merge
    base = load_checkpoint(resolve_checkpoint(lora.adapter_base(path)), device, precision.load_dtype, allow_pickle,
                           trust_remote_code, native=False)  # peft wraps transformers' classes
    model = lora.attach(base.model, path).eval()
    apply_precision(model, precision)
    tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else base.tokenizer
    return LoadedModel(model, tokenizer, path, base.device, precision.name, precision.label, precision.note)
