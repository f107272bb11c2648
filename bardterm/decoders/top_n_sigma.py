"""Top-nσ (Tang, Wang, Fang, Zhan and Lin 2024, "Top-nσ: Not All Logits Are You Need", arXiv:2411.07641), as
llama.cpp defines it (`llama_sampler_top_n_sigma_apply` in src/llama-sampling.cpp): keep the tokens whose logit
is within n standard deviations of the largest.

Logits look like a Gaussian cloud of noise with a few informative tokens standing out above it; the cut sits
a fixed number of the cloud's own standard deviations below the top. Scaling the logits scales the cut with
them, so the kept set does not depend on temperature. Tokens already ruled out (-inf) are left out of the
mean and the deviation, as llama.cpp does.
"""

import torch

from bardterm import Param, Processor, hookimpl


class TopNSigma(Processor):
    name = "top_n_sigma"
    help = "Top-nσ: keep tokens whose logit is within n standard deviations of the top one (Tang et al. 2024)."
    order = 25  # before top_k, as in llama.cpp's default order: the deviation is that of all remaining logits
    params = (
        Param("top_n_sigma", float, 1.0, "n: how many standard deviations below the top logit to keep.",
              min=0, max=100, min_inclusive=False),
    )

    def __call__(self, input_ids, scores):
        alive = scores > -float("inf")
        count = alive.sum(dim=-1, keepdim=True)
        logits = torch.where(alive, scores, 0.0).double()  # float64, so that a large vocabulary adds up precisely
        mean = logits.sum(dim=-1, keepdim=True) / count
        spread = torch.where(alive, (logits - mean) ** 2, 0.0).sum(dim=-1, keepdim=True) / count
        cut = scores.amax(dim=-1, keepdim=True).double() - self.top_n_sigma * spread.sqrt()  # population deviation
        return scores.masked_fill(scores.double() < cut, -float("inf"))


@hookimpl
def register_decoders(register):
    register(TopNSigma)
