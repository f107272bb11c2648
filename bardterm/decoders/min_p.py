"""Min-p (Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs",
arXiv:2407.01082): keep a token only if it is at least min_p times as likely as the most likely token.

When the model is sure (one token holds most of the mass) few others survive; when it is unsure (a flat
distribution) many do. Top-p cuts at a fixed mass instead, which lets junk through in the confident case.
Scores are identical to transformers' `MinPLogitsWarper` (tests/test_truncation_samplers.py).
"""

import torch

from bardterm import Param, Processor, hookimpl


class MinP(Processor):
    name = "min_p"
    help = "Min-p: keep tokens at least min_p times as likely as the most likely one (Nguyen et al. 2024)."
    order = 41  # after top_p, as transformers orders them
    params = (
        Param("min_p", float, 0.1, "The fraction of the top token's probability a token needs to stay.",
              min=0, max=1),
        Param("min_tokens_to_keep", int, 1, "Never keep fewer tokens than this.", min=1),
    )

    def __call__(self, input_ids, scores):
        probs = torch.softmax(scores, dim=-1)
        remove = probs < self.min_p * probs.amax(dim=-1, keepdim=True)
        keep = min(self.min_tokens_to_keep, scores.shape[-1])
        remove.scatter_(-1, probs.topk(keep, dim=-1).indices, False)  # the top few always stay
        return scores.masked_fill(remove, -float("inf"))


@hookimpl
def register_decoders(register):
    register(MinP)


@hookimpl
def register_presets(register):
    # The paper's point: with min-p, a high temperature stays coherent.
    register("min_p_hot", "Hot sampling (temperature 1.5) kept coherent by min-p 0.1, as the paper suggests.",
             decoder="sample", temperature=1.5, min_p=0.1)
