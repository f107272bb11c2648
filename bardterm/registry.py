"""From names to a ready decoder setup: which decoders and presets the plugins registered, and `build`.

`build("creative", top_p=0.8)` gives a `DecoderSetup`: one selector and an ordered processor chain, every
value validated against its declaration. The CLI, the Python API and the TUI all go through `build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bardterm.decoders.base import Decoder, Processor, Selector
from bardterm.errors import BardtermError
from bardterm.params import InvalidParameter, Param
from bardterm.plugins import load_plugins, pm

DEFAULT_DECODER = "creative"


@dataclass(frozen=True)
class Preset:
    name: str
    help: str
    decoder: str
    settings: dict
    plugin: str


@dataclass
class Registry:
    decoders: dict[str, type[Decoder]] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)
    plugin_of: dict[str, str] = field(default_factory=dict)  # decoder or preset name -> plugin name
    problems: list[str] = field(default_factory=list)  # plugin faults found while registering

    def built_ins(self) -> list[str]:
        """The decoders and presets bardterm itself registers (not those of plugins)."""
        from bardterm.decoders import BUILTIN_MODULES

        return sorted(name for name, plugin in self.plugin_of.items() if plugin in BUILTIN_MODULES)

    def params(self) -> dict[str, list[tuple[str, Param]]]:
        """Every declared parameter by name, with the decoders that declare it."""
        found: dict[str, list[tuple[str, Param]]] = {}
        for name, cls in self.decoders.items():
            for param in cls.params:
                found.setdefault(param.name, []).append((name, param))
        return found


def get_registry() -> Registry:
    """Ask every plugin's hooks for its decoders and presets, one plugin at a time so one fault stays local.

    Plugins are asked in the order they were loaded, built-ins first, and the first to register a name keeps
    it: a plugin's decoder cannot take the name of a built-in preset, nor a preset that of a decoder.
    """
    load_plugins()
    registry = Registry()
    for plugin, module in pm.list_name_plugin():
        for hook in (pm.hook.register_decoders, pm.hook.register_presets):
            for impl in hook.get_hookimpls():
                if impl.plugin is module:
                    _call_hook(registry, plugin, impl.function, _registrar(registry, hook.name, plugin))
    return registry


def _registrar(registry: Registry, hook: str, plugin: str):
    """The `register` function handed to one plugin's hook."""
    if hook == "register_decoders":
        return lambda cls: _add_decoder(registry, cls, plugin)

    def add_preset(name, help, decoder, **settings):
        _add_preset(registry, Preset(name, help, decoder, settings, plugin))

    return add_preset


def _call_hook(registry: Registry, plugin: str, function, register) -> None:
    try:
        function(register=register)
    except _Refused as refusal:
        registry.problems.append(str(refusal))
    except Exception as error:
        registry.problems.append(f"plugin {plugin!r} raised while registering: {type(error).__name__}: {error}")


class _Refused(Exception):
    pass


def _add_decoder(registry: Registry, cls, plugin: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, (Processor, Selector))):
        raise _Refused(f"plugin {plugin!r} registered {cls!r}, which is not a Processor or Selector subclass")
    if not cls.name or not cls.name.isidentifier():
        raise _Refused(f"plugin {plugin!r} registered {cls.__name__} without a valid name (letters, digits, _)")
    if cls.name in registry.decoders or cls.name in registry.presets:
        owner = registry.plugin_of[cls.name]
        raise _Refused(f"plugin {plugin!r} tried to register decoder {cls.name!r}, already registered by {owner!r}")
    for param in cls.params:
        try:
            param.validate(param.default, owner=cls.name)
        except InvalidParameter as error:  # a default that its own range refuses is a plugin bug
            raise _Refused(f"plugin {plugin!r} registered decoder {cls.name!r} with a bad default ({error}): "
                           "it is left out") from None
    registry.decoders[cls.name] = cls
    registry.plugin_of[cls.name] = plugin


def _add_preset(registry: Registry, preset: Preset) -> None:
    if preset.name in registry.decoders or preset.name in registry.presets:
        owner = registry.plugin_of[preset.name]
        raise _Refused(f"plugin {preset.plugin!r} tried to register preset {preset.name!r}, "
                       f"already registered by {owner!r}")
    registry.presets[preset.name] = preset
    registry.plugin_of[preset.name] = preset.plugin


