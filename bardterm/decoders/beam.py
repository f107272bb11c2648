"""Beam search: keep the num_beams best partial continuations at each step (placeholder, being written)."""

from bardterm.decoders.base import Selector
from bardterm.hookspecs import hookimpl
from bardterm.params import Param


class Beam(Selector):
    name = "beam"
    help = "Beam search: keep the best few continuations at every step; finds likely, often repetitive text."
    params = (
        Param("num_beams", int, 4, "How many continuations to keep.", min=2, max=64),
        Param("length_penalty", float, 1.0, "Exponent on length when ranking finished beams (> 1 favours long).",
              min=-10, max=10),
        Param("early_stopping", bool, False, "Stop as soon as num_beams beams have finished."),
    )


@hookimpl
def register_decoders(register):
    register(Beam)
