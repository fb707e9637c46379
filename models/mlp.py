"""The Purchase-100 fully-connected network used by MICO's purchase100 track (Bao et al., 2022).

Keys ``mlp.0.*`` and ``mlp.2.*`` match MICO's ``MLP`` so its ``model.pt`` files load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class MLP(nn.Module):
    """600 -> 128 (tanh) -> 100; input ``[B, 600]`` 0/1 floats, output ``[B, 100]`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(600, 128),  # 0: [B,600] -> [B,128]
            nn.Tanh(),  # 1
            nn.Linear(128, 100),  # 2: [B,128] -> [B,100]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 600] -> logits [B, 100]
        return self.mlp(x)