@dataclass
class DecoderSetup:
    """One selector and the processor chain it selects from."""

    selector: Selector
    chain: list[Processor]

    def describe(self) -> str:
        steps = [f"{p.name}({', '.join(f'{v:g}' if isinstance(v, float) else str(v) for v in p.settings().values())})"
                 for p in self.chain]
        selector = self.selector.name
        if self.selector.params:
            selector += "(" + ", ".join(f"{k}={v}" for k, v in self.selector.settings().items()) + ")"
        return " → ".join(steps + [selector])


def build(decoder: str | None = None, chain: list[str] | None = None, registry: Registry | None = None,
          **settings) -> DecoderSetup:
    """Resolve a decoder (a selector, a processor, or a preset) and settings into a validated setup.

    `settings` are parameter names (`top_p=0.8`), or `decoder.param` where two decoders share a name. A
    processor joins the chain when any of its parameters is set; `chain` fixes the order explicitly.
    """
    registry = registry or get_registry()
    if decoder is None:
        decoder = _implied_selector(registry, settings) or DEFAULT_DECODER
    base_chain: list[str] = []
    if decoder in registry.presets:
        preset = registry.presets[decoder]
        selector_name, settings = preset.decoder, {**preset.settings, **settings}
    elif decoder in registry.decoders:
        cls = registry.decoders[decoder]
        selector_name = decoder if cls.kind == "selector" else "sample"
        base_chain = [] if cls.kind == "selector" else [decoder]
        if cls.kind == "selector" and cls.defaults:
            defaults = cls.defaults
            if chain is not None:  # an explicit chain leaves out the default processors it does not name
                defaults = {k: v for k, v in defaults.items()
                            if _resolve_setting(registry, k)[0] in (selector_name, *chain)}
            settings = {**defaults, **settings}
    else:
        raise BardtermError(f"unknown decoder {decoder!r}: run `bardterm decoders` to list them "
                            f"({', '.join(sorted([*registry.presets, *registry.decoders]))})")
    if selector_name not in registry.decoders or registry.decoders[selector_name].kind != "selector":
        raise BardtermError(f"preset {decoder!r} names selector {selector_name!r}, which is not registered")

    values: dict[str, dict] = {}
    for key, value in settings.items():
        owner, param = _resolve_setting(registry, key)
        values.setdefault(owner, {})[param] = value

    if chain is not None:
        for name in chain:
            if registry.decoders.get(name) is None or registry.decoders[name].kind != "processor":
                processors = ", ".join(n for n, c in registry.decoders.items() if c.kind == "processor")
                raise BardtermError(f"--chain: {name!r} is not a processor (processors: {processors})")
        order = list(dict.fromkeys(chain))
    else:
        wanted = set(base_chain) | {name for name in values if registry.decoders[name].kind == "processor"}
        order = sorted(wanted, key=lambda name: (registry.decoders[name].order, name))

    for owner in values:
        if owner != selector_name and owner not in order:
            names = ", ".join(values[owner])
            if registry.decoders[owner].kind == "processor":
                raise InvalidParameter(f"{names} belongs to processor {owner!r}, which is not in the chain given: "
                                       f"add {owner} to --chain")
            raise InvalidParameter(f"{names} belongs to selector {owner!r}, but the decoder is {selector_name!r}: "
                                   f"pass --decoder {owner}")
    selector = registry.decoders[selector_name].create(**values.get(selector_name, {}))
    processors = [registry.decoders[name].create(**values.get(name, {})) for name in order]
    for decoder in (selector, *processors):
        decoder.plugin = registry.plugin_of[decoder.name]  # so that a fault mid-generation can name the plugin
    return DecoderSetup(selector, processors)


def _implied_selector(registry: Registry, settings: dict) -> str | None:
    """`--num-beams 4` alone means beam search: a setting that only one selector declares picks it."""
    owners = {_resolve_setting(registry, key)[0] for key in settings}
    selectors = [name for name in owners if registry.decoders[name].kind == "selector"]
    return selectors[0] if len(selectors) == 1 else None


def _resolve_setting(registry: Registry, key: str) -> tuple[str, str]:
    if "." in key:
        owner, param = key.split(".", 1)
        cls = registry.decoders.get(owner)
        if cls is None or param not in {p.name for p in cls.params}:
            raise InvalidParameter(f"unknown parameter {key!r}: run `bardterm decoders` to list them")
        return owner, param
    owners = registry.params().get(key, [])
    if not owners:
        raise InvalidParameter(f"unknown parameter {key!r}: run `bardterm decoders` to list them")
    if len(owners) > 1:
        choices = " or ".join(f"{owner}.{key}" for owner, _ in owners)
        raise InvalidParameter(f"parameter {key!r} is declared by several decoders: say {choices}")
    return owners[0][0], key
