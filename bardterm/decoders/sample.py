"""Ancestral sampling: draw the next token from the processed distribution."""

import torch

from bardterm.decoders.base import Selector
from bardterm.hookspecs import hookimpl


class Sample(Selector):
    name = "sample"
    help = "Draw each token at random from the distribution the processor chain leaves (seeded by --seed)."

    def choose(self, scores, generator):
        probs = torch.softmax(scores.float(), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@hookimpl
def register_decoders(register):
    register(Sample)
