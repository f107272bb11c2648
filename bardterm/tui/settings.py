"""The decoder setup the user is editing: a selector, an ordered processor chain, their values, a seed.

Kept as plain names and values so the panel, `/set` and `/decoder` all edit the same thing; turning it into
a runnable `DecoderSetup` always goes through `registry.build`, which validates everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bardterm.errors import BardtermError
from bardterm.params import InvalidParameter
from bardterm.registry import DecoderSetup, Registry, build, resolve_setting


@dataclass
class DecoderChoice:
    selector: str = "sample"
    chain: list[str] = field(default_factory=list)
    values: dict[str, dict] = field(default_factory=dict)  # decoder name -> {param: value}
    seed: int | None = None
    label: str = ""  # the preset or decoder name it started from

    @classmethod
    def from_name(cls, registry: Registry, name: str, seed: int | None = None) -> "DecoderChoice":
        """A preset, selector or processor name, expanded the way `build` expands it."""
        setup = build(name, registry=registry)
        return cls.from_setup(setup, seed=seed, label=name)

    @classmethod
    def from_setup(cls, setup: DecoderSetup, seed: int | None = None, label: str = "") -> "DecoderChoice":
        values = {setup.selector.name: setup.selector.settings()}
        values.update({p.name: p.settings() for p in setup.chain})
        return cls(setup.selector.name, [p.name for p in setup.chain], values, seed, label)

    def setup(self, registry: Registry) -> DecoderSetup:
        settings = {f"{owner}.{param}": value for owner in [self.selector, *self.chain]
                    for param, value in self.values.get(owner, {}).items()}
        return build(self.selector, chain=list(self.chain), registry=registry, **settings)

    def value(self, registry: Registry, owner: str, param: str):
        declared = {p.name: p for p in registry.decoders[owner].params}[param]
        return self.values.get(owner, {}).get(param, declared.default)

    def set(self, registry: Registry, key: str, raw) -> str:
        """`/set KEY VALUE` for a decoder parameter: validate, add its processor to the chain if needed.

        Returns the decoder that owns it. Raises InvalidParameter with a one-line reason.
        """
        owner, param = resolve(registry, key, self.selector, self.chain)
        declared = {p.name: p for p in registry.decoders[owner].params}[param]
        value = declared.validate(raw, owner=owner)
        cls = registry.decoders[owner]
        if cls.kind == "selector" and owner != self.selector:
            raise InvalidParameter(f"{param} belongs to selector {owner!r}, but the selector is {self.selector!r}: "
                                   f"run /decoder {owner} first")
        if cls.kind == "processor" and owner not in self.chain:
            self.add(registry, owner)
        self.values.setdefault(owner, {})[param] = value
        return owner

    def add(self, registry: Registry, processor: str) -> None:
        """Put a processor into the chain at its default place."""
        if processor in self.chain:
            return
        order = registry.decoders[processor].order
        at = next((i for i, name in enumerate(self.chain) if registry.decoders[name].order > order), len(self.chain))
        self.chain.insert(at, processor)

    def remove(self, processor: str) -> None:
        if processor in self.chain:
            self.chain.remove(processor)

    def move(self, processor: str, offset: int) -> None:
        """Move a processor up (-1) or down (+1) the chain."""
        at = self.chain.index(processor)
        to = max(0, min(len(self.chain) - 1, at + offset))
        self.chain.insert(to, self.chain.pop(at))

    def name(self, registry: Registry) -> str:
        """A short name for the status line: the preset or decoder it started from while it is unchanged,
        that name marked edited while the selector is the same, else the selector in use."""
        if self.label:
            try:
                origin = DecoderChoice.from_name(registry, self.label)
                if origin.setup(registry).describe() == self.setup(registry).describe():
                    return self.label
                if origin.selector == self.selector:
                    return f"{self.label} (edited)"
            except BardtermError:  # a plugin's preset gone, or a setup that no longer builds
                pass
        return self.selector

    def describe(self, registry: Registry) -> str:
        try:
            text = self.setup(registry).describe()
        except BardtermError as error:
            text = f"(invalid: {error})"
        return text + (f" · seed {self.seed}" if self.seed is not None else "")


def resolve(registry: Registry, key: str, selector: str, chain: list[str]) -> tuple[str, str]:
    """`top_p` or `top_p.top_p` to (owner, param), as `build` resolves it in this setup; one line saying what
    exists when it is unknown."""
    if "." not in key and key not in registry.params():
        raise InvalidParameter(f"unknown setting {key!r}: /help lists settings, F2 shows every decoder's parameters")
    return resolve_setting(registry, key, selector, {selector, *chain})

