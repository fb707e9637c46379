"""MICO training recipes and the trainer (tiny synthetic data, few epochs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import models.train as train_mod
from models import CNN, MLP
from models.train import (
    Recipe,
    TrainResult,
    evaluate_accuracy,
    find_noise_multiplier,
    recipe_for,
    train_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")


TABLE = {
    # (track, suffix): (optimizer, lr, momentum, step_size, gamma, batch, epochs, epsilon, max_grad_norm)
    ("purchase100", "inf"): ("adam", 1e-3, 0.0, 5, 0.9, 512, 30, None, None),
    ("purchase100", "hi"): ("adam", 1e-3, 0.0, 5, 0.9, 512, 30, 10.0, 2.6),
    ("purchase100", "lo"): ("adam", 1e-3, 0.0, 5, 0.9, 512, 30, 4.0, 2.6),
    ("cifar10", "inf"): ("sgd", 0.005, 0.0, 1, 0.96, 32, 50, None, None),
    ("cifar10", "hi"): ("sgd", 0.5, 0.0, 1, 0.96, 512, 50, 10.0, 2.6),
    ("cifar10", "lo"): ("sgd", 0.5, 0.0, 1, 0.96, 512, 50, 4.0, 2.6),
}


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize("key", sorted(TABLE))
def test_recipe_table(key):
    r = recipe_for(*key)
    opt, lr, mom, step, gamma, bs, ep, eps, C = TABLE[key]
    assert (r.optimizer, r.momentum, r.step_size, r.batch_size, r.epochs) == (opt, mom, step, bs, ep)
    assert r.lr == pytest.approx(lr) and r.gamma == pytest.approx(gamma)
    assert r.epsilon == eps and r.max_grad_norm == C and r.delta == 1e-5
    assert r.private == (eps is not None)
    assert r.shuffle is False  # MICO's DataLoader did not shuffle


def test_recipe_fields():
    names = [f.name for f in dataclasses.fields(Recipe)]
    assert names[:10] == [
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "momentum",
        "step_size",
        "gamma",
        "epsilon",
        "delta",
        "max_grad_norm",
    ]


def test_recipe_overrides():
    r = recipe_for("cifar10", "hi", epochs=2, batch_size=16, lr=0.1, epsilon=3.0, max_grad_norm=1.0)
    assert (r.epochs, r.batch_size, r.lr, r.epsilon, r.max_grad_norm) == (2, 16, 0.1, 3.0, 1.0)
    assert r.optimizer == "sgd" and r.gamma == 0.96
    assert not recipe_for("purchase100", "lo", epsilon=None).private
    assert recipe_for("purchase100", "inf", optimizer="sgd", momentum=0.9).momentum == 0.9


def test_recipe_errors():
    with pytest.raises(ValueError, match="unknown recipe field"):
        recipe_for("purchase100", "inf", learning_rate=0.1)
    with pytest.raises(ValueError):
        recipe_for("sst2", "inf")
    with pytest.raises(ValueError):
        recipe_for("cifar10", "mid")
    with pytest.raises(ValueError):
        recipe_for("cifar10", "inf", epochs=0)
    with pytest.raises(ValueError):
        recipe_for("cifar10", "inf", optimizer="rmsprop")
    with pytest.raises(ValueError):
        recipe_for("cifar10", "hi", max_grad_norm=None)  # DP needs a clipping norm


# ---------------------------------------------------------------- data helpers


def _separable_purchase(n: int, n_classes: int = 5, seed: int = 0):
    """Binary 600-d records whose class is encoded by a block of always-on features."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % n_classes
    x = (torch.rand(n, 600, generator=g) < 0.05).float()
    for c in range(n_classes):
        x[y == c, c * 20 : (c + 1) * 20] = 1.0
    perm = torch.randperm(n, generator=g)
    return x[perm], y[perm].long()


def _separable_cifar(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 3, 32, 32, generator=g)
    x[y == 1] += 1.0
    x[y == 0] -= 1.0
    return x, y.long()


# ---------------------------------------------------------------- non-private training


def test_nonprivate_purchase_learns():
    x, y = _separable_purchase(300)
    xe, ye = _separable_purchase(100, seed=1)
    calls = []
    r = recipe_for("purchase100", "inf", epochs=8, batch_size=32)
    res = train_model("purchase100", r, x, y, xe, ye, seed=0, progress=lambda *a: calls.append(a))
    assert isinstance(res, TrainResult) and isinstance(res.model, MLP)
    assert res.train_accuracy >= 0.95 and res.eval_accuracy >= 0.9
    assert res.epsilon is None
    assert not res.model.training
    assert [h["epoch"] for h in res.history] == list(range(1, 9))
    assert set(res.history[0]) == {"epoch", "loss", "train_accuracy"}
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert [c[:2] for c in calls] == [(e, 8) for e in range(1, 9)]
    assert calls[-1][2] == pytest.approx(res.history[-1]["loss"])
    assert list(res.model.state_dict()) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


