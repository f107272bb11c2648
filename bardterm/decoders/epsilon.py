"""Epsilon sampling (Hewitt, Manning and Liang 2022, "Truncation Sampling as Language Model Desmoothing",
arXiv:2210.15191): rule out every token less likely than a fixed epsilon_cutoff.

A model spreads a little probability over every token ("smoothing"); the tail it puts there is noise, not
knowledge. A fixed floor removes it without looking at the rest of the distribution.
Scores are identical to transformers' `EpsilonLogitsWarper` (tests/test_truncation_samplers.py).
"""

import torch

from bardterm import Param, Processor, hookimpl


def keep_above(scores: torch.Tensor, floor) -> torch.Tensor:
    """Rule out the tokens whose probability is below `floor` (a number or a (batch, 1) tensor); the most
    likely token always stays."""
    remove = (torch.softmax(scores, dim=-1) < floor) & (scores < scores.amax(dim=-1, keepdim=True))
    return scores.masked_fill(remove, -float("inf"))


class Epsilon(Processor):
    name = "epsilon"
    help = "Epsilon sampling: rule out every token less likely than epsilon_cutoff (Hewitt et al. 2022)."
    order = 43
    params = (
        Param("epsilon_cutoff", float, 3e-4, "The smallest probability a token may have (the paper: 3e-4).",
              min=0, max=1, min_inclusive=False, max_inclusive=False),
    )

    def __call__(self, input_ids, scores):
        return keep_above(scores, self.epsilon_cutoff)


@hookimpl
def register_decoders(register):
    register(Epsilon)
