"""Temperature: divide the logits by T. Below 1 sharpens the distribution, above 1 flattens it."""

from bardterm import Param, Processor, hookimpl


class Temperature(Processor):
    name = "temperature"
    help = "Divide logits by T: < 1 is more conservative, > 1 more adventurous."
    order = 20
    params = (
        Param("temperature", float, 1.0, "The divisor T.", min=0, min_inclusive=False, max=100,
              hint="temperature 0 means always the most likely token: use --decoder greedy"),
    )

    def __call__(self, input_ids, scores):
        return scores / self.temperature  # transformers' TemperatureLogitsWarper


@hookimpl
def register_decoders(register):
    register(Temperature)
