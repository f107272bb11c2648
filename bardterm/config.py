"""The user's settings file: defaults, and settings per model, in TOML.

    [defaults]
    decoder = "nucleus"              # a decoder or preset (`bardterm decoders`)
    max_new_tokens = 300
    [defaults.params]                # decoder parameters, by name as in /set
    temperature = 0.8

    [models."HuggingFaceTB/SmolLM2-135M-Instruct"]
    system = "You are a helpful assistant. Answer briefly."
    [models."HuggingFaceTB/SmolLM2-135M-Instruct".params]
    top_p = 0.9

It lives in the platform's config directory (`bardterm config` prints where); `BARDTERM_CONFIG` names another
file. Precedence: command line > the model's section > [defaults] > built-in. Every key is declared once in
`SETTINGS`, and checked by `Param.validate` like a decoder parameter; decoder parameters are checked against the
registry where they are used. A file with an error is reported in one line (file, key, what is allowed) and
ignored as a whole: the app starts with the built-in defaults. A model's section is matched by its Hub id, the
checkpoint as given, or its directory's name.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bardterm.errors import BardtermError
from bardterm.generation import MAX_NEW_TOKENS
from bardterm.params import InvalidParameter, Param

SETTINGS = (
    Param("decoder", str, "creative", "the decoder or preset to start with"),  # registry.DEFAULT_DECODER (tested)
    MAX_NEW_TOKENS,
    Param("system", str, "", "the system prompt"),
    Param("framing", str, "auto", "how chat turns are written: the model's chat template, or a play script",
          choices=("auto", "template", "script")),
    Param("user_name", str, "ROMEO", "your speaker name in a play script"),
    Param("model_name", str, "JULIET", "the model's speaker name in a play script"),
)
DECLARED = {p.name: p for p in SETTINGS}
SECTIONS = ("defaults", "models")


class ConfigError(BardtermError):
    """The settings file cannot be used; the message names the file and the key."""


def config_path() -> Path:
    if os.environ.get("BARDTERM_CONFIG"):
        return Path(os.environ["BARDTERM_CONFIG"]).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("bardterm")) / "config.toml"


@dataclass
class Config:
    path: Path
    defaults: dict[str, Any] = field(default_factory=dict)  # checked values, params under "params"
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section_for(self, *names: str | None) -> tuple[str | None, dict[str, Any]]:
        """The model section matching any of `names` (a Hub id, the checkpoint as given, a directory name)."""
        for name in names:
            if name and str(name) in self.models:
                return str(name), self.models[str(name)]
        return None, {}

    def effective(self, model_names: tuple = (), given: dict[str, Any] | None = None) -> dict[str, tuple[Any, str]]:
        """Every setting in force, with where it came from: built-in, defaults, the model's section, or the
        command line (`given`; None means not given). Decoder parameters appear as `params.NAME`."""
        section, model = self.section_for(*model_names)
        result: dict[str, tuple[Any, str]] = {p.name: (p.default, "built-in") for p in SETTINGS}
        for source, values in (("defaults", self.defaults), (f'models."{section}"', model),
                               ("command line", {k: v for k, v in (given or {}).items() if v is not None})):
            for key, value in values.items():
                if key == "params":
                    result.update({f"params.{name}": (v, source) for name, v in value.items()})
                else:
                    result[key] = (value, source)
        return result

    def settings(self, model_names: tuple = (), given: dict[str, Any] | None = None) -> dict[str, Any]:
        """The values in force, decoder parameters under "params"."""
        flat: dict[str, Any] = {"params": {}}
        for key, (value, _) in self.effective(model_names, given).items():
            if key.startswith("params."):
                flat["params"][key[len("params."):]] = value
            else:
                flat[key] = value
        return flat


def load(path: Path | None = None) -> Config:
    """The settings file, checked; an empty Config if there is none. Raises ConfigError with one line."""
    path = path or config_path()
    if not path.exists():
        return Config(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path} ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML ({error})") from None
    config = Config(path)
    for key, value in data.items():
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section [{key}]: use [defaults] and [models.\"OWNER/NAME\"]")
    config.defaults = _check_section(path, "defaults", data.get("defaults", {}))
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ConfigError(f"{path}: models must be tables, e.g. [models.\"OWNER/NAME\"]")
    config.models = {name: _check_section(path, f'models."{name}"', values) for name, values in models.items()}
    return config


def _check_section(path: Path, where: str, values) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [{where}] must be a table of settings")
    checked = {}
    for key, value in values.items():
        if key == "params":
            if not isinstance(value, dict) or not all(isinstance(v, (bool, int, float, str)) for v in value.values()):
                raise ConfigError(f"{path}: [{where}.params] must hold decoder parameters as NAME = VALUE, "
                                  "e.g. top_p = 0.9")
            checked["params"] = dict(value)
            continue
        declared = DECLARED.get(key)
        if declared is None:
            raise ConfigError(f"{path}: [{where}] unknown key {key!r}: use {', '.join(DECLARED)}, or params")
        if isinstance(value, (dict, list)) or (declared.type is not str and isinstance(value, str)) or \
                (declared.type is str and not isinstance(value, str)):
            raise ConfigError(f"{path}: [{where}] {key} = {value!r}: must be {declared.allowed()}")
        try:
            checked[key] = declared.validate(value)
        except InvalidParameter:
            raise ConfigError(f"{path}: [{where}] {key} = {value!r}: must be {declared.allowed()}") from None
    return checked


def save_model_settings(name: str, values: dict[str, Any], path: Path | None = None) -> Path:
    """Write `values` as the [models."name"] section, keeping the rest of the file; returns the file written.
    Raises ConfigError if the file has an error (it is not overwritten)."""
    from bardterm.files import write_atomic

    config = load(path)
    config.models[name] = _check_section(config.path, f'models."{name}"', values)
    write_atomic(config.path, dumps(config))
    return config.path


def dumps(config: Config) -> str:
    """The file's text. (Comments in a hand-written file are not kept: tomllib does not read them.)"""
    lines = ["# bardterm settings: `bardterm config` shows this file's place and the settings in force.", ""]
    for header, values in [("defaults", config.defaults)] + [(f"models.{_key(n)}", v) for n, v in config.models.items()]:
        if not values:
            continue
        lines.append(f"[{header}]")
        lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if k != "params"]
        if values.get("params"):
            lines += ["", f"[{header}.params]"] + [f"{_key(k)} = {_value(v)}" for k, v in values["params"].items()]
        lines.append("")
    return "\n".join(lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else _value(key)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text) + '"'


