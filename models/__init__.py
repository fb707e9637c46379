"""MICO model architectures and safe loading.

The training recipe and trainers live in :mod:`models.train` (and the privacy accounting in
:mod:`models.privacy`); import them from there, so that ``import models`` does not pay for Opacus.
"""

from models.cnn import CNN
from models.loading import (
    ModelLoadError,
    build_model,
    load_model,
    plain_state_dict,
    resolve_device,
    set_threads,
    strip_opacus_prefix,
    unwrap_model,
)
from models.mlp import MLP

__all__ = [
    "CNN",
    "MLP",
    "ModelLoadError",
    "build_model",
    "load_model",
    "plain_state_dict",
    "resolve_device",
    "set_threads",
    "strip_opacus_prefix",
    "unwrap_model",
]
