"""Mirostat v2 sampling, a bardterm plugin.

Basu, Ramachandran, Keskar and Varshney (2021), "Mirostat: A Neural Text Decoding Algorithm that Directly
Controls Perplexity", ICLR 2021, arXiv:2007.14966. This is version 2 as llama.cpp implements it
(`llama_sampler_mirostat_v2` in llama.cpp's src/llama-sampling.cpp).

Sampling with a fixed cut-off (top-k, top-p) drifts into boredom (repetition) or confusion (incoherence)
depending on the text so far. Mirostat instead aims for a target surprise: `tau` bits per token. Each step it
keeps only tokens whose surprise (-log2 p) is at most `mu`, samples from them, and then moves `mu` by `eta`
times the error between the surprise it just observed and `tau`: a feedback loop, so `mu` is per-run state.
"""

import torch

from bardterm import Param, Selector, hookimpl
from bardterm.decoders.base import Selector

bardterm_api = 2  # the plugin API this was written for; bardterm refuses versions it does not support


class Mirostat(Selector):
    name = "mirostat"
    help = "Mirostat v2: sample while steering the surprise of each token towards tau bits (Basu et al. 2021)."
    params = (
        Param("tau", float, 5.0, "Target surprise in bits per token: lower is more focused.", min=0,
              min_inclusive=False, max=30),
        Param("eta", float, 0.1, "Learning rate: how fast mu follows the error.", min=0, min_inclusive=False,
              max=1),
    )

    def start_run(self, run):
        # mu starts at 2 * tau for every generation (the paper's and llama.cpp's choice), not once per setup.
        self.mu = None

    def choose(self, scores, generator):
        probs = torch.softmax(scores.float(), dim=-1)
        if self.mu is None:
            self.mu = torch.full((probs.shape[0], 1), 2 * self.tau)
        surprise = -torch.log2(probs)
        keep = (surprise <= self.mu) | (probs == probs.amax(dim=-1, keepdim=True))  # the top token always stays
        kept = torch.where(keep, probs, 0.0)
        kept = kept / kept.sum(dim=-1, keepdim=True)
        token = torch.multinomial(kept, num_samples=1, generator=generator)  # the run's RNG: seeds repeat
        observed = -torch.log2(kept.gather(-1, token))
        self.mu = self.mu - self.eta * (observed - self.tau)
        return token.squeeze(1)


@hookimpl
def register_decoders(register):
    register(Mirostat)
