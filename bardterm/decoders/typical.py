"""Locally typical sampling (Meister, Pimentel, Wiher and Cotterell 2023, "Locally Typical Sampling", TACL,
arXiv:2202.00666): keep the tokens whose surprise is closest to the distribution's entropy, the expected
surprise, until they hold typical_p of the mass.

Human text is neither the likeliest nor the most surprising: each word carries about as much information as
expected. Ranking by |surprise - entropy| instead of by probability drops both the dull top and the junk tail.
Scores are identical to transformers' `TypicalLogitsWarper` (tests/test_truncation_samplers.py).
"""

import torch

from bardterm import Param, Processor, hookimpl


class Typical(Processor):
    name = "typical"
    help = "Typical sampling: keep the tokens whose surprise is nearest the entropy (Meister et al. 2023)."
    order = 42
    params = (
        Param("typical_p", float, 0.9, "The probability mass of the most typical tokens to keep.",
              min=0, max=1, min_inclusive=False, max_inclusive=False),
    )

    def __call__(self, input_ids, scores):
        log_probs = torch.log_softmax(scores, dim=-1)
        entropy = -(log_probs * log_probs.exp()).nansum(-1, keepdim=True)  # nansum: ruled-out tokens give 0 * -inf
        distance = (-log_probs - entropy).abs()  # how far each token's surprise is from the expected surprise
        sorted_distance, order = torch.sort(distance)
        mass = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        # The first token at which the running mass reaches typical_p is the last one kept.
        last = (mass < self.typical_p).sum(dim=-1, keepdim=True).clamp_(max=scores.shape[-1] - 1)
        remove_sorted = sorted_distance > sorted_distance.gather(-1, last)
        remove_sorted[..., :1] = False  # the most typical token always stays
        return scores.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), -float("inf"))


@hookimpl
def register_decoders(register):
    register(Typical)
