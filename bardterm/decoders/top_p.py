"""Nucleus / top-p (Holtzman et al., 2020, "The Curious Case of Neural Text Degeneration"):
keep the smallest set of tokens whose probabilities add up to p."""

import torch

from bardterm import Param, Processor, hookimpl


class TopP(Processor):
    name = "top_p"
    help = "Nucleus sampling: keep the most likely tokens that together hold probability p."
    order = 40
    params = (
        Param("top_p", float, 0.9, "The probability mass p to keep.", min=0, max=1, min_inclusive=False),
    )

    def __call__(self, input_ids, scores):
        # transformers' TopPLogitsWarper, op for op: drop the least likely tokens while their mass stays <= 1 - p,
        # always keeping the most likely one.
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        sorted_remove = cumulative <= (1 - self.top_p)
        sorted_remove[..., -1:] = 0
        remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)
        return scores.masked_fill(remove, -float("inf"))


@hookimpl
def register_decoders(register):
    register(TopP)
