"""XTC, "exclude top choices" (p-e-w, text-generation-webui pull request #6335, 2024), as llama.cpp defines it
(`llama_sample_xtc_apply` in src/llama-sampling.cpp): with probability xtc_probability, rule out every token
at least xtc_threshold likely except the least likely of them.

Truncation samplers cut the tail; XTC sometimes cuts the head instead. When several tokens are all viable
(each above the threshold) the obvious ones go and the least obvious viable one stays, which breaks the
clichés and loops a model falls into, while a step with only one viable token is left alone: the text keeps
its sense. The coin is drawn from the run's seeded generator, so the same seed gives the same text.
"""

import torch

from bardterm import Param, Processor, hookimpl


def exclude_top_choices(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Rule out, in each row, every token with probability >= threshold but the least likely such token."""
    probs = torch.softmax(scores, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    above = sorted_probs >= threshold
    # Sorted, the tokens above the threshold come first; all of them but the last go, if there are two or more.
    remove_sorted = above & torch.roll(above, shifts=-1, dims=-1)
    remove_sorted[..., -1] = False
    return scores.masked_fill(remove_sorted.scatter(-1, order, remove_sorted), -float("inf"))


class Xtc(Processor):
    name = "xtc"
    help = "XTC: now and then rule out the most likely tokens, keeping the least likely viable one (p-e-w 2024)."
    order = 48  # after the truncation samplers, as llama.cpp orders it
    params = (
        Param("xtc_probability", float, 0.5, "The chance, at each step, that the top choices are excluded.",
              min=0, max=1),
        Param("xtc_threshold", float, 0.1, "The probability that makes a token a top choice (above 0.5 at most "
              "one token can be, so XTC would never act).", min=0, max=0.5, min_inclusive=False),
    )

    def start_run(self, run):
        self.generator = run.generator

    def __call__(self, input_ids, scores):
        # One coin per row, drawn whatever the scores: the same seed gives the same coins. Probability 0 never
        # acts and 1 always does.
        coins = torch.rand(scores.shape[0], generator=self.generator, device=self.generator.device)
        act = (coins < self.xtc_probability).to(scores.device)[:, None]
        return torch.where(act, exclude_top_choices(scores, self.xtc_threshold), scores)


@hookimpl
def register_decoders(register):
    register(Xtc)
