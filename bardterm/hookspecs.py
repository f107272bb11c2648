"""The plugin hooks. A plugin is a module with functions marked `@bardterm.hookimpl`.

The built-in decoders register through these same hooks (see `bardterm/decoders/`).
"""

import pluggy

API_VERSION = 2
"""Bumped when the hooks or the interface (`bardterm.interface`) change incompatibly. A plugin may declare the
version it was written for as a module attribute `bardterm_api = 2`; one not in `SUPPORTED_API_VERSIONS` is
refused. Version 2 added the run context, qualified parameter names and the documented cache; version 1
plugins run unchanged (see plugins/README.md, "What changed in API 2")."""

SUPPORTED_API_VERSIONS = (1, 2)

hookspec = pluggy.HookspecMarker("bardterm")
hookimpl = pluggy.HookimplMarker("bardterm")


@hookspec
def register_decoders(register):
    """Register decoder classes (Processor or Selector subclasses): call register(DecoderClass) for each."""


@hookspec
def register_presets(register):
    """Register named decoder setups: call register(name, help, decoder=..., **settings) for each."""
