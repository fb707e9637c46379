"""One trainer reproducing MICO's training recipe for the cifar10 and purchase100 tracks.

Facts taken from MICO's ``training/train_{cifar10,purchase100}.py`` and ``*.sh``:

* Loss: cross-entropy (mean). cifar10: SGD(lr, momentum=0); purchase100: Adam(lr).
* ``StepLR(step_size, gamma)`` built *after* the privacy engine is attached and stepped once
  at the end of every epoch.
* Non-private ("inf"): a ``DataLoader(batch_size=B)`` *without shuffling* -- every epoch
  visits the training set in the same order (MICO's order is ``member + training``).
  ``Recipe.shuffle`` (default False, as MICO) reshuffles every epoch instead.
* DP ("hi"/"lo"): Opacus ``make_private``, Poisson sampling with sample rate
  ``1 / len(loader)`` where ``len(loader) = ceil(N / B)``, ``num_steps = len(loader) * epochs``,
  noise multiplier found for the target (epsilon, delta) with the PRV accountant, and the
  epsilon reported by the PRV accountant (upper bound). MICO used Microsoft's ``prv_accountant``
  (``find_noise_multiplier``, eps_error 0.1) and ``secure_mode`` with torchcsprng; we use
  Opacus' built-in PRV accountant (same method, epsilon tolerance 0.01) and no csprng.
  MICO split logical batches into physical batches of 128 with ``BatchMemoryManager``; that
  does not change the maths, so whole logical batches are processed here. Exactly
  ``len(loader)`` Poisson batches run per epoch (Opacus' DPDataLoader would run
  ``int(1 / (1 / k))``, i.e. k - 1 for some k); an empty batch is a noise-only step.

Speed: the data stay in memory on the training device and batches are drawn by index
(Poisson batches via Opacus' own ``UniformWithReplacementSampler``) instead of collating
records one by one. ``_GRAD_SAMPLE_MODE`` picks Opacus' per-sample gradient mode per track:

* purchase100 (MLP): ``"ghost"`` (ghost clipping; ~30x faster per step than hooks on CPU).
* cifar10 (CNN): ``"hooks"``. Ghost mode works for the CNN too, but Opacus has no ghost norm
  for ``nn.Conv2d`` and falls back to per-layer per-sample gradients plus a second backward
  pass, which measured ~20% slower per step than hooks here. Hooks materialise per-sample
  gradients (~2 GB for a Poisson batch of ~512), which is fine on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from challenges.tracks import DP_DELTA, SCENARIO_SUFFIXES, TRACKS
from models.loading import build_model, plain_state_dict, resolve_device
from models.privacy import find_noise_multiplier, opacus, prv_epsilon

DeviceLike = Union[str, torch.device]
ProgressFn = Callable[[int, int, float, float], None]

# Opacus per-sample-gradient mode per track (see module docstring).
_GRAD_SAMPLE_MODE = {"cifar10": "hooks", "purchase100": "ghost"}


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass
class Recipe:
    """Every hyper-parameter of a MICO training run. ``epsilon=None`` means no DP."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # 'sgd' | 'adam'
    momentum: float
    step_size: int  # StepLR step (epochs)
    gamma: float  # StepLR decay
    epsilon: Optional[float]
    delta: float = DP_DELTA
    max_grad_norm: Optional[float] = None
    shuffle: bool = False  # non-DP only: MICO's loader did not shuffle

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be a positive integer, got {getattr(self, name)!r}"
            for name in ("epochs", "batch_size", "step_size")
            if not _positive_int(getattr(self, name))
        ]
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam"):
            problems.append(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma <= 1):
            problems.append(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.epsilon is not None:
            problems += self._dp_problems()
        if problems:
            raise ValueError(f"invalid recipe: {problems[0]}")

    def _dp_problems(self) -> list[str]:
        out = []
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0 and math.isfinite(self.epsilon)):
            out.append(f"epsilon must be a positive number or None, got {self.epsilon!r}")
        if not (isinstance(self.delta, (int, float)) and 0 < self.delta < 1):
            out.append(f"delta must be in (0, 1), got {self.delta!r}")
        if not (isinstance(self.max_grad_norm, (int, float)) and self.max_grad_norm > 0):
            out.append(f"DP training needs a positive max_grad_norm, got {self.max_grad_norm!r}")
        return out

    @property
    def private(self) -> bool:
        return self.epsilon is not None


