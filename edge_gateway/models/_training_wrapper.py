"""The module exported as a training program. Imports torch: only functions import this lazily."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TrainingWrapper(nn.Module):
    """`forward(x, y) -> (mean cross-entropy, argmax predictions)` around a net held as `self.net`.

    ExecuTorch's training export takes the loss from the first output, and the attribute name
    gives every parameter its `net.` prefix. `x` arrives flat, `(batch, features)`, and is
    reshaped to the net's sample shape inside the program.
    """

    def __init__(self, net: nn.Module, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net = net
        self._sample_shape = sample_shape

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x.reshape(-1, *self._sample_shape))
        return F.cross_entropy(logits, y), logits.argmax(dim=1)
