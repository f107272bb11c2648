"""Training configuration: defaults, size presets, TOML recipes, and validation.

A run's configuration is built in layers: built-in defaults, then the recipe (`--recipe FILE`, TOML), then
command-line flags. Only flags the user actually gave override (argparse defaults are None). The result is a
plain dict, validated here so that bad input fails before anything is written.

A recipe is flat TOML whose keys are the long flag names with `_` for `-`, e.g.

    dataset = "tiny_shakespeare"
    base = "scratch"
    preset = "small"
    lr = 1e-3
    max_steps = 3000

Nested tables `[model]`, `[optim]`, `[data]`, `[schedule]`, `[eval]` are also accepted and flattened.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from bardterm.errors import BardtermError

# Scratch-model shapes (GPT-2 architecture). Weight tying is GPT-2's default and kept.
PRESETS: dict[str, dict] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64, "vocab_size": 512},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "vocab_size": 1024},
    "medium": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 2048},
}

# Lion: the Lion paper recommends a learning rate 3-10x smaller and weight decay 3-10x larger than AdamW's.
LION_LR_FACTOR = 1 / 5
LION_WD_FACTOR = 5

DEFAULTS: dict = {
    "dataset": "tiny_shakespeare",
    "data_file": None,
    "base": "distilgpt2",
    "preset": "small",
    "n_layer": None,
    "n_head": None,
    "n_embd": None,
    "vocab_size": None,
    "block_size": None,  # scratch: from the preset; fine-tune: min(256, the model's n_positions)
    "tie_weights": True,
    "dropout": 0.1,
    "attn_dropout": None,  # dropout on the attention probabilities; None: --dropout. 0 lets SDPA use its fused kernel
    "activation": "gelu_new",  # scratch: GPT-2's tanh GELU; gelu_pytorch_tanh is the same function in one fused kernel
    "bpe_dropout": 0.0,  # probability of skipping each BPE merge while training (BPE-dropout); 0: off
    "rename_speakers": 0.0,  # probability of renaming each speaker for an epoch (see training/rename.py); 0: off
    "rename_epochs": 0,  # rename only in the first N epochs, then train on the real names; 0: every epoch
    "optimizer": "adamw",
    "lr": None,  # adamw and muon: 1e-3 scratch, 5e-5 fine-tune; lion: that times LION_LR_FACTOR
    "min_lr_ratio": 0.1,
    "weight_decay": None,  # adamw and muon 0.1; lion 0.1 * LION_WD_FACTOR
    "beta1": 0.9,
    "beta2": 0.99,
    "warmup_steps": 100,
    "grad_clip": 1.0,
    "ema": 0.0,  # decay of the weight average that is evaluated and saved; 0: off (the weights as trained)
    "batch_size": 16,
    "grad_accum": 1,
    "epochs": None,
    "max_steps": None,  # if neither: 1 epoch
    "eval_interval": 200,
    "eval_batch_size": 32,
    "patience": 5,  # evaluations without improvement before stopping; 0 disables early stopping
    "min_delta": 0.0,
    "mixed_precision": "auto",  # auto: bf16 on a GPU that supports it, else fp16 on GPU, none on CPU
    "seed": 1337,
    "threads": None,  # CPU threads for torch (default: torch's choice, one per core)
    "log_interval": 50,
    "run_name": None,
    "output": None,
}

CHOICES = {
    "optimizer": ("adamw", "lion", "muon"),
    "mixed_precision": ("auto", "no", "fp16", "bf16"),
    "preset": tuple(PRESETS),
    "activation": ("gelu_new", "gelu_pytorch_tanh"),
}

# On --resume these may differ from the saved run; any other difference is refused.
RESUME_OVERRIDABLE = {"max_steps", "epochs", "patience", "min_delta", "eval_interval", "log_interval",
                      "eval_batch_size", "mixed_precision", "data_file", "output", "run_name", "threads"}

INT_KEYS = {"n_layer", "n_head", "n_embd", "vocab_size", "block_size", "warmup_steps", "batch_size",
            "grad_accum", "max_steps", "eval_interval", "eval_batch_size", "patience", "seed", "log_interval",
            "threads", "rename_epochs"}
FLOAT_KEYS = {"dropout", "attn_dropout", "bpe_dropout", "rename_speakers", "lr", "min_lr_ratio", "weight_decay",
              "beta1", "beta2", "grad_clip", "epochs", "min_delta", "ema"}
BOOL_KEYS = {"tie_weights"}
STR_KEYS = {"dataset", "data_file", "base", "preset", "optimizer", "activation", "mixed_precision", "run_name", "output"}


def load_recipe(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise BardtermError(f"recipe {path} does not exist; check the path (recipes live in train/)") from None
    except tomllib.TOMLDecodeError as error:
        raise BardtermError(f"recipe {path} is not valid TOML ({error}); fix the file") from None
    except OSError as error:
        raise BardtermError(f"cannot read recipe {path}: {error.strerror or error}") from None
    flat: dict = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[inner.replace("-", "_")] = inner_value
        else:
            flat[key.replace("-", "_")] = value
    unknown = sorted(set(flat) - set(DEFAULTS))
    if unknown:
        raise BardtermError(
            f"recipe {path} has unknown key(s) {', '.join(unknown)}; valid keys are the long flag names of "
            "`bardterm train` with _ for -"
        )
    return flat


def resolve(flags: dict, recipe: dict | None = None) -> dict:
    """Defaults < recipe < flags (only non-None flags), then derived defaults and validation."""
    config = dict(DEFAULTS)
    for layer in (recipe or {}), {k: v for k, v in flags.items() if k in DEFAULTS and v is not None}:
        config.update(layer)
    config = coerce(config)
    return finalize(config)


def coerce(config: dict) -> dict:
    out = dict(config)
    for key, value in config.items():
        if value is None:
            continue
        try:
            if key in BOOL_KEYS:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                out[key] = bool(value)
            elif key in INT_KEYS:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out[key] = int(value)
            elif key in FLOAT_KEYS:
                if isinstance(value, bool):
                    raise ValueError
                out[key] = float(value)
            elif key in STR_KEYS:
                out[key] = str(value)
        except (TypeError, ValueError):
            raise BardtermError(f"invalid value {value!r} for {key.replace('_', '-')}; expected "
                                f"{'an integer' if key in INT_KEYS else 'a number' if key in FLOAT_KEYS else 'true or false'}") from None
    return out


def _bad(key: str, value, why: str) -> BardtermError:
    return BardtermError(f"invalid --{key.replace('_', '-')} {value}: {why}")


def finalize(config: dict) -> dict:
    c = dict(config)
    for key, choices in CHOICES.items():
        if c[key] not in choices:
            raise _bad(key, c[key], f"choose one of {', '.join(choices)}")
    scratch = c["base"] == "scratch"
    c["scratch"] = scratch
    if scratch:
        for key, value in PRESETS[c["preset"]].items():
            if c.get(key) is None:
                c[key] = value
    base_lr = 1e-3 if scratch else 5e-5
    if c["lr"] is None:
        c["lr"] = base_lr * (LION_LR_FACTOR if c["optimizer"] == "lion" else 1)
    if c["weight_decay"] is None:
        c["weight_decay"] = 0.1 * (LION_WD_FACTOR if c["optimizer"] == "lion" else 1)

    positive_ints = ["batch_size", "grad_accum", "eval_interval", "eval_batch_size", "log_interval", "threads"]
    if scratch:
        positive_ints += ["n_layer", "n_head", "n_embd", "vocab_size", "block_size"]
    for key in positive_ints:
        if c.get(key) is not None and c[key] < 1:
            raise _bad(key, c[key], "must be at least 1")
    if c.get("block_size") is not None and c["block_size"] < 1:
        raise _bad("block_size", c["block_size"], "must be at least 1")
    if scratch:
        if c["n_embd"] % c["n_head"]:
            raise _bad("n_embd", c["n_embd"], f"must be divisible by --n-head {c['n_head']}")
        if c["vocab_size"] < 260:
            raise _bad("vocab_size", c["vocab_size"], "a byte-level BPE needs at least 260 (256 bytes + specials)")
    if c["max_steps"] is not None and c["max_steps"] < 1:
        raise _bad("max_steps", c["max_steps"], "must be at least 1")
    if c["epochs"] is not None and not c["epochs"] > 0:
        raise _bad("epochs", c["epochs"], "must be greater than 0")
    if not (c["lr"] > 0 and c["lr"] < 10):
        raise _bad("lr", c["lr"], "must be greater than 0 (and sensible, below 10)")
    if not 0 <= c["min_lr_ratio"] <= 1:
        raise _bad("min_lr_ratio", c["min_lr_ratio"], "must be between 0 and 1")
    if not c["weight_decay"] >= 0:
        raise _bad("weight_decay", c["weight_decay"], "must be 0 or more")
    if not 0 <= c["dropout"] < 1:
        raise _bad("dropout", c["dropout"], "must be in [0, 1)")
    if c["attn_dropout"] is not None and not 0 <= c["attn_dropout"] < 1:
        raise _bad("attn_dropout", c["attn_dropout"], "must be in [0, 1); 0 is fastest on a CPU")
    if not 0 <= c["bpe_dropout"] < 1:
        raise _bad("bpe_dropout", c["bpe_dropout"], "must be in [0, 1): 0 is off, 0.1 is the paper's value")
    if not 0 <= c["rename_speakers"] <= 1:
        raise _bad("rename_speakers", c["rename_speakers"], "must be in [0, 1]: 0 is off, 0.5 renames half each epoch")
    if c["rename_epochs"] < 0:
        raise _bad("rename_epochs", c["rename_epochs"], "must be 0 (rename in every epoch) or a number of epochs")
    for key in ("beta1", "beta2"):
        if not 0 <= c[key] < 1:
            raise _bad(key, c[key], "must be in [0, 1)")
    if not 0 <= c["ema"] < 1:
        raise _bad("ema", c["ema"], "must be in [0, 1): 0 is off, 0.998 averages over ~500 steps")
    if c["warmup_steps"] < 0:
        raise _bad("warmup_steps", c["warmup_steps"], "must be 0 or more")
    if not c["grad_clip"] >= 0:
        raise _bad("grad_clip", c["grad_clip"], "must be 0 (off) or more")
    if c["patience"] < 0:
        raise _bad("patience", c["patience"], "must be 0 (off) or more")
    if c["seed"] < 0:
        raise _bad("seed", c["seed"], "must be 0 or more")
    if c["run_name"] is not None and (not c["run_name"].strip() or "/" in c["run_name"]):
        raise _bad("run_name", c["run_name"], "must be a plain name without /")
    return c
