"""No-repeat n-grams (Paulus et al., 2018, "A Deep Reinforced Model for Abstractive Summarization"): rule out
any token that would repeat an n-gram already in the text. The standard cure for beam search's loops, where a
repetition penalty barely moves a likely token (it scales a log-probability near 0)."""

from bardterm import Param, TransformersProcessor, hookimpl


class NoRepeatNGram(TransformersProcessor):
    name = "no_repeat_ngram"
    help = "Never repeat a run of n tokens already in the text (0 turns it off)."
    order = 15
    params = (
        Param("no_repeat_ngram_size", int, 6, "n: the length of the token runs that may occur only once.",
              min=0, max=64),
    )

    def make(self):
        from transformers import NoRepeatNGramLogitsProcessor  # imported when used: transformers is slow to import

        return NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size) if self.no_repeat_ngram_size else _unchanged


def _unchanged(input_ids, scores):
    return scores


@hookimpl
def register_decoders(register):
    register(NoRepeatNGram)
