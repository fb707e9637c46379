"""Training MICO model folders from seeds: the synthetic challenge and extra shadow models.

A model folder is built under a temporary name beside its final place and renamed only once
complete, so a killed run never leaves a folder that looks finished; a rerun skips done ids.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import torch

from challenges.datasets import BaseDataset, to_tensor
from challenges.fileio import atomic_path, write_text
from challenges.layout import ModelDir
from challenges.splits import Splits, reconstruct
from challenges.tracks import ChallengeParams, scenario_suffix
from models.loading import plain_state_dict
from models.train import recipe_for, train_model


def model_seeds(*key: int) -> tuple[int, int, int]:
    """(challenge, training, membership) seeds drawn from ``key`` (e.g. run seed, scenario, id):
    fresh per model, yet the same on a rerun, so an interrupted build resumes identically.
    Values below 2**32: torchcsprng keeps only the low 32 bits."""
    rng = np.random.default_rng([int(k) for k in key])
    return tuple(int(v) for v in rng.integers(0, 2**32, size=3, dtype=np.uint64))


def save_state_dict(model: torch.nn.Module, path: str) -> str:
    """Save ``model``'s plain (prefix-free, CPU) state dict to ``path`` atomically; returns the path."""
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with atomic_path(os.fspath(path)) as tmp:
        torch.save(plain_state_dict(model), tmp)
    return os.fspath(path)


def train_model_folder(md: ModelDir, params: ChallengeParams, dataset: BaseDataset,
                       seeds: tuple[int, int, int], *, reveal: bool, device="cpu",
                       progress=None, **overrides) -> dict:
    """Train the model that ``seeds`` define with its scenario's recipe and write ``md.path``.

    ``reveal``: write seed_training, seed_membership and solution.csv into the model folder
    (MICO's train phase); otherwise solution.csv goes to the separate ``solutions/`` tree.
    Returns {'accuracy': ..., 'epsilon': ...}.
    """
    sc, st, sm = seeds
    s: Splits = reconstruct(len(dataset), params.len_training, params.len_challenge, sc, st, sm)
    tr, ev = s.train_indices(), s.evaluation
    recipe = recipe_for(params.track, scenario_suffix(md.scenario), **overrides)
    x_eval = y_eval = None
    if len(ev):
        x_eval, y_eval = to_tensor(params.track, dataset.x[ev]), torch.from_numpy(dataset.y[ev])
    result = train_model(params.track, recipe,
                         to_tensor(params.track, dataset.x[tr]), torch.from_numpy(dataset.y[tr]),
                         x_eval, y_eval, device=device, seed=sc, progress=progress)

    os.makedirs(os.path.dirname(md.path), exist_ok=True)
    shutil.rmtree(md.path + ".partial", ignore_errors=True)  # a killed run's leftovers
    solution = ",".join(str(v) for v in s.solutions()) + "\n"
    acc = result.eval_accuracy if result.eval_accuracy is not None else result.train_accuracy
    if not reveal:
        sol_dir = os.path.join(md.data_dir, md.track, "solutions", md.key)
        os.makedirs(sol_dir, exist_ok=True)
        write_text(os.path.join(sol_dir, "solution.csv"), solution)
    with atomic_path(md.path, ".partial") as tmp:
        os.makedirs(tmp)
        save_state_dict(result.model, os.path.join(tmp, "model.pt"))
        files = {"seed_challenge": f"{sc}\n", "accuracy": f"{acc:.6f}\n"}
        if reveal:
            files.update({"seed_training": f"{st}\n", "seed_membership": f"{sm}\n", "solution.csv": solution})
        if result.epsilon is not None:
            files["epsilon"] = f"{result.epsilon:.6f}\n"
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
    return {"accuracy": acc, "train_accuracy": result.train_accuracy, "epsilon": result.epsilon}

