"""Repetition penalty (Keskar et al., 2019, CTRL): make every token already in the text less likely."""

from transformers import RepetitionPenaltyLogitsProcessor

from bardterm.decoders.base import Processor
from bardterm.hookspecs import hookimpl
from bardterm.params import Param


class RepetitionPenalty(Processor):
    name = "repetition_penalty"
    help = "Divide the score of every token already seen by a penalty (> 1 discourages repeats)."
    order = 10
    params = (
        Param("repetition_penalty", float, 1.2, "The penalty; 1.0 means none.", min=0, min_inclusive=False,
              max=10),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self._processor = RepetitionPenaltyLogitsProcessor(penalty=self.repetition_penalty)

    def __call__(self, input_ids, scores):
        return self._processor(input_ids, scores)


@hookimpl
def register_decoders(register):
    register(RepetitionPenalty)
