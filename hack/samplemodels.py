"""Small models made here with torch (random weights, no downloads): the demo serves one, the tests convert them."""

from __future__ import annotations

import torch


class CNN(torch.nn.Module):
    """A small image classifier: two convolutions, global average pooling, 10 classes, on 3x32x32 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))
