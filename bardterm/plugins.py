"""Finding plugins: the built-ins, installed packages (entry-point group `bardterm`), and `--plugin`.

A plugin that fails to import is recorded in `load_failures`, not raised: every other decoder keeps working.
`BARDTERM_LOAD_PLUGINS` picks which installed plugins load (comma-separated names; empty loads none).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pluggy

from bardterm import hookspecs
from bardterm.decoders import BUILTIN_MODULES
from bardterm.errors import BardtermError

pm = pluggy.PluginManager("bardterm")
pm.add_hookspecs(hookspecs)

load_failures: list[str] = []
left_out: list[str] = []  # installed plugins that BARDTERM_LOAD_PLUGINS did not choose
_loaded = False


def load_plugins() -> None:
    """Register the built-ins and the installed plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    chosen = os.environ.get("BARDTERM_LOAD_PLUGINS")
    wanted = None if chosen is None else {name.strip() for name in chosen.split(",") if name.strip()}
    installed = importlib.metadata.entry_points(group="bardterm")
    for entry_point in installed:
        if wanted is not None and entry_point.name not in wanted:
            left_out.append(entry_point.name)
            continue
        if pm.has_plugin(entry_point.name):
            continue
        try:
            register_module(entry_point.load(), entry_point.name)
        except BardtermError as error:
            load_failures.append(str(error))
        except Exception as error:  # a broken plugin must not take bardterm down with it
            load_failures.append(f"plugin {entry_point.name!r} failed to load: {_describe(error)}")
    for name in sorted((wanted or set()) - set(installed.names)):  # a typo would otherwise load nothing, silently
        load_failures.append(f"BARDTERM_LOAD_PLUGINS names {name!r}, which is not installed "
                             f"(installed: {', '.join(sorted(installed.names)) or 'none'})")


def register_module(module, name: str) -> None:
    """Register a plugin module after checking the API version it declares and the hooks it implements."""
    declared = getattr(module, "bardterm_api", hookspecs.API_VERSION)
    if declared not in hookspecs.SUPPORTED_API_VERSIONS:
        supported = " and ".join(str(v) for v in hookspecs.SUPPORTED_API_VERSIONS)
        raise BardtermError(
            f"plugin {name!r} was written for bardterm plugin API {declared}, but this bardterm supports API "
            f"{supported}: upgrade the plugin or bardterm"
        )
    _check_hooks(module, name)
    try:
        pm.register(module, name=name)
    except (pluggy.PluginValidationError, ValueError) as error:
        raise BardtermError(f"plugin {name!r} cannot be registered: {' '.join(str(error).split())}") from None


def _check_hooks(module, name: str) -> None:
    """Refuse misspelt hooks and hook arguments, which pluggy would ignore or explain over several lines."""
    known = {hook for hook in dir(hookspecs) if pm.parse_hookspec_opts(hookspecs, hook)}
    for attribute in dir(module):
        if pm.parse_hookimpl_opts(module, attribute) is None:
            continue
        if attribute not in known:
            raise BardtermError(f"plugin {name!r} implements {attribute!r}, which is not a bardterm hook "
                                f"(hooks: {', '.join(sorted(known))})")
        expected = inspect.signature(getattr(hookspecs, attribute))
        actual = inspect.signature(getattr(module, attribute))
        if not set(actual.parameters) <= set(expected.parameters):
            raise BardtermError(f"plugin {name!r} defines {attribute}{actual}, but the hook is {attribute}{expected}")


def load_plugin(spec: str) -> str:
    """`--plugin MODULE_OR_FILE`: import a module by name or a .py file by path and register it."""
    load_plugins()
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.exists():
            if not path.is_file():
                raise BardtermError(f"--plugin {spec}: no such file")
            plugin_name, module = path.stem, _import_file(path)
        else:
            plugin_name, module = spec, importlib.import_module(spec)
    except BardtermError:
        raise
    except Exception as error:
        raise BardtermError(f"--plugin {spec} failed to import: {_describe(error)}") from None
    if pm.is_registered(module):
        return pm.get_name(module)  # loaded already, perhaps as an installed plugin
    if pm.has_plugin(plugin_name):
        raise BardtermError(f"--plugin {spec}: a different plugin named {plugin_name!r} is already loaded: "
                            "rename the file, or leave the other out with BARDTERM_LOAD_PLUGINS")
    register_module(module, plugin_name)
    return plugin_name


def _import_file(path: Path):
    name = f"bardterm_plugin_{path.stem}"
    loaded = sys.modules.get(name)
    if loaded is not None and Path(loaded.__file__).resolve() == path.resolve():
        return loaded  # the same file twice (say from the CLI and the TUI) is one plugin, not a clash
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it, as `import` does: dataclasses and pickling look it up
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def plugin_version(plugin_name: str) -> str:
    """The installed distribution's version for an entry-point plugin, 'built-in', or 'local'."""
    if plugin_name.startswith("bardterm."):
        from bardterm import __version__

        return f"built-in {__version__}"
    for entry_point in importlib.metadata.entry_points(group="bardterm"):
        if entry_point.name == plugin_name and entry_point.dist is not None:
            return entry_point.dist.version
    return "local"


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
