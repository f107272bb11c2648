"""Repetition penalty (Keskar et al., 2019, CTRL): make every token already in the text less likely."""

import torch
import torch.nn.functional as F

from bardterm import Param, Processor, hookimpl


class RepetitionPenalty(Processor):
    name = "repetition_penalty"
    help = "Divide the score of every token already seen by a penalty (> 1 discourages repeats)."
    order = 10
    params = (
        Param("repetition_penalty", float, 1.2, "The penalty; 1.0 means none.", min=0, min_inclusive=False,
              max=10),
    )

    def __call__(self, input_ids, scores):
        # transformers' RepetitionPenaltyLogitsProcessor, op for op. Ids past the scores' vocabulary (an embedding
        # table larger than the head) go to one padding column, dropped after.
        vocab_size = scores.shape[-1]
        padded = F.pad(scores, (0, 1))
        input_ids = input_ids.clamp(max=vocab_size)
        seen = torch.gather(padded, 1, input_ids)
        seen = torch.where(seen < 0, seen * self.repetition_penalty, seen / self.repetition_penalty)
        return padded.scatter(1, input_ids, seen)[..., :vocab_size]


@hookimpl
def register_decoders(register):
    register(RepetitionPenalty)
