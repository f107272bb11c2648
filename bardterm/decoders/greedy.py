"""Greedy decoding: always the most likely next token.

On its own, greedy decoding makes small models loop ("my lord, my lord, my lord, ..."), so chosen by name it
runs through CTRL's repetition penalty of 1.2 (Keskar et al., 2019, "penalized greedy"). `--repetition-penalty 1`
gives the textbook algorithm, token for token what `generate(do_sample=False)` gives.
"""

from bardterm import Selector, hookimpl


class Greedy(Selector):
    name = "greedy"
    help = "Always pick the most likely token: deterministic (--repetition-penalty 1 for plain argmax)."
    defaults = {"repetition_penalty": 1.2}

    def choose(self, scores, generator):
        return scores.argmax(dim=-1)


@hookimpl
def register_decoders(register):
    register(Greedy)
