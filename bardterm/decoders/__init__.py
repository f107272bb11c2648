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
    "bardterm.decoders.min_p",
    "bardterm.decoders.typical",
    "bardterm.decoders.epsilon",
    "bardterm.decoders.eta",
    "bardterm.decoders.top_n_sigma",
    "bardterm.decoders.xtc",
    "bardterm.decoders.dry",
    "bardterm.decoders.logit_bias",
    "bardterm.decoders.presets",
)
