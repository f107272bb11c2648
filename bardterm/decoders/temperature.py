"""Temperature: divide the logits by T. Below 1 sharpens the distribution, above 1 flattens it."""

from transformers import TemperatureLogitsWarper

from bardterm import Param, TransformersProcessor, hookimpl


class Temperature(TransformersProcessor):
    name = "temperature"
    help = "Divide logits by T: < 1 is more conservative, > 1 more adventurous."
    order = 20
    params = (
        Param("temperature", float, 1.0, "The divisor T.", min=0, min_inclusive=False, max=100,
              hint="temperature 0 means always the most likely token: use --decoder greedy"),
    )

    def make(self):
        return TemperatureLogitsWarper(self.temperature)


@hookimpl
def register_decoders(register):
    register(Temperature)
