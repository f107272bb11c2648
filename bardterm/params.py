"""Declared decoder parameters, and the one place where their values are checked.

Every decoder lists its parameters as `Param`s. The CLI, the Python API and the TUI all validate through
`Param.validate`, so a bad value is refused the same way everywhere, before any token is generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from bardterm.errors import BardtermError

_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


class InvalidParameter(BardtermError):
    """A decoder parameter value that its declaration does not allow."""


@dataclass(frozen=True)
class Param:
    """One parameter of a decoder: its type, default, allowed range and a one-line help."""

    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    choices: tuple | None = None
    hint: str = ""  # said when a value is refused, e.g. "for deterministic output use --decoder greedy"
    check: Callable[[Any], Any] | None = None
    """For text with a format of its own (a list of breakers, token biases): called with the value, it raises
    InvalidParameter, saying what is wrong, for a value it cannot take."""

    def __post_init__(self):
        if self.type not in _TYPES:
            raise TypeError(f"Param {self.name!r}: type must be one of int, float, bool, str")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """A short description of the allowed values, e.g. 'a number > 0 and <= 2'."""
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>=' if self.min_inclusive else '>'} {self.min:g}")
        if self.max is not None:
            bounds.append(f"{'<=' if self.max_inclusive else '<'} {self.max:g}")
        return _TYPES[self.type] + (" " + " and ".join(bounds) if bounds else "")

    def validate(self, value: Any, owner: str = "") -> Any:
        """Convert `value` (which may be a string from the command line) and check it; return it."""
        converted = self._convert(value)
        ok = converted is not None
        if ok and self.type in (int, float):
            ok = math.isfinite(converted)
            if ok and self.min is not None:
                ok = converted >= self.min if self.min_inclusive else converted > self.min
            if ok and self.max is not None:
                ok = converted <= self.max if self.max_inclusive else converted < self.max
        if ok and self.choices:
            ok = converted in self.choices
        if not ok:
            where = f" (decoder {owner})" if owner and owner != self.name else ""
            message = f"invalid {self.name}={value}{where}: must be {self.allowed()}"
            raise InvalidParameter(message + (f" ({self.hint})" if self.hint else ""))
        if self.check is not None:
            self.check(converted)
        return converted

    def _convert(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            return {"true": True, "1": True, "yes": True, "on": True,
                    "false": False, "0": False, "no": False, "off": False}.get(text)
        if isinstance(value, bool):
            return None  # True is not a number a user meant
        try:
            if self.type is int:
                number = float(value)
                return int(number) if number.is_integer() else None
            return self.type(value)
        except (TypeError, ValueError, OverflowError):
            return None


def parse_seed(raw) -> int | None:
    """A seed as the user types it, the same for --seed, /set seed and the panel: a whole number >= 0, or
    random (blank, 'random' or -1, llama.cpp's spelling): None. Raises BardtermError with one line."""
    raw = str(raw).strip()
    if raw in ("", "random", "none", "-1"):
        return None
    try:
        seed = int(raw)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**63:
        raise BardtermError(f"invalid seed {raw!r}: use a whole number >= 0, or random (-1 or 'random')")
    return seed
