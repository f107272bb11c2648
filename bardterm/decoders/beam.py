"""Beam search: keep the num_beams best partial continuations at each step.

The search follows transformers' `GenerationMixin._beam_search` (5.x) step for step, so that it returns
exactly the token ids of `model.generate(num_beams=N, do_sample=False, ...)`: log-softmax scores go through
the processor chain, the top `2 * num_beams` continuations are kept so that beams ending in EOS can be set
aside, finished hypotheses are ranked by score / length ** length_penalty, and the same early-stop heuristic
ends the search. Unlike transformers, it streams: after every step it yields the best live beam, with the
prefix every beam and finished hypothesis share marked as committed. Chosen by name it runs with a repetition
penalty of 1.2, as greedy does, and never repeats a run of 6 tokens; `--repetition-penalty 1
--no-repeat-ngram-size 0` (or `--chain ''`) gives generate()'s plain beam search.
"""

import torch

from bardterm import Hypothesis, Param, Selector, hookimpl

_NEVER = -1.0e9  # the score transformers gives to candidates that must not be picked


class Beam(Selector):
    name = "beam"
    help = "Beam search: keep the best few continuations at every step (--chain '' for the plain one)."
    # As greedy, a repetition penalty: without it small models' likeliest text is a loop. But beam search
    # ranks log-probabilities, where the penalty barely moves a likely token, so it also blocks repeated 6-grams.
    defaults = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 6}
    params = (
        Param("num_beams", int, 4, "How many continuations to keep.", min=2, max=64),
        Param("length_penalty", float, 1.0, "Exponent on length when ranking finished beams (> 1 favours long).",
              min=-10, max=10),
        Param("early_stopping", bool, False, "Stop as soon as num_beams beams have finished."),
    )

    def search(self, run):
        beams = self.num_beams
        prompt_len = cur_len = run.prompt_ids.shape[1]
        max_len = prompt_len + run.max_new_tokens
        device = run.prompt_ids.device
        eos = torch.tensor(sorted(run.eos_token_ids), dtype=torch.long, device=device)
        candidates = max(2, 1 + len(eos)) * beams  # enough that num_beams survive even if the best all end

        # Live beams, and the best finished hypotheses (-1e9 placeholders until some finish), as in transformers.
        running = run.prompt_ids.new_zeros((beams, max_len))
        running[:, :cur_len] = run.prompt_ids
        running_scores = torch.full((beams,), _NEVER, device=device)
        running_scores[0] = 0.0  # only the first copy of the prompt may expand at the first step
        done = running.clone()
        done_scores = torch.full((beams,), _NEVER, device=device)
        done_lengths = torch.full((beams,), cur_len, dtype=torch.long, device=device)
        is_done = torch.zeros(beams, dtype=torch.bool, device=device)
        may_improve = True
        top_beams = torch.arange(candidates, device=device) < beams

        step = run.forward(running[:, :cur_len])  # the prompt, once per beam (as generate() does)
        shown = None
        while True:
            log_probs = run.process(running[:, :cur_len], self.chain_input(step.logits))
            vocab = log_probs.shape[-1]
            totals = (log_probs + running_scores[:, None]).view(-1)
            top_scores, top_indices = torch.topk(totals, k=candidates)
            parents = top_indices // vocab
            extended = running[parents]
            extended[:, cur_len] = top_indices % vocab
            ends = torch.isin(extended[:, cur_len], eos) | (cur_len + 1 >= max_len)

            # The best unfinished candidates carry on.
            live_scores = top_scores + ends.float() * _NEVER
            keep = torch.topk(live_scores, k=beams)[1]
            running, running_scores, parents = extended[keep], live_scores[keep], parents[keep]

            # The best of the just-finished candidates join the finished hypotheses if they rank high enough.
            ranked = top_scores / ((cur_len + 1 - prompt_len) ** self.length_penalty)
            if self.early_stopping and bool(is_done.all()):
                ranked = ranked + _NEVER
            if not may_improve:
                ranked = ranked + _NEVER
            just_done = ends & top_beams
            ranked = ranked + (~just_done) * _NEVER
            merged = torch.topk(torch.cat((done_scores, ranked)), k=beams)[1]
            done = torch.cat((done, extended))[merged]
            done_scores = torch.cat((done_scores, ranked))[merged]
            done_lengths = torch.cat((done_lengths, done_lengths.new_full((candidates,), cur_len + 1)))[merged]
            is_done = torch.cat((is_done, just_done))[merged]

            cur_len += 1
            may_improve = may_improve and self._may_improve(running_scores, done_scores, is_done, cur_len - prompt_len)
            finished = (not may_improve or (self.early_stopping and bool(is_done.all())) or bool(ends.all()))
            if finished:
                break
            best = running[0, prompt_len:cur_len].tolist()
            if best != shown:
                shown = best
                yield Hypothesis(best, committed=self._shared_prefix(running, done, done_lengths, is_done,
                                                                    prompt_len, cur_len))
            step.cache.reorder_cache(parents)
            step = run.forward(running[:, cur_len - 1:cur_len], step.cache)
        yield Hypothesis(done[0, prompt_len:done_lengths[0]].tolist())

    def chain_input(self, logits):
        """Sequences are ranked by summed log-probabilities, so the chain sees those."""
        return torch.log_softmax(logits, dim=-1)

    def _may_improve(self, running_scores, done_scores, is_done, length) -> bool:
        """transformers' heuristic: can the best live beam still beat the worst finished hypothesis?"""
        best_possible = running_scores[:1] / (length ** self.length_penalty)
        worst_done = torch.where(is_done, done_scores.min(), _NEVER)
        return bool((best_possible > worst_done).any())

    @staticmethod
    def _shared_prefix(running, done, done_lengths, is_done, prompt_len, cur_len) -> int:
        """How many generated tokens every live beam and finished hypothesis agree on: those cannot change."""
        rows = [running[:, :cur_len]] + [done[i:i + 1, :done_lengths[i]] for i in range(len(is_done)) if is_done[i]]
        length = min(row.shape[1] for row in rows)
        same = torch.ones(length - prompt_len, dtype=torch.bool, device=running.device)
        for row in rows:
            same &= (row[:, prompt_len:length] == running[0, prompt_len:length]).all(dim=0)
        differs = (~same).nonzero()
        return int(differs[0]) if len(differs) else length - prompt_len


@hookimpl
def register_decoders(register):
    register(Beam)
