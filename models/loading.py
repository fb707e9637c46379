"""Building, loading and saving MICO models.

``load_model`` accepts the ``model.pt`` files MICO distributes (plain state dicts,
possibly with Opacus' ``_module.`` key prefix) and files written by
``production.folders.save_state_dict``.
Every failure is reported as a one-line :class:`ModelLoadError` naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from typing import Mapping, Union

import torch
import torch.nn as nn

from models.cnn import CNN
from models.mlp import MLP

_ARCHITECTURES = {"cifar10": CNN, "purchase100": MLP}
_OPACUS_PREFIX = "_module."
_FIX_HINT = "re-download it with download_files.py (or retrain it)"
# A designed shadow (<scenario>/shadow/model_<i>/model.pt) is ours to retrain, not to download.
_SHADOW_FIX_HINT = "delete its folder and run train_shadows.py again, which retrains it"

PathLike = Union[str, "os.PathLike[str]"]
DeviceLike = Union[str, torch.device]


class ModelLoadError(ValueError):
    """A model file is missing, unreadable, or does not fit the track's architecture."""


def build_model(track: str) -> nn.Module:
    """A freshly initialised model for ``track`` ('cifar10' -> CNN, 'purchase100' -> MLP)."""
    try:
        cls = _ARCHITECTURES[track]
    except (KeyError, TypeError):
        raise ValueError(f"unknown track {track!r}: choose one of {', '.join(_ARCHITECTURES)}") from None
    return cls()


def resolve_device(name: DeviceLike = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; otherwise ``torch.device(name)``.

    Raises ValueError for an unparsable name or a CUDA device that is not available.
    """
    if isinstance(name, torch.device):
        dev = name
    else:
        if name is None or str(name).strip().lower() == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(str(name).strip())
        except (RuntimeError, ValueError):
            raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} requested but CUDA is not available: use 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(dev)!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return dev


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch's work in this process (None: keep torch's default, one per
    core). On a machine shared with other jobs, fewer threads than cores avoid oversubscription."""
    if n is not None:
        torch.set_num_threads(int(n))


def strip_opacus_prefix(state_dict: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Remove (possibly repeated) leading ``_module.`` from every key, as Opacus' wrapper adds it."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state_dict.items():
        while k.startswith(_OPACUS_PREFIX):
            k = k[len(_OPACUS_PREFIX) :]
        out[k] = v
    return out


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside Opacus' GradSampleModule wrapper(s) (or ``model`` itself)."""
    while isinstance(getattr(model, "_module", None), nn.Module):
        model = model._module
    return model


def plain_state_dict(model: nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """``model``'s state dict with prefix-free keys and detached CPU tensors."""
    sd = strip_opacus_prefix(unwrap_model(model).state_dict())
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in sd.items())


def _excerpt(e: Exception, limit: int) -> str:
    """The first line of an exception's text, cut to ``limit`` characters (torch's texts are long)."""
    lines = str(e).strip().splitlines() or [""]
    return lines[0][:limit]


def _describe_load_error(e: Exception) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)`` (torch's own text is long)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", text)
        detail = f": {m.group(1)}" if m else ""
        return f"not a plain tensor state dict, or corrupt (refused by the safe weights-only loader{detail})"
    if isinstance(e, EOFError) or "zip archive" in text or "PytorchStreamReader" in text:
        return "corrupt or truncated file"
    if isinstance(e, OSError):
        return f"cannot read the file ({type(e).__name__}: {_excerpt(e, 120)})"
    return f"unreadable ({type(e).__name__}: {_excerpt(e, 120)})"


def _describe_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A short description of why ``state_dict`` does not fit ``model`` (None if it fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
    if unexpected:
        parts.append(f"unexpected keys {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
    if shapes:
        parts.append(f"shape mismatch {shapes[:2]}{'...' if len(shapes) > 2 else ''}")
    return "; ".join(parts) or None


def load_model(track: str, path: PathLike, device: DeviceLike = "cpu") -> nn.Module:
    """Load a ``model.pt`` state dict for ``track`` onto ``device``; returns the model in eval mode.

    Uses ``torch.load(weights_only=True)`` so a file can never execute code. Raises
    :class:`ModelLoadError` (one line, naming ``path``) on any problem with the file, and
    ValueError for an unknown track or device.
    """
    model = build_model(track)
    dev = resolve_device(device)
    path_s = os.fspath(path)

    shown = path_s if path_s.isprintable() else repr(path_s)  # keep the message on one line

    def fail(reason: str) -> ModelLoadError:
        hint = _SHADOW_FIX_HINT if "shadow" in os.path.normpath(path_s).split(os.sep)[:-1] else _FIX_HINT
        return ModelLoadError(f"cannot load {track} model {shown}: {reason}; {hint}")

    if not os.path.exists(path_s):
        raise fail("file not found")
    if not os.path.isfile(path_s):
        raise fail("not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol")
            obj = torch.load(path_s, map_location=dev, weights_only=True)
    except Exception as e:  # corrupt zip, truncated file, non-weights pickle, ...
        raise fail(_describe_load_error(e)) from None
    if not isinstance(obj, Mapping):
        raise fail(f"expected a state dict, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise fail(f"not a plain state dict (non-tensor entries such as {bad[0]!r})")
    state_dict = strip_opacus_prefix(obj)
    mismatch = _describe_mismatch(model, state_dict)
    if mismatch:
        raise fail(f"does not match the {track} architecture ({mismatch})")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as e:
        raise fail(f"does not match the {track} architecture ({type(e).__name__}: {_excerpt(e, 160)})") from None
    model.to(dev)
    model.eval()
    return model
