"""Temperature: divide the logits by T. Below 1 sharpens the distribution, above 1 flattens it."""

from transformers import TemperatureLogitsWarper

from bardterm.decoders.base import Processor
from bardterm.hookspecs import hookimpl
from bardterm.params import Param


class Temperature(Processor):
    name = "temperature"
    help = "Divide logits by T: < 1 is more conservative, > 1 more adventurous."
    order = 20
    params = (
        Param("temperature", float, 1.0, "The divisor T.", min=0, min_inclusive=False, max=100,
              hint="temperature 0 means always the most likely token: use --decoder greedy"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self._warper = TemperatureLogitsWarper(self.temperature)

    def __call__(self, input_ids, scores):
        return self._warper(input_ids, scores)


@hookimpl
def register_decoders(register):
    register(Temperature)