def test_nonprivate_cifar_learns():
    x, y = _separable_cifar(32)
    r = recipe_for("cifar10", "inf", epochs=3, batch_size=8, lr=0.02)
    res = train_model("cifar10", r, x, y, device="auto", seed=0)
    assert isinstance(res.model, CNN)
    assert res.train_accuracy >= 0.95


def test_seed_reproducible_and_shuffle():
    x, y = _separable_purchase(64)
    r = recipe_for("purchase100", "inf", epochs=2, batch_size=16, shuffle=True)
    a = train_model("purchase100", r, x, y, seed=7)
    b = train_model("purchase100", r, x, y, seed=7)
    c = train_model("purchase100", r, x, y, seed=8)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert not torch.equal(a.model.mlp[0].weight, c.model.mlp[0].weight)


def test_input_validation():
    x, y = _separable_purchase(20)
    r = recipe_for("purchase100", "inf", epochs=1)
    with pytest.raises(ValueError):
        train_model("purchase100", r, x[:, :500], y)
    with pytest.raises(ValueError):
        train_model("purchase100", r, x, y[:10])
    with pytest.raises(ValueError):
        train_model("purchase100", r, x, y, x_eval=x)
    with pytest.raises(ValueError):
        train_model("cifar10", r, x, y)


def test_evaluate_accuracy():
    model = MLP()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.mlp[2].bias[3] = 1.0  # always predicts class 3
    y = torch.tensor([3, 3, 1, 0, 3, 2, 3, 3])
    x = torch.zeros(len(y), 600)
    model.train()
    assert evaluate_accuracy(model, x, y, "cpu", batch_size=3) == pytest.approx(5 / 8)
    assert model.training  # mode restored


# ---------------------------------------------------------------- DP training


def _assert_plain(model, cls):
    assert type(model) is cls and not model.training
    assert not any(k.startswith("_module") for k in model.state_dict())
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    for p in model.parameters():
        assert getattr(p, "grad_sample", None) is None


def test_dp_purchase_epsilon_close_to_target():
    x, y = _separable_purchase(256)
    r = recipe_for("purchase100", "lo", epochs=2, batch_size=32)
    res = train_model("purchase100", r, x, y, seed=0)
    assert 0.9 * 4.0 <= res.epsilon <= 4.0 + 1e-3
    assert res.noise_multiplier > 0
    assert len(res.history) == 2
    assert 0.0 <= res.train_accuracy <= 1.0
    _assert_plain(res.model, MLP)


def test_dp_cifar_runs():
    x, y = _separable_cifar(12)
    r = recipe_for("cifar10", "hi", epochs=1, batch_size=4, lr=0.05)
    res = train_model("cifar10", r, x, y, x_eval=x, y_eval=y, seed=0)
    assert 0.9 * 10.0 <= res.epsilon <= 10.0 + 1e-3
    assert res.eval_accuracy is not None
    _assert_plain(res.model, CNN)


@pytest.mark.parametrize("track", ["purchase100", "cifar10"])  # ghost and hooks modes
def test_dp_empty_poisson_batches_and_reproducibility(monkeypatch, track):
    # 3 records, expected batch size 1: empty Poisson batches are frequent.
    empties = []
    real = train_mod._noise_only_step
    monkeypatch.setattr(train_mod, "_noise_only_step", lambda *a: (empties.append(1), real(*a)))
    x, y = _separable_purchase(3) if track == "purchase100" else _separable_cifar(3)
    r = recipe_for(track, "hi", epochs=4, batch_size=1)
    a = train_model(track, r, x, y, seed=1)
    assert empties, "seed should produce at least one empty Poisson batch"
    b = train_model(track, r, x, y, seed=1)
    assert 9.0 <= a.epsilon <= 10.0 + 1e-3
    assert all(torch.isfinite(p).all() for p in a.model.parameters())
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])


def test_dp_steps_per_epoch_match_accounting():
    # ceil(372 / 4) = 93 batches per epoch, a size where int(1 / (1 / 93)) == 92: every one of
    # the 93 Poisson batches must be run and accounted at sample rate 1/93.
    x, y = _separable_purchase(372)
    calls = []
    res = train_model(
        "purchase100",
        recipe_for("purchase100", "lo", epochs=1, batch_size=4),
        x,
        y,
        seed=0,
        progress=lambda *a: calls.append(a),
    )
    assert 0.9 * 4.0 <= res.epsilon <= 4.0 + 1e-3
    assert len(calls) == 1


def test_find_noise_multiplier_matches_opacus_accountant():
    from opacus.accountants import create_accountant

    sigma = find_noise_multiplier(4.0, 1e-5, 0.05, 40)
    acc = create_accountant("prv")
    acc.history = [(sigma, 0.05, 40)]
    assert 3.99 - 1e-9 <= acc.get_epsilon(1e-5) <= 4.0
