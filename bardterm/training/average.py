"""An exponential moving average of the weights (`--ema DECAY`): what is evaluated and saved when it is on.

Polyak averaging (Polyak & Juditsky 1992; for deep nets, e.g. Izmailov et al. 2018): the average of the
weights over the last ~1/(1 - decay) steps sits nearer the middle of the region that the optimizer bounces
around in than any one step does, so it tends to generalise better, for free while the learning rate is high.
"""

from __future__ import annotations

import copy

import torch


class WeightAverage:
    """A copy of `model` whose weights follow the model's: `averaged += (1 - d) * (weights - averaged)` per step.

    Early updates use a smaller decay, `d = min(decay, (1 + n) / (10 + n))` after n updates (as TensorFlow's
    ExponentialMovingAverage with num_updates), so the average is not held back by the random initial weights.
    """

    def __init__(self, model, decay: float):
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()  # deepcopy keeps tied weights tied
        self.model.requires_grad_(False)
        self._source = list(model.parameters())
        self._averaged = list(self.model.parameters())

    def update(self) -> None:
        """Call after each optimizer step."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self._averaged, self._source, 1.0 - decay)
