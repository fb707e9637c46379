"""The CIFAR-10 convolutional network used by MICO's cifar10 track.

Layer order and sizes are identical to MICO's ``CNN`` so that its ``model.pt``
state dicts (keys ``cnn.0.*``, ``cnn.3.*``, ``cnn.5.*``, ``cnn.9.*``) load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class CNN(nn.Module):
    """Tanh CNN with ~0.9M parameters; input ``[B, 3, 32, 32]`` (normalised), output ``[B, 10]`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=8, stride=2, padding=3),  # 0: [B,3,32,32] -> [B,128,16,16]
            nn.Tanh(),  # 1
            nn.MaxPool2d(kernel_size=3, stride=1),  # 2: -> [B,128,14,14]
            nn.Conv2d(128, 256, kernel_size=3),  # 3: -> [B,256,12,12]
            nn.Tanh(),  # 4
            nn.Conv2d(256, 256, kernel_size=3),  # 5: -> [B,256,10,10]
            nn.Tanh(),  # 6
            nn.AvgPool2d(kernel_size=2, stride=2),  # 7: -> [B,256,5,5]
            nn.Flatten(),  # 8: -> [B,6400]
            nn.Linear(in_features=6400, out_features=10),  # 9: -> [B,10]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, 32, 32] -> logits [B, 10]
        return self.cnn(x)
