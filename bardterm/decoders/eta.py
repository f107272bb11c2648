"""Eta sampling (Hewitt, Manning and Liang 2022, "Truncation Sampling as Language Model Desmoothing",
arXiv:2210.15191): epsilon sampling with a floor that follows the entropy,
eta = min(eta_cutoff, sqrt(eta_cutoff) * exp(-entropy)).

A flat distribution (high entropy: many good continuations) gets a low floor and keeps many tokens; a peaked
one gets the full eta_cutoff and keeps few.
Scores are identical to transformers' `EtaLogitsWarper` (tests/test_truncation_samplers.py).
"""

import torch

from bardterm import Param, Processor, hookimpl
from bardterm.decoders.epsilon import keep_above


class Eta(Processor):
    name = "eta"
    help = "Eta sampling: rule out tokens below a floor that falls as the entropy rises (Hewitt et al. 2022)."
    order = 44
    params = (
        Param("eta_cutoff", float, 2e-3, "The highest floor, for a peaked distribution (the paper: 3e-4 to 2e-3).",
              min=0, max=1, min_inclusive=False, max_inclusive=False),
    )

    def __call__(self, input_ids, scores):
        entropy = torch.distributions.Categorical(logits=scores).entropy()
        cutoff = torch.tensor(self.eta_cutoff, device=scores.device)  # float32, as the floor is compared in it
        floor = torch.minimum(cutoff, torch.sqrt(cutoff) * torch.exp(-entropy))
        return keep_above(scores, floor[..., None])


@hookimpl
def register_decoders(register):
    register(Eta)