# -- bardterm config --------------------------------------------------------------------------------------


def add_parsers(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="show where the settings file is and the settings in force",
        description="Show the settings file (BARDTERM_CONFIG overrides its place) and every setting in force, "
                    "with where it comes from: built-in, [defaults], or the model's section.")
    parser.add_argument("--checkpoint", metavar="DIR_OR_HUB_ID", help="show the settings for this model")
    parser.set_defaults(func=run_config)


def model_names(spec: str | None, path: Path | None = None) -> tuple:
    """The names a model's section may use: the checkpoint as given, its Hub id, its directory's name."""
    from bardterm import hub

    names = [spec] if spec else []
    hub_id = hub.parse_hub_id(str(spec)) if spec else None
    if hub_id is not None:
        names.append(hub_id.repo)
    if path is not None:
        names += [hub.hub_id_of(path), str(path), Path(path).name]
    elif spec:
        names.append(Path(str(spec)).name)
    return tuple(n for n in dict.fromkeys(names) if n)


def load_or_warn(warn) -> Config:
    """The settings file, or, when it has an error, the built-in defaults after one line to `warn`."""
    try:
        return load()
    except ConfigError as error:
        warn(f"{error}; using the built-in defaults")
        return Config(config_path())


def run_config(args) -> int:
    from rich.console import Console
    from rich.table import Table

    config = load()  # an error here is the one line the CLI prints
    state = "" if config.path.exists() else " (not written yet: /save-defaults in the app writes it)"
    print(f"settings file: {config.path}{state}")
    names = model_names(args.checkpoint)
    section, _ = config.section_for(*names)
    table = Table(title="settings in force" + (f" for {args.checkpoint}" if args.checkpoint else ""),
                  title_justify="left")
    for column in ("setting", "value", "from"):
        table.add_column(column)
    for key, (value, source) in config.effective(names).items():
        table.add_row(key, repr(value) if isinstance(value, str) else str(value), source)
    Console().print(table)
    if config.models:
        print("model sections: " + ", ".join(config.models) + (f" (in force: {section})" if section else ""))
    return 0
