"""Contrastive search (Su, Lan, Wang, Yogatama, Kong and Collier 2022, "A Contrastive Framework for Neural Text
Generation", arXiv:2202.06417): at each step, of the top_k most likely tokens take the one that best balances
its probability against how much it repeats what the text already says:

    score(v) = (1 - penalty_alpha) * p(v | text) - penalty_alpha * max_j cos(h_v, h_j)

where h_v is the model's last hidden state after v and the h_j are those of every token so far, prompt
included. A token whose representation is close to one already there (a loop starting) is pushed down.

It is the plugin guide's worked example of a selector that needs the model and the cache (plugins/README.md),
and is written only against the public plugin API. Step for step it is transformers 4.x's
`_contrastive_search` (its tests compare token ids with transformers 4.55; see tests/reference/): each step
runs the top_k candidates as top_k rows of one batch, on top_k copies of the cache, then keeps the chosen row.
"""

import torch

from bardterm import Hypothesis, Param, Selector, hookimpl


class Contrastive(Selector):
    name = "contrastive"
    help = "Contrastive search: the likely token least like the text so far (Su et al. 2022); deterministic."
    params = (
        Param("top_k", int, 4, "How many of the most likely tokens are candidates.", min=1, max=100),
        Param("penalty_alpha", float, 0.6, "Weight of the degeneration penalty against probability "
              "(0 is greedy search).", min=0, max=1),
    )

    def search(self, run):
        prompt = run.forward(run.prompt_ids, hidden="all")  # the prompt's hidden states are the first context
        context, logits, cache = prompt.hidden, prompt.logits, prompt.cache  # (1, length, hidden), (1, vocab)
        sequence = torch.empty((1, run.prompt_length + run.max_new_tokens), dtype=torch.long,
                               device=run.prompt_ids.device)
        sequence[:, :run.prompt_length] = run.prompt_ids
        tokens: list[int] = []
        while True:
            input_ids = sequence[:, :run.prompt_length + len(tokens)]
            probs = torch.softmax(run.process(input_ids, self.chain_input(logits)), dim=-1)
            top_probs, top_ids = torch.topk(probs, dim=-1, k=min(self.top_k, probs.shape[-1]))
            width = top_ids.shape[-1]

            cache.repeat_rows(width)  # one row per candidate, each running on the text so far
            candidates = run.forward(top_ids.view(-1, 1), cache, hidden="all")  # (width, vocab), (width, 1, hidden)
            best = self.rank(context, candidates.hidden, top_probs)

            tokens.append(int(top_ids[0, best]))
            sequence[0, input_ids.shape[1]] = tokens[-1]
            yield Hypothesis(list(tokens))
            if len(tokens) >= run.max_new_tokens or tokens[-1] in run.eos_token_ids:
                return
            cache = candidates.cache
            cache.select_rows([best])  # the chosen candidate's row goes on
            context = torch.cat([context, candidates.hidden[best:best + 1]], dim=1)
            logits = candidates.logits[best:best + 1]

    def rank(self, context, candidates, probs) -> int:
        """Which candidate wins: `context` (1, length, hidden) states so far, `candidates` (width, 1, hidden)
        each candidate's state, `probs` (1, width) their probabilities. As transformers' `_ranking_fast`."""
        width = candidates.shape[0]
        context = context.repeat_interleave(width, dim=0)
        cosine = torch.matmul(context / context.norm(dim=2, keepdim=True),
                              (candidates / candidates.norm(dim=2, keepdim=True)).transpose(1, 2)).squeeze(-1)
        degeneration_penalty = cosine.max(dim=-1).values  # each candidate's closest earlier token
        scores = (1.0 - self.penalty_alpha) * probs.view(-1) - self.penalty_alpha * degeneration_penalty
        return int(scores.max(dim=-1).indices)


@hookimpl
def register_decoders(register):
    register(Contrastive)
