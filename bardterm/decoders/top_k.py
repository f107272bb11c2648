"""Top-k (Fan et al., 2018, "Hierarchical Neural Story Generation"): keep only the k most likely tokens."""

import torch

from bardterm import Param, Processor, hookimpl


class TopK(Processor):
    name = "top_k"
    help = "Keep only the k most likely tokens."
    order = 30
    params = (Param("top_k", int, 50, "How many tokens to keep.", min=1),)

    def __call__(self, input_ids, scores):
        # transformers' TopKLogitsWarper, op for op: ties with the k-th score are kept.
        kth = torch.topk(scores, min(self.top_k, scores.size(-1)))[0][..., -1, None]
        return scores.masked_fill(scores < kth, -float("inf"))


@hookimpl
def register_decoders(register):
    register(TopK)
