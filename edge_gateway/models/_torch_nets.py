"""The torch modules. Imports torch at load time: only functions import this module, lazily."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .specs import DIGITS_HIDDEN


class XorNet(nn.Module):
    """2 → 10 → 2 MLP with a sigmoid hidden layer (as NVFlare's XorNet, wider)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear1 = nn.Linear(2, 10)
        self.linear2 = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(torch.sigmoid(self.linear1(x)))


class DigitsNet(nn.Module):
    """64 → DIGITS_HIDDEN → 10 ReLU MLP for scikit-learn's 8×8 digits (inputs scaled to [0, 1])."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, DIGITS_HIDDEN)
        self.fc2 = nn.Linear(DIGITS_HIDDEN, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class Cifar10Net(nn.Module):
    """The small CNN of NVFlare's iOS example: 3×32×32 → conv5 → pool → conv5 → pool → 400 → 120 → 84 → 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Cifar10WideNet(Cifar10Net):
    """Cifar10Net with 32 and 64 channels and a 900-unit fc1: 1,571,130 parameters (6.3 MB)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.fc1 = nn.Linear(64 * 5 * 5, 900)
        self.fc2 = nn.Linear(900, 84)


NET_CLASSES: dict[str, type[nn.Module]] = {
    "xor": XorNet,
    "digits": DigitsNet,
    "cifar10": Cifar10Net,
    "cifar10_wide": Cifar10WideNet,
}