# MICO's recipes (training/train_<track>_<suffix>.sh); delta 1e-5 throughout.
_BASE = {
    "purchase100": dict(optimizer="adam", lr=1e-3, momentum=0.0, step_size=5, gamma=0.9, batch_size=512, epochs=30),
    "cifar10": dict(optimizer="sgd", lr=0.005, momentum=0.0, step_size=1, gamma=0.96, batch_size=32, epochs=50),
}
_DP = {
    "purchase100": dict(batch_size=512, lr=1e-3, max_grad_norm=2.6),
    "cifar10": dict(batch_size=512, lr=0.5, max_grad_norm=2.6),
}


def recipe_for(track: str, scenario_suffix: str, **overrides) -> Recipe:
    """MICO's recipe for ``track`` ('cifar10'|'purchase100') and scenario ('inf'|'hi'|'lo').

    Keyword overrides replace any :class:`Recipe` field; an unknown key raises ValueError.
    """
    if track not in _BASE:
        raise ValueError(f"unknown track {track!r}: choose one of {', '.join(_BASE)}")
    if scenario_suffix not in SCENARIO_SUFFIXES:
        raise ValueError(f"unknown scenario suffix {scenario_suffix!r}: choose one of {', '.join(SCENARIO_SUFFIXES)}")
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}: valid fields are {sorted(known)}")
    params = dict(_BASE[track])
    eps = TRACKS[track].epsilons[scenario_suffix]
    if eps is not None:
        params.update(_DP[track])
    params.update(epsilon=eps, delta=DP_DELTA)
    params.setdefault("max_grad_norm", None)
    params.update(overrides)
    return Recipe(**params)


@dataclass
class TrainResult:
    model: nn.Module  # plain (unwrapped) model, prefix-free state dict keys, eval mode
    train_accuracy: float  # accuracy of the final model on the whole training set
    eval_accuracy: Optional[float]  # on (x_eval, y_eval) if given
    epsilon: Optional[float]  # epsilon spent according to the PRV accountant (None without DP)
    history: list = field(default_factory=list)  # per epoch {'epoch','loss','train_accuracy'}
    noise_multiplier: Optional[float] = None  # DP only


def evaluate_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: DeviceLike = "cpu", batch_size: int = 4096
) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, computed in eval mode on ``device``.

    The model is moved to ``device`` (in place) and its train/eval mode is restored afterwards.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths ({len(x)} vs {len(y)})")
    if len(x) == 0:
        raise ValueError("cannot evaluate accuracy on an empty set")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(dev, torch.float32, non_blocking=True)
                yb = y[i : i + batch_size].to(dev, torch.int64, non_blocking=True)
                correct += (model(xb).argmax(dim=1) == yb).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(x)


def check_data(track: str, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Refuse training or evaluation data of the wrong type, shape, dtype or label range for ``track``."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{what}: x and y must be torch tensors")
    shape = TRACKS[track].input_shape
    if x.dim() != 1 + len(shape) or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"{what}: x must have shape [N, {', '.join(map(str, shape))}] for {track}, got {list(x.shape)}"
        )
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{what}: y must have shape [{len(x)}], got {list(y.shape)}")
    if len(x) == 0:
        raise ValueError(f"{what}: empty data set")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{what}: y must hold integer class labels, got {y.dtype}")
    n_classes = TRACKS[track].num_classes
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"{what}: labels must be in [0, {n_classes}) for {track}")


def _make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    return torch.optim.Adam(params, lr=recipe.lr)


def _step(model: nn.Module, optimizer, criterion, xb: torch.Tensor, yb: torch.Tensor, totals: list) -> None:
    """One optimisation step on a batch (plain SGD/Adam or Opacus' DP optimizer alike); adds the
    batch's summed loss and correct count to ``totals`` = [loss_sum, correct, seen]."""
    optimizer.zero_grad(set_to_none=True)
    out = model(xb)
    loss = criterion(out, yb)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        totals[0] += loss.detach() * len(yb)
        totals[1] += (out.detach().argmax(dim=1) == yb).sum()
    totals[2] += len(yb)


