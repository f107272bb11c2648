"""bardterm: a terminal home for small language models."""

__version__ = "0.1.0"
