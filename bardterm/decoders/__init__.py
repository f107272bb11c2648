"""Built-in decoding strategies, one small module each. Each registers through `bardterm.hookspecs`,
exactly as a third-party plugin does; `BUILTIN_MODULES` is the list `bardterm.plugins` loads."""

BUILTIN_MODULES = (
    "bardterm.decoders.greedy",
    "bardterm.decoders.sample",
    "bardterm.decoders.beam",
    "bardterm.decoders.contrastive",
    "bardterm.decoders.repetition_penalty",
    "bardterm.decoders.no_repeat_ngram",
    "bardterm.decoders.temperature",
    "bardterm.decoders.top_k",
    "bardterm.decoders.top_p",
    "bardterm.decoders.presets",
)