def _epochs(recipe: Recipe, model, optimizer, criterion, x, y, batches, on_empty, progress) -> list:
    """MICO's epoch loop: every batch of ``batches()`` (slices or index tensors) is one step, then
    StepLR steps once; an empty batch calls ``on_empty()``. Returns the per-epoch history."""
    # Built after make_private for DP, as MICO does (the scheduler drives the DP optimizer).
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step_size, gamma=recipe.gamma)
    model.train()
    history = []
    for epoch in range(1, recipe.epochs + 1):
        totals = [torch.zeros((), device=x.device), torch.zeros((), dtype=torch.int64, device=x.device), 0]
        for idx in batches():
            if not isinstance(idx, slice) and len(idx) == 0:
                optimizer.zero_grad(set_to_none=True)
                on_empty()
                continue
            _step(model, optimizer, criterion, x[idx], y[idx], totals)
        scheduler.step()
        seen = max(totals[2], 1)
        loss, acc = float(totals[0].item()) / seen, float(totals[1].item()) / seen
        history.append({"epoch": epoch, "loss": loss, "train_accuracy": acc})
        if progress is not None:
            progress(epoch, recipe.epochs, loss, acc)
    optimizer.zero_grad(set_to_none=True)  # free the gradients
    return history


def _plain_batches(recipe: Recipe, n: int, dev: torch.device):
    """Non-private batches: MICO's unshuffled DataLoader order (slices), or reshuffled per epoch."""
    bounds = [(lo, min(n, lo + recipe.batch_size)) for lo in range(0, n, recipe.batch_size)]

    def batches():
        if not recipe.shuffle:
            return [slice(lo, hi) for lo, hi in bounds]
        order = torch.randperm(n, device=dev)
        return [order[lo:hi] for lo, hi in bounds]

    return batches


def _make_private(track: str, recipe: Recipe, model, optimizer, criterion, n: int, noise_multiplier: float):
    """Opacus' DP model, optimizer and criterion (PRV accountant), as MICO's ``make_private``."""
    mode = _GRAD_SAMPLE_MODE[track]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off")
        warnings.filterwarnings("ignore", message=".*non-full backward hook")
        warnings.filterwarnings("ignore", message=".*Optimal order is the")
        engine = opacus().PrivacyEngine(accountant="prv", secure_mode=False)
        # Stand-in loader over record indices: make_private only reads len(loader) (sample
        # rate 1/k, k = ceil(N/B)) and len(dataset) (expected batch size int(N/k)).
        # poisson_sampling=False: we sample the Poisson batches ourselves (see _dp_batches), because
        # Opacus' DPDataLoader runs int(1/(1/k)) steps per epoch, which is k - 1 for many k
        # (e.g. 93, 99, 105) and would then also account with sample rate 1/(k-1).
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.arange(n)), batch_size=recipe.batch_size
        )
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=criterion,
            noise_multiplier=noise_multiplier,
            max_grad_norm=float(recipe.max_grad_norm),
            poisson_sampling=False,
            grad_sample_mode=mode,
        )
    dp_model, dp_optimizer = made[0], made[1]
    dp_criterion = made[2] if "ghost" in mode else criterion
    if hasattr(dp_model, "forbid_grad_accumulation"):
        dp_model.forbid_grad_accumulation()  # as make_private does for Poisson sampling
    return engine, dp_model, dp_optimizer, dp_criterion


def _dp_batches(n: int, steps_per_epoch: int, dev: torch.device):
    """Opacus' Poisson sampler: every record joins each batch independently with probability 1/k,
    for exactly k batches per epoch; the in-memory tensors are indexed directly instead of
    collating records one by one."""
    sampler = opacus("opacus.utils.uniform_sampler").UniformWithReplacementSampler(
        num_samples=n, sample_rate=1.0 / steps_per_epoch, steps=steps_per_epoch
    )
    return lambda: (torch.as_tensor(ix, dtype=torch.int64).to(dev, non_blocking=True) for ix in sampler)


