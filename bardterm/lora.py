"""LoRA adapters (through `peft`): wrap a base model for training, merge, and load an adapter folder.

An adapter folder is a standard PEFT one (adapter_config.json + adapter_model.safetensors) that names its base
(`base_model_name_or_path`: a local directory or a Hub id); bardterm also keeps the tokenizer and bardterm.json
beside it. `bardterm --checkpoint`, `generate` and `eval` take such a folder directly: the base is loaded and the
adapter merged into it, so generation runs at the base model's speed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from bardterm.errors import BardtermError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_dir(path) -> bool:
    path = Path(path).expanduser()
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path) -> str:
    """The base an adapter folder names: a local directory (absolute, or relative to the adapter) or a Hub id."""
    path = Path(path).expanduser()
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as error:
        raise BardtermError(f"{path / ADAPTER_CONFIG} is unreadable ({error}): re-train or re-download the adapter") from None
    if not base:
        raise BardtermError(f"adapter {path} does not name its base model (base_model_name_or_path in "
                            f"{ADAPTER_CONFIG}): add it, or load the base with --checkpoint")
    beside = (path / base).resolve()
    return str(beside) if not Path(base).is_absolute() and beside.is_dir() else base


def wrap(model, config: dict, base_name: str):
    """`model` with trainable LoRA adapters of rank config["lora"] on the target modules; the rest frozen."""
    from peft import LoraConfig, get_peft_model

    targets = config["lora_targets"]
    lora_config = LoraConfig(
        r=config["lora"], lora_alpha=config["lora_alpha"], lora_dropout=config["lora_dropout"],
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()],
        task_type="CAUSAL_LM", base_model_name_or_path=base_name,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "fan_in_fan_out is set to False" for GPT-2's Conv1D: peft fixes it
            wrapped = get_peft_model(model, lora_config)
    except ValueError as error:
        raise BardtermError(f"--lora-targets {targets}: {str(error).splitlines()[0][:200]}; use all-linear or "
                            "module names of the base model") from None
    for adapter_config in wrapped.peft_config.values():  # peft records where the weights were read: a Hub id's
        adapter_config.base_model_name_or_path = base_name  # cache snapshot; the adapter should name the id
    return wrapped


def attach(base_model, adapter_dir, *, merge: bool = True):
    """The base model with the adapter folder's weights; merged into plain weights unless merge=False."""
    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise BardtermError(f"cannot load adapter {adapter_dir} onto its base ({str(error).splitlines()[0][:200]}); "
                            "check that the base is the model it was trained on") from None
    return model.merge_and_unload() if merge else model


def base_name(base: str) -> str:
    """What an adapter records as its base: a local directory as an absolute path, a Hub id as it is."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else base
