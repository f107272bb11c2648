"""bardterm: a terminal home for small language models.

The plugin API, in one import that does not load torch (plugins/README.md is the guide):

    from bardterm import hookimpl, Param, Processor, Selector
"""

__version__ = "0.1.0"

from bardterm.errors import BardtermError  # noqa: E402
from bardterm.interface import (  # noqa: E402
    Cache, Decoder, DecoderSetup, Hypothesis, Processor, Run, Selector, Step, TransformersProcessor,
)
from bardterm.params import InvalidParameter, Param  # noqa: E402

__all__ = ["API_VERSION", "BardtermError", "Cache", "Decoder", "DecoderSetup", "Hypothesis", "InvalidParameter",
           "Param", "Processor", "Run", "Selector", "Step", "TransformersProcessor", "hookimpl"]


def __getattr__(name: str):
    # The hook marker comes from pluggy, which only plugins and the registry need: the engine, the CLI's
    # startup and the TUI import `bardterm` without it.
    if name in ("hookimpl", "API_VERSION"):
        from bardterm import hookspecs

        return getattr(hookspecs, name)
    raise AttributeError(f"module 'bardterm' has no attribute {name!r}")
