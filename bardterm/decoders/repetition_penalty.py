"""Repetition penalty (Keskar et al., 2019, CTRL): make every token already in the text less likely."""

from transformers import RepetitionPenaltyLogitsProcessor

from bardterm import Param, TransformersProcessor, hookimpl


class RepetitionPenalty(TransformersProcessor):
    name = "repetition_penalty"
    help = "Divide the score of every token already seen by a penalty (> 1 discourages repeats)."
    order = 10
    params = (
        Param("repetition_penalty", float, 1.2, "The penalty; 1.0 means none.", min=0, min_inclusive=False,
              max=10),
    )

    def make(self):
        return RepetitionPenaltyLogitsProcessor(penalty=self.repetition_penalty)


@hookimpl
def register_decoders(register):
    register(RepetitionPenalty)