def _train_private(track: str, recipe: Recipe, model, optimizer, criterion, x, y, progress):
    """DP-SGD training; returns (plain trained model, history, noise multiplier, epsilon spent)."""
    n = len(x)
    steps_per_epoch = math.ceil(n / recipe.batch_size)  # == len(DataLoader(batch_size=B))
    sample_rate, num_steps = 1.0 / steps_per_epoch, steps_per_epoch * recipe.epochs
    noise = find_noise_multiplier(float(recipe.epsilon), float(recipe.delta), sample_rate, num_steps)
    engine, dp_model, dp_optimizer, dp_criterion = _make_private(track, recipe, model, optimizer, criterion, n, noise)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-full backward hook")
        warnings.filterwarnings("ignore", message=".*Full backward hook is firing")
        # An empty Poisson batch is still a DP step (noise only), so that accounting holds.
        history = _epochs(
            recipe,
            dp_model,
            dp_optimizer,
            dp_criterion,
            x,
            y,
            _dp_batches(n, steps_per_epoch, x.device),
            lambda: _noise_only_step(dp_model, dp_optimizer),
            progress,
        )
    steps_done = sum(int(h[2]) for h in engine.accountant.history)
    if steps_done != num_steps:  # every Poisson batch, empty or not, must be accounted for
        raise RuntimeError(f"DP accounting mismatch: {steps_done} steps recorded, {num_steps} expected")
    # Every step ran with the same (noise, sample rate), as the check above confirms, so the
    # spent epsilon is that of (noise, rate, steps): cached, since shadows share recipes.
    epsilon = prv_epsilon(noise, sample_rate, num_steps, float(recipe.delta))
    # A clean module (no Opacus hooks or per-sample attributes) with the trained weights.
    final = build_model(track)
    final.load_state_dict(plain_state_dict(dp_model), strict=True)
    if hasattr(dp_model, "remove_hooks"):
        dp_model.remove_hooks()
    return final.to(x.device), history, noise, epsilon


def train_model(
    track: str,
    recipe: Recipe,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_eval: Optional[torch.Tensor] = None,
    y_eval: Optional[torch.Tensor] = None,
    device: DeviceLike = "cpu",
    seed: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
) -> TrainResult:
    """Train a fresh ``track`` model with ``recipe`` on preprocessed in-memory tensors.

    ``x_train``: float32 ``[N,3,32,32]`` (cifar10, normalised) or ``[N,600]`` (purchase100);
    ``y_train``: int64 ``[N]``. ``seed`` (if given) seeds torch's global RNGs (CPU and CUDA)
    before initialisation, so initialisation, shuffling, Poisson sampling and DP noise are
    reproducible. ``progress(epoch, n_epochs, loss, acc)`` is called after every epoch
    (``epoch`` counts from 1; ``loss``/``acc`` are the epoch's running mean loss and accuracy).
    """
    build_model(track)  # validates the track name
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    check_data(track, x_train, y_train, "training data")
    if (x_eval is None) != (y_eval is None):
        raise ValueError("give both x_eval and y_eval, or neither")
    if x_eval is not None:
        check_data(track, x_eval, y_eval, "evaluation data")
    dev = resolve_device(device)

    if seed is not None:
        torch.manual_seed(seed)  # also seeds every CUDA device
    model = build_model(track).to(dev)
    x = x_train.to(dev, torch.float32)
    y = y_train.to(dev, torch.int64)
    criterion = nn.CrossEntropyLoss()
    optimizer = _make_optimizer(recipe, model.parameters())
    epsilon = noise_multiplier = None
    if recipe.private:
        final, history, noise_multiplier, epsilon = _train_private(
            track, recipe, model, optimizer, criterion, x, y, progress
        )
    else:
        history = _epochs(
            recipe, model, optimizer, criterion, x, y, _plain_batches(recipe, len(x), dev), None, progress
        )
        final = model
    final.eval()
    train_acc = evaluate_accuracy(final, x, y, dev)
    eval_acc = evaluate_accuracy(final, x_eval, y_eval, dev) if x_eval is not None else None
    return TrainResult(
        model=final,
        train_accuracy=train_acc,
        eval_accuracy=eval_acc,
        epsilon=epsilon,
        history=history,
        noise_multiplier=noise_multiplier,
    )


def _noise_only_step(dp_model: nn.Module, dp_optimizer) -> None:
    """A DP-SGD step on an empty batch: zero clipped sum plus Gaussian noise, as Opacus does.

    Sets zero per-sample norms/gradients for an empty batch so that the DP optimizer adds
    noise scaled by the expected batch size and records the step with the accountant.
    """
    for p in dp_model.parameters():
        if not p.requires_grad:
            continue
        # Fast-gradient-clipping optimizers read `_norm_sample`; hook-based ones `grad_sample`.
        p._norm_sample = torch.zeros(0, device=p.device, dtype=p.dtype)
        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        p.grad = torch.zeros_like(p)
    dp_optimizer.step()
