"""Greedy decoding: always the most likely next token."""

from bardterm.decoders.base import Selector
from bardterm.hookspecs import hookimpl


class Greedy(Selector):
    name = "greedy"
    help = "Always pick the most likely token: deterministic, and prone to loops on small models."

    def choose(self, scores, generator):
        return scores.argmax(dim=-1)


@hookimpl
def register_decoders(register):
    register(Greedy)
