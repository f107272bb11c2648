"""Top-k (Fan et al., 2018, "Hierarchical Neural Story Generation"): keep only the k most likely tokens."""

from transformers import TopKLogitsWarper

from bardterm import Param, TransformersProcessor, hookimpl


class TopK(TransformersProcessor):
    name = "top_k"
    help = "Keep only the k most likely tokens."
    order = 30
    params = (Param("top_k", int, 50, "How many tokens to keep.", min=1),)

    def make(self):
        return TopKLogitsWarper(top_k=self.top_k)


@hookimpl
def register_decoders(register):
    register(TopK)
