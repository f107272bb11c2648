"""Training configuration: recipes, layering, and the checks that span several settings.

Each setting (type, default, range, help) is declared once in settings.py.

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
from bardterm.training.settings import DEFAULTS, LION_LR_FACTOR, LION_WD_FACTOR, PRESETS, convert


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
    """Defaults < recipe < flags (only non-None flags), each converted and range-checked by its declaration
    (settings.py), then derived defaults and the checks that span several settings."""
    config = dict(DEFAULTS)
    for layer in (recipe or {}), {k: v for k, v in flags.items() if k in DEFAULTS and v is not None}:
        config.update(convert(layer))
    return finalize(config)


def _bad(key: str, value, why: str) -> BardtermError:
    return BardtermError(f"invalid --{key.replace('_', '-')} {value}: {why}")


def finalize(config: dict) -> dict:
    c = dict(config)
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

    if scratch:
        if c["n_embd"] % c["n_head"]:
            raise _bad("n_embd", c["n_embd"], f"must be divisible by --n-head {c['n_head']}")
    if c["lora"]:
        if scratch:
            raise BardtermError("--lora adapts a pretrained model: give --base MODEL (a directory or Hub id), or "
                                "drop --lora to train from scratch")
        if c["ema"]:
            raise BardtermError("--ema with --lora is not supported: drop one of them")
        if c["lora_alpha"] is None:
            c["lora_alpha"] = 2.0 * c["lora"]
    elif c["merge"]:
        raise BardtermError("--merge merges a LoRA adapter into its base: add --lora R, or drop --merge")
    if c["run_name"] is not None and (not c["run_name"].strip() or "/" in c["run_name"]):
        raise _bad("run_name", c["run_name"], "must be a plain name without /")
    return c
