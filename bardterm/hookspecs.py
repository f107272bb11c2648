"""The plugin contract. A plugin is a module with functions marked `@bardterm.hookimpl`.

The built-in decoders register through these same hooks (see `bardterm/decoders/`).
"""

import pluggy

API_VERSION = 1
"""Bumped when the hooks or the Decoder interface change incompatibly. A plugin may declare the version it
was written for as a module attribute `bardterm_api = 1`; a different version is refused."""

hookspec = pluggy.HookspecMarker("bardterm")
hookimpl = pluggy.HookimplMarker("bardterm")


@hookspec
def register_decoders(register):
    """Register decoder classes (Processor or Selector subclasses): call register(DecoderClass) for each."""


@hookspec
def register_presets(register):
    """Register named decoder setups: call register(name, help, decoder=..., **settings) for each."""
