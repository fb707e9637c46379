"""MICO model architectures, loading/saving and the MICO training recipe.

The training API (``Recipe``, ``recipe_for``, ``TrainResult``, ``train_model``,
``evaluate_accuracy``) lives in :mod:`models.train`; it is also reachable from here
lazily so that ``import models`` does not pay for importing Opacus.
"""
from models.cnn import CNN
from models.mlp import MLP
from models.loading import (
    ModelLoadError,
    build_model,
    load_model,
    plain_state_dict,
    resolve_device,
    save_state_dict,
    strip_opacus_prefix,
    unwrap_model,
)

_TRAIN_NAMES = ("Recipe", "recipe_for", "TrainResult", "train_model", "evaluate_accuracy")

__all__ = [
    "CNN", "MLP", "ModelLoadError", "build_model", "load_model", "plain_state_dict",
    "resolve_device", "save_state_dict", "strip_opacus_prefix", "unwrap_model", *_TRAIN_NAMES,
]


def __getattr__(name):
    if name in _TRAIN_NAMES:
        from models import train
        return getattr(train, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
