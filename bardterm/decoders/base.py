"""Plugin API 1's home of the decoder classes, kept so that version 1 plugins still import: the interface now
lives in `bardterm.interface`, and plugins import it from `bardterm` itself."""

from bardterm.interface import Decoder, Hypothesis, Processor, Selector, TransformersProcessor

__all__ = ["Decoder", "Hypothesis", "Processor", "Selector", "TransformersProcessor"]
