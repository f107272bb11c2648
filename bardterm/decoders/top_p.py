"""Nucleus / top-p (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"):
keep the smallest set of tokens whose probabilities add up to p."""

from transformers import TopPLogitsWarper

from bardterm import Param, TransformersProcessor, hookimpl


class TopP(TransformersProcessor):
    name = "top_p"
    help = "Nucleus sampling: keep the most likely tokens that together hold probability p."
    order = 40
    params = (
        Param("top_p", float, 0.9, "The probability mass p to keep.", min=0, max=1, min_inclusive=False),
    )

    def make(self):
        return TopPLogitsWarper(top_p=self.top_p)


@hookimpl
def register_decoders(register):
    register(TopP)
