"""From names to a ready decoder setup: which decoders and presets the plugins registered, and `build`.

`build("creative", top_p=0.8)` gives a `DecoderSetup`: one selector and an ordered processor chain, every
value validated against its declaration. The CLI, the Python API and the TUI all go through `build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bardterm.interface import Decoder, DecoderSetup, Processor, Selector
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
    clashes: list[str] = field(default_factory=list)  # parameter names that decoders of two plugins both declare

    def warnings(self) -> list[str]:
        """What to tell the user once, when the plugins have loaded: faults, then name clashes."""
        return self.problems + self.clashes

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
    registry.clashes = _clashes(registry)
    return registry


def _clashes(registry: Registry) -> list[str]:
    """One line per parameter name that decoders from different plugins declare. It breaks nothing (a bare name
    goes to the decoder in the setup), but where both are in one setup the user must qualify it."""
    from bardterm.decoders import BUILTIN_MODULES

    def source(decoder: str) -> str:
        plugin = registry.plugin_of[decoder]
        return "built-in" if plugin in BUILTIN_MODULES else f"plugin {plugin!r}"

    lines = []
    for name, owners in registry.params().items():
        if len({source(owner) for owner, _ in owners}) > 1:
            who = [f"{owner!r} ({source(owner)})" for owner, _ in owners]
            choices = [f"{owner}.{name}" for owner, _ in owners]
            lines.append(f"parameter {name!r} is declared by decoders {_either(who, 'and')}: a bare {name} goes "
                         f"to the one in the setup; where two are, say {_either(choices, 'or')}")
    return lines


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


def build(decoder: str | None = None, chain: list[str] | str | None = None, registry: Registry | None = None,
          **settings) -> DecoderSetup:
    """Resolve a decoder (a selector, a processor, or a preset) and settings into a validated setup.

    `settings` are parameter names: qualified (`top_p.top_p=0.8`, or `**{"contrastive.top_k": 4}`) or bare
    (`top_p=0.8`), which `resolve_setting` gives to the one decoder in this setup that declares it. A processor
    joins the chain when any of its parameters is set; `chain` (a list, or "a,b,c") fixes the order explicitly.
    """
    registry = registry or get_registry()
    if isinstance(chain, str):
        chain = [name.strip() for name in chain.split(",") if name.strip()]
    if decoder is None:
        decoder = _implied_selector(registry, settings) or DEFAULT_DECODER
    base_chain: list[str] = []
    given = cls_defaults = {}  # what the decoder's name brings: a preset's settings or a selector's defaults
    if decoder in registry.presets:
        preset = registry.presets[decoder]
        selector_name, given = preset.decoder, preset.settings
    elif decoder in registry.decoders:
        cls = registry.decoders[decoder]
        selector_name = decoder if cls.kind == "selector" else "sample"
        base_chain = [] if cls.kind == "selector" else [decoder]
        given = cls_defaults = dict(cls.defaults) if cls.kind == "selector" else {}
    else:
        raise BardtermError(f"unknown decoder {decoder!r}: run `bardterm decoders` to list them "
                            f"({', '.join(sorted([*registry.presets, *registry.decoders]))})" + _left_out_hint())
    if selector_name not in registry.decoders or registry.decoders[selector_name].kind != "selector":
        raise BardtermError(f"preset {decoder!r} names selector {selector_name!r}, which is not registered")
    if chain is not None:
        for name in chain:
            if registry.decoders.get(name) is None or registry.decoders[name].kind != "processor":
                processors = ", ".join(n for n, c in registry.decoders.items() if c.kind == "processor")
                raise BardtermError(f"--chain: {name!r} is not a processor (processors: {processors})")

    # The preset's or defaults' settings first, then the caller's, which win; each name goes to its decoder.
    in_setup = {selector_name, *base_chain, *(chain or [])}
    values: dict[str, dict] = {}
    for layer in (given, settings):
        for (owner, param), value in _resolve_all(registry, layer, selector_name, in_setup).items():
            if layer is cls_defaults and chain is not None and owner not in (selector_name, *chain):
                continue  # an explicit chain leaves out the default processors it does not name
            in_setup.add(owner)
            values.setdefault(owner, {})[param] = value

    if chain is not None:
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


def resolve_setting(registry: Registry, key: str, selector: str, in_setup: set[str]) -> tuple[str, str]:
    """Which decoder's parameter `key` means, as (decoder, parameter), in a setup of `selector` and `in_setup`.

    A qualified name (`eta.epsilon`) always means that decoder's. A bare name means the one decoder that declares
    it; where several do, the one in the setup; where none of those is, the one processor among them (a selector
    other than this setup's cannot take it). Otherwise it is ambiguous, and refused with the qualified choices.
    """
    if "." in key:
        owner, param = key.split(".", 1)
        cls = registry.decoders.get(owner)
        if cls is None or param not in {p.name for p in cls.params}:
            raise InvalidParameter(f"unknown parameter {key!r}: run `bardterm decoders` to list them")
        return owner, param
    owners = [owner for owner, _ in registry.params().get(key, [])]
    if not owners:
        raise InvalidParameter(f"unknown parameter {key!r}: run `bardterm decoders` to list them")
    if len(owners) == 1:
        return owners[0], key
    candidates = [owner for owner in owners if owner in in_setup or owner == selector]
    if not candidates:
        candidates = [owner for owner in owners if registry.decoders[owner].kind == "processor"]
    if len(candidates) == 1:
        return candidates[0], key
    choices = candidates or owners
    raise InvalidParameter(f"parameter {key!r} could be that of {' or '.join(choices)}: say "
                           + " or ".join(f"{owner}.{key}" for owner in choices) + " (on the command line "
                           + " or ".join(qualified_flag(owner, key) for owner in choices) + ")")


def qualified_flag(decoder: str, param: str) -> str:
    """`--contrastive.top-k`: the command-line flag for one decoder's parameter."""
    return f"--{decoder}.{param.replace('_', '-')}"


def _resolve_all(registry: Registry, settings: dict, selector: str, in_setup: set[str]) -> dict:
    """`{(decoder, param): value}` for `settings`. Names that are qualified or declared once go first: the
    processors they bring into the setup can settle a bare name that several decoders declare."""
    resolved, in_setup = {}, set(in_setup)
    plain = [key for key in settings if "." in key or len(registry.params().get(key, [])) <= 1]
    for key in plain + [key for key in settings if key not in plain]:
        owner, param = resolve_setting(registry, key, selector, in_setup)
        in_setup.add(owner)
        resolved[owner, param] = settings[key]
    return resolved


def _either(items: list[str], word: str) -> str:
    return ", ".join(items[:-1]) + f" {word} " + items[-1]


def _implied_selector(registry: Registry, settings: dict) -> str | None:
    """`--num-beams 4` alone means beam search: a setting that only a selector can own picks it."""
    implied = set()
    for key in settings:
        owners = [key.split(".", 1)[0]] if "." in key else [o for o, _ in registry.params().get(key, [])]
        kinds = {registry.decoders[o].kind for o in owners if o in registry.decoders}
        if kinds == {"selector"} and len(owners) == 1:
            implied.add(owners[0])
    return implied.pop() if len(implied) == 1 else None


def _left_out_hint() -> str:
    """For an unknown decoder: the installed plugins BARDTERM_LOAD_PLUGINS left out, which may declare it."""
    from bardterm.plugins import left_out

    if not left_out:
        return ""
    return (f"; BARDTERM_LOAD_PLUGINS left out installed plugins {', '.join(sorted(left_out))}: add the one "
            "that declares it")
