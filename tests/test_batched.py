"""Batched training (models/batched.py) against the one-model trainer, Opacus and torch.optim."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from models import batched, build_model, load_model, plain_state_dict, train
from models.batched import (
    StackedOptimizer,
    auto_parallel,
    cnn_grads,
    func_grads,
    mlp_grads,
    train_batched,
    train_many,
)
from models.privacy import find_noise_multiplier, prv_epsilon
from models.train import evaluate_accuracy, recipe_for, train_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _data(track: str, n: int, seed: int = 0, n_classes: int = 4):
    """Learnable random data: a class-dependent shift on binary (purchase100) or normal (cifar10)
    inputs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    if track == "purchase100":
        x = (torch.rand(n, 600, generator=g) < 0.05).float()
        for c in range(n_classes):
            x[y == c, c * 20 : (c + 1) * 20] = 1.0
    else:
        x = 0.5 * torch.randn(n, 3, 32, 32, generator=g) + (y.float() - n_classes / 2).view(-1, 1, 1, 1) / 2
    return x, y


def _sets(n: int, sizes, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n)[:m] for m in sizes]


def _sequential(track, recipe, x, y, sets, seeds):
    return [train_model(track, recipe, x[s], y[s], seed=seed) for s, seed in zip(sets, seeds)]


def assert_dp_accounting(got, sets, recipe) -> None:
    """Each model's own noise multiplier and epsilon at ε = 4 (its set size sets its sample rate),
    and finite weights."""
    for g, s in zip(got, sets):
        steps = -(-len(s) // recipe.batch_size)
        sigma = find_noise_multiplier(4.0, 1e-5, 1.0 / steps, steps * recipe.epochs)
        assert g.noise_multiplier == sigma
        assert g.epsilon == prv_epsilon(sigma, 1.0 / steps, steps * recipe.epochs, 1e-5)
        assert all(torch.isfinite(p).all() for p in g.model.parameters())


def _assert_same_models(got, ref, atol):
    for a, b in zip(got, ref):
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert list(sa) == list(sb)
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def case_data(track: str, sizes=None):
    """(CASES[track], inputs, labels, training sets): the case's data, with its own set sizes
    unless ``sizes`` are given."""
    c = CASES[track]
    x, y = _data(track, c["n"])
    return c, x, y, _sets(c["n"], c["sizes"] if sizes is None else sizes)


# Both tracks; training sets of different sizes (and so different step counts per epoch) in one
# group, the purchase100 one with two equal ones too. DP at a learning rate low enough that the
# models do not fit perfectly: Adam on vanishing gradients, or SGD at MICO's DP rate 0.5 on these
# tiny sets, would amplify float rounding into visible differences.
CASES = {
    "purchase100": {
        "n": 120,
        "sizes": (96, 96, 70),
        "seeds": (3, 4, 5),
        "dp_lr": 1e-3,
        "overrides": {"epochs": 3, "batch_size": 16},
    },
    "cifar10": {
        "n": 32,
        "sizes": (24, 12),
        "seeds": (6, 7),
        "dp_lr": 0.02,
        "overrides": {"epochs": 2, "batch_size": 8},
    },
}


# ---------------------------------------------------------------- equal to train_model


@pytest.mark.parametrize("track", sorted(CASES))
def test_nonprivate_equals_sequential(track):
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "inf", **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], eval_sets=sets[::-1], device="cpu")
    ref = _sequential(track, recipe, x, y, sets, c["seeds"])
    _assert_same_models(got, ref, atol=1e-5)
    for g, r, ev in zip(got, ref, sets[::-1]):
        assert g.train_accuracy == pytest.approx(r.train_accuracy)
        assert g.eval_accuracy == pytest.approx(evaluate_accuracy(r.model, x[ev], y[ev]))
        assert [h["epoch"] for h in g.history] == [h["epoch"] for h in r.history]
        for hg, hr in zip(g.history, r.history):
            assert hg["loss"] == pytest.approx(hr["loss"], rel=1e-5)
            assert hg["train_accuracy"] == pytest.approx(hr["train_accuracy"])
        assert g.epsilon is None and g.noise_multiplier is None
        assert type(g.model) is type(r.model) and not g.model.training
        assert all(p.requires_grad and p.is_leaf and p.device.type == "cpu" for p in g.model.parameters())


def test_shuffled_equals_sequential():
    x, y = _data("purchase100", 64)
    sets = _sets(64, (64, 50))
    recipe = recipe_for("purchase100", "inf", epochs=2, batch_size=16, shuffle=True)
    _assert_same_models(
        train_batched("purchase100", recipe, x, y, sets, (1, 2), device="cpu"),
        _sequential("purchase100", recipe, x, y, sets, (1, 2)),
        atol=1e-5,
    )


@pytest.fixture
def no_noise(monkeypatch):
    """sigma = 0 in both trainers: DP-SGD reduces to Poisson batches and clipping."""
    for mod in (train, batched):
        monkeypatch.setattr(mod, "find_noise_multiplier", lambda *a, **k: 0.0)
        monkeypatch.setattr(mod, "prv_epsilon", lambda *a, **k: float("inf"))


@pytest.mark.parametrize("track", sorted(CASES))
def test_dp_clipping_equals_opacus(no_noise, track):
    # Both trainers draw model k's Poisson batches from the same generator state, so they see
    # identical batches; the clipping norm is small enough to clip most samples.
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "lo", max_grad_norm=0.5, lr=c["dp_lr"], **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], device="cpu")
    ref = _sequential(track, recipe, x, y, sets, c["seeds"])
    _assert_same_models(got, ref, atol=1e-5)
    for g, r in zip(got, ref):
        assert g.noise_multiplier == r.noise_multiplier == 0.0
        assert g.history[-1]["loss"] == pytest.approx(r.history[-1]["loss"], rel=1e-5)


@pytest.mark.parametrize("track", sorted(CASES))
def test_dp_with_noise_equals_opacus(track):
    # The same generator states give the same noise too, and each model's own noise multiplier
    # (set sizes differ, so sample rates differ) and epsilon.
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "lo", lr=c["dp_lr"], **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], device="cpu")
    ref = _sequential(track, recipe, x, y, sets, c["seeds"])
    _assert_same_models(got, ref, atol=1e-5)
    for g, r, s in zip(got, ref, sets):
        steps = -(-len(s) // recipe.batch_size)
        sigma = find_noise_multiplier(4.0, 1e-5, 1.0 / steps, steps * recipe.epochs)
        assert g.noise_multiplier == r.noise_multiplier == sigma
        assert g.epsilon == r.epsilon == prv_epsilon(sigma, 1.0 / steps, steps * recipe.epochs, 1e-5)
        assert 3.9 <= g.epsilon <= 4.0


def test_noise_std_per_model(monkeypatch):
    # Zero gradients: with SGD at lr 1, a model's total update is minus its summed noise divided
    # by its expected batch size, std sqrt(steps) * sigma * C / expected per coordinate.
    def zero_grads(params, xb, yb, mask, max_grad_norm=None):
        k = len(mask)
        zeros = torch.zeros(k, device=mask.device)
        return {n: torch.zeros_like(p) for n, p in params.items()}, zeros, zeros.long()

    monkeypatch.setitem(batched.GRADS, "purchase100", zero_grads)
    c, x, y, sets = case_data("purchase100", (96, 70, 96))
    seeds = (11, 12, 11)
    recipe = recipe_for("purchase100", "lo", optimizer="sgd", lr=1.0, **c["overrides"])
    got = train_batched("purchase100", recipe, x, y, sets, seeds, device="cpu")
    deltas = []
    for res, s, seed in zip(got, sets, seeds):
        torch.manual_seed(seed)
        init = build_model("purchase100").state_dict()
        delta = torch.cat([(res.model.state_dict()[n] - init[n]).flatten() for n in init])
        steps = -(-len(s) // recipe.batch_size)
        expected_std = (
            (steps * recipe.epochs) ** 0.5 * res.noise_multiplier * recipe.max_grad_norm / int(len(s) * (1.0 / steps))
        )
        assert delta.std().item() == pytest.approx(expected_std, rel=0.02)
        assert abs(delta.mean().item()) < 5 * expected_std / len(delta) ** 0.5
        deltas.append(delta)
    assert got[0].noise_multiplier != got[1].noise_multiplier  # 6 vs 5 steps per epoch
    assert abs(np.corrcoef(deltas[0].numpy(), deltas[1].numpy())[0, 1]) < 0.02
    assert torch.equal(deltas[0], deltas[2])  # same seed, same noise


def test_saved_model_loads_and_scores_like_sequential(tmp_path):
    x, y = _data("purchase100", 400, n_classes=5)
    sets = _sets(300, (300, 300))
    held_out = np.arange(300, 400)
    recipe = recipe_for("purchase100", "inf", epochs=6, batch_size=32)
    got = train_batched("purchase100", recipe, x, y, sets, (1, 2), eval_sets=[held_out] * 2, device="cpu")
    for res, s, seed in zip(got, sets, (1, 2)):
        path = tmp_path / f"model_{seed}.pt"
        torch.save(plain_state_dict(res.model), path)
        loaded = load_model("purchase100", path)
        acc = evaluate_accuracy(loaded, x[held_out], y[held_out])
        assert acc == pytest.approx(res.eval_accuracy) and acc > 0.9
        alone = train_model("purchase100", recipe, x[s], y[s], x[held_out], y[held_out], seed=seed)
        assert abs(alone.eval_accuracy - acc) <= 0.02


# ---------------------------------------------------------------- fast paths against slow ones


@pytest.mark.parametrize("max_grad_norm", [None, 0.3])
def test_mlp_grads_match_torch_func(max_grad_norm):
    # Padding, a model with an empty batch, and norms on both sides of the clipping threshold.
    g = torch.Generator().manual_seed(0)
    params = {n: 0.3 * torch.randn(3, *p.shape, generator=g) for n, p in build_model("purchase100").named_parameters()}
    xb = (torch.rand(3, 9, 600, generator=g) < 0.1).float()
    yb = torch.randint(0, 100, (3, 9), generator=g)
    mask = torch.arange(9) < torch.tensor([[9], [4], [0]])
    fast = mlp_grads(params, xb, yb, mask, max_grad_norm)
    slow = func_grads("purchase100", params, xb, yb, mask, max_grad_norm)
    for n in params:
        torch.testing.assert_close(fast[0][n], slow[0][n], rtol=1e-4, atol=1e-6)
        assert not fast[0][n][2].any()
    torch.testing.assert_close(fast[1], slow[1])
    assert torch.equal(fast[2], slow[2])


def _cnn_case(k=3, b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {n: 0.3 * torch.randn(k, *p.shape, generator=g) for n, p in build_model("cifar10").named_parameters()}
    xb = torch.randn(k, b, 3, 32, 32, generator=g)
    yb = torch.randint(0, 10, (k, b), generator=g)
    return params, xb, yb


def _per_sample_norms(params, xb, yb):
    """Norms ``[K, B]`` of materialised per-sample gradients (torch.func), all layers jointly."""
    per_layer, module = {}, batched._skeleton("cifar10")  # built outside vmap
    for k in range(len(xb)):
        p = {n: v[k] for n, v in params.items()}

        def loss(p, xi, yi):
            out = torch.func.functional_call(module, p, (xi.unsqueeze(0),))
            return torch.nn.functional.cross_entropy(out, yi.unsqueeze(0))

        g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(p, xb[k], yb[k])
        for n, v in g.items():
            per_layer.setdefault(n, []).append(v.flatten(1).square().sum(1))
    return {n: torch.stack(v) for n, v in per_layer.items()}


def test_conv_norms_match_materialised_per_sample_gradients():
    # Every convolution's per-sample squared norm (weight and bias), by the Gram identity for the
    # wide ones (cnn.3, cnn.5) and from the gradient for cnn.0, against torch.func's gradients.
    params, xb, yb = _cnn_case(k=2, b=4)
    ref = _per_sample_norms(params, xb, yb)
    with torch.enable_grad():
        convs, _, z = batched._cnn_forward(params, xb)
        nll = torch.nn.functional.cross_entropy(z.flatten(0, 1), yb.flatten(), reduction="none")
        ds = torch.autograd.grad(nll.sum(), [out for _, out in convs])
    for (a, _), d, (name, _, kernel, stride, pad) in zip(convs, ds, batched.CNN_CONVS):
        got = batched._conv_sq_norms(a.detach(), d, 2, kernel, stride, pad).T  # [K, B]
        want = ref[f"{name}.weight"] + ref[f"{name}.bias"]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("clip", [None, "median"])
def test_cnn_grads_match_torch_func(clip):
    # Padding, a model with an empty batch, and a clipping norm that clips half the samples.
    params, xb, yb = _cnn_case()
    mask = torch.arange(5) < torch.tensor([[5], [3], [0]])
    if clip == "median":
        norms = sum(_per_sample_norms(params, xb, yb).values()).sqrt()
        clip = norms[mask].median().item()
    fast = cnn_grads(params, xb, yb, mask, clip)
    slow = func_grads("cifar10", params, xb, yb, mask, clip)
    for n in params:  # float32 rounding, relative to each gradient's scale
        scale = slow[0][n].abs().max().item()
        torch.testing.assert_close(fast[0][n], slow[0][n], rtol=1e-4, atol=1e-5 * scale)
        assert not fast[0][n][2].any()
    torch.testing.assert_close(fast[1], slow[1])
    assert torch.equal(fast[2], slow[2])


@pytest.mark.parametrize(("optimizer", "momentum"), [("adam", 0.0), ("sgd", 0.0), ("sgd", 0.9)])
def test_stacked_optimizer_matches_torch(optimizer, momentum):
    # Random gradients, models skipping random steps: each slice follows its own torch optimizer
    # stepped only when that model is active.
    recipe = recipe_for("purchase100", "inf", optimizer=optimizer, momentum=momentum, lr=0.01)
    g = torch.Generator().manual_seed(1)
    stacked = {"w": torch.randn(3, 4, 5, generator=g), "b": torch.randn(3, 5, generator=g)}
    refs = [[stacked[n][k].clone().requires_grad_() for n in stacked] for k in range(3)]
    opts = [train._make_optimizer(recipe, r) for r in refs]
    opt = StackedOptimizer(recipe, stacked)
    rng = np.random.default_rng(0)
    for step in range(8):
        grads = {n: torch.randn(v.shape, generator=g) for n, v in stacked.items()}
        active = rng.random(3) < 0.7 if step else np.ones(3, dtype=bool)
        lr = 0.01 * 0.5 ** (step // 3)
        opt.step(grads, lr, torch.as_tensor(active))
        for k in np.flatnonzero(active):
            for p, n in zip(refs[k], stacked):
                p.grad = grads[n][k].clone()
            opts[k].param_groups[0]["lr"] = lr
            opts[k].step()
    for k in range(3):
        for p, n in zip(refs[k], stacked):
            assert torch.equal(stacked[n][k], p.detach())  # operation for operation
    if optimizer == "adam":  # the step counts, a tensor, are torch's
        assert opt.steps.tolist() == [o.state_dict()["state"][0]["step"] for o in opts]


# ---------------------------------------------------------------- groups, memory, errors


def test_train_many_groups_like_one_batch():
    c, x, y, sets = case_data("purchase100", (96, 70, 96))
    recipe = recipe_for("purchase100", "lo", **c["overrides"])
    calls = []
    many = list(
        train_many(
            "purchase100", recipe, x, y, sets, (1, 2, 3), parallel=2, device="cpu", progress=lambda *a: calls.append(a)
        )
    )
    assert [i for i, _ in many] == [0, 1, 2]
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)] * 2  # two groups, three epochs each
    _assert_same_models(
        [r for _, r in many], train_batched("purchase100", recipe, x, y, sets, (1, 2, 3), device="cpu"), atol=1e-6
    )


def test_auto_parallel(monkeypatch):
    for track, suffix in [("purchase100", "inf"), ("purchase100", "lo"), ("cifar10", "inf"), ("cifar10", "lo")]:
        k = auto_parallel(track, recipe_for(track, suffix), "cpu", n_train=50_000)
        assert isinstance(k, int) and 1 <= k <= batched.MAX_PARALLEL["cpu"]
    monkeypatch.setattr(batched, "free_memory", lambda dev: 10**6)
    assert auto_parallel("cifar10", recipe_for("cifar10", "lo"), "cpu", n_train=50_000) == 1
    monkeypatch.setattr(batched, "free_memory", lambda dev: 10**15)
    assert auto_parallel("purchase100", recipe_for("purchase100", "inf"), "cpu") == batched.MAX_PARALLEL["cpu"]


def test_inputs():
    x, y = _data("purchase100", 20)
    recipe = recipe_for("purchase100", "inf", epochs=1)
    state = torch.get_rng_state()
    res = train_batched("purchase100", recipe, x, y, [np.arange(5), [7, 8]], [1, 2], eval_sets=[[], [9]], device="cpu")
    assert res[0].eval_accuracy is None and res[1].eval_accuracy in (0.0, 1.0)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is untouched
    with pytest.raises(ValueError, match="one seed per"):
        train_batched("purchase100", recipe, x, y, [np.arange(5)], [1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        train_batched("purchase100", recipe, x, y, [np.arange(0)], [1])
    with pytest.raises(ValueError, match="integer"):
        train_batched("purchase100", recipe, x, y, [np.arange(5.0)], [1])
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        train_batched("purchase100", recipe, x, y, [np.arange(21)], [1])
    with pytest.raises(ValueError, match="evaluation set per model"):
        train_batched("purchase100", recipe, x, y, [np.arange(5)], [1], eval_sets=[])
    with pytest.raises(ValueError):
        train_batched("cifar10", recipe, x, y, [np.arange(5)], [1])
    with pytest.raises(TypeError):
        train_batched("purchase100", {"epochs": 1}, x, y, [np.arange(5)], [1])
    with pytest.raises(ValueError, match="expected batch size of 0"):
        train_batched(
            "purchase100",
            recipe_for("purchase100", "lo", batch_size=1),
            *_data("purchase100", 49),
            [np.arange(49)],
            [1],
        )
    with pytest.raises(ValueError, match="parallel"):
        next(train_many("purchase100", recipe, x, y, [np.arange(5)], [1], parallel=0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("suffix", ["inf", "lo"])
def test_cuda_equals_sequential_cuda(suffix):
    # On CUDA too, Poisson batches come from the CPU generator and noise from the CUDA one that
    # train_model's torch.manual_seed seeds.
    x, y = _data("purchase100", 96)
    sets = _sets(96, (96, 80))
    recipe = recipe_for("purchase100", suffix, epochs=2, batch_size=16, lr=0.01)
    got = train_batched("purchase100", recipe, x, y, sets, (1, 2), device="cuda")
    ref = [train_model("purchase100", recipe, x[s], y[s], device="cuda", seed=seed) for s, seed in zip(sets, (1, 2))]
    assert all(next(r.model.parameters()).is_cuda for r in got)
    _assert_same_models(got, ref, atol=1e-5)


# ---------------------------------------------------------------- device streams, run on the CPU


def _device_group(sizes, batch_size, seeds, private=True):
    recipe = recipe_for("purchase100", "lo" if private else "inf", batch_size=batch_size, epochs=1)
    sets = [torch.as_tensor(s) for s in _sets(sum(sizes), sizes)]
    dev = torch.device("cpu")
    return batched._make_group(recipe, sets, seeds, [None] * len(seeds), dev, "device"), recipe


def test_device_poisson_batches_are_poisson():
    # Two models of 130 and 60 records at B = 10: 13 and 6 steps per epoch, q = 1/13 and 1/6.
    # Over many epochs every record joins a step's batch with probability q, independently:
    # batch sizes have mean N q and variance N q (1 - q), records are drawn uniformly, a batch
    # never repeats a record nor leaves the model's set, and a model past its steps is empty.
    group, _ = _device_group((130, 60), 10, (5, 6))
    epochs = 100
    sizes = [[], []]
    hits = [np.zeros(190), np.zeros(190)]
    for _ in range(epochs):
        n_steps = 0
        for active, idx, mask in batched._epoch_batches(group, recipe_for("purchase100", "lo", batch_size=10)):
            n_steps += 1
            for k in range(2):
                rows = idx[k][mask[k]].numpy()
                if not active[k]:
                    assert len(rows) == 0
                    continue
                assert len(np.unique(rows)) == len(rows) and np.isin(rows, group.sets[k].numpy()).all()
                sizes[k].append(len(rows))
                hits[k][rows] += 1
        assert n_steps == 13
    for k, (n, s) in enumerate([(130, 13), (60, 6)]):
        q, m = 1 / s, np.array(sizes[k])
        assert len(m) == epochs * s
        assert abs(m.mean() - n * q) < 4 * np.sqrt(n * q * (1 - q) / len(m))
        assert m.var() == pytest.approx(n * q * (1 - q), rel=0.15)
        freq = hits[k][group.sets[k].numpy()] / (epochs * s)  # each record's inclusion rate
        assert abs(freq.mean() - q) < 0.01 and freq.std() < 2.5 * np.sqrt(q * (1 - q) / (epochs * s))
        assert hits[k].sum() == m.sum()


def test_device_poisson_batches_do_not_depend_on_the_group():
    # A model's batches come from its own generator: alone or beside another model, the same.
    alone, _ = _device_group((130,), 10, (5,))
    pair, _ = _device_group((130, 60), 10, (5, 6))
    pair.sets[0], pair.padded[0, :130] = alone.sets[0], alone.sets[0]
    recipe = recipe_for("purchase100", "lo", batch_size=10)
    for (_, ia, ma), (_, ib, mb) in zip(batched._epoch_batches(alone, recipe), batched._epoch_batches(pair, recipe)):
        assert torch.equal(ia[0][ma[0]], ib[0][mb[0]])


def test_device_streams_nonprivate_equal_exact():
    # No randomness after initialisation without shuffling: both streams give the same models.
    c, x, y, sets = case_data("purchase100")
    recipe = recipe_for("purchase100", "inf", **c["overrides"])
    got = train_batched("purchase100", recipe, x, y, sets, c["seeds"], device="cpu", streams="device")
    _assert_same_models(got, train_batched("purchase100", recipe, x, y, sets, c["seeds"], device="cpu"), atol=1e-6)


def test_device_shuffles():
    # Every epoch visits each model's set once in a fresh order from the model's own generator.
    group, _ = _device_group((40, 25), 8, (1, 2), private=False)
    recipe = recipe_for("purchase100", "inf", batch_size=8, shuffle=True)
    orders = []
    for _ in range(2):
        seen = [[], []]
        for active, idx, mask in batched._epoch_batches(group, recipe):
            for k in range(2):
                seen[k] += idx[k][mask[k]].tolist()
                assert active[k] == bool(mask[k].any())
        for k in range(2):
            assert sorted(seen[k]) == sorted(group.sets[k].tolist())
        orders.append(seen)
    assert orders[0][0] != orders[1][0] and orders[0][0] != group.sets[0].tolist()
    alone, _ = _device_group((40,), 8, (1,), private=False)
    alone.sets[0], alone.padded[0] = group.sets[0], group.sets[0]
    assert [i[0][m[0]].tolist() for _, i, m in batched._epoch_batches(alone, recipe)][0] == orders[0][0][:8]


def test_device_dp_accounting_equals_sequential():
    # Device streams change the random numbers, not the privacy: each model's noise multiplier and
    # epsilon are train_model's (the same sizes as test_dp_with_noise_equals_opacus: cached).
    c, x, y, sets = case_data("purchase100")
    recipe = recipe_for("purchase100", "lo", lr=c["dp_lr"], **c["overrides"])
    got = train_batched("purchase100", recipe, x, y, sets, c["seeds"], device="cpu", streams="device")
    assert_dp_accounting(got, sets, recipe)
    with pytest.raises(ValueError, match="streams must be"):
        train_batched("purchase100", recipe, x, y, sets, c["seeds"], device="cpu", streams="gpu")


class _HostReads(TorchFunctionMode):
    """Counts the tensor operations that read a device value on the host (each a blocking sync on
    CUDA): item, tolist, cpu, Python conversions, nonzero and boolean-mask indexing, and those
    whose output size comes from device data (masked_select, unique, argwhere), repeat_interleave
    among them (a sync on CUDA even with an int count in older torch versions)."""

    READS = {"item", "tolist", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero"}
    READS |= {"masked_select", "unique", "argwhere", "repeat_interleave"}

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS or (name == "__getitem__" and any(_is_bool_tensor(a) for a in args[1:])):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def _is_bool_tensor(a):
    return isinstance(a, torch.Tensor) and a.dtype == torch.bool


@pytest.mark.parametrize(
    ("track", "suffix", "streams", "reads"),
    [
        ("purchase100", "inf", "device", 0),
        ("purchase100", "lo", "device", 1),
        ("purchase100", "lo", "exact", None),
        ("cifar10", "lo", "device", 1),  # cnn_grads (its weighting is DP's and non-DP's alike)
    ],
)
def test_no_host_reads_in_the_step_loop(monkeypatch, no_noise, track, suffix, streams, reads):
    # One epoch of 6 steps: device streams read the host once per DP epoch (the Poisson counts),
    # never per step; the exact streams' CPU Poisson sampling reads at every step.
    n, batch = (96, 16) if track == "purchase100" else (24, 4)  # the CNN: fewer, smaller steps
    x, y = _data(track, n)
    recipe = recipe_for(track, suffix, epochs=1, batch_size=batch)
    counted = []
    original = batched._train_epoch

    def counting(*args):
        with _HostReads() as mode:
            out = original(*args)
        counted.append(mode.reads)
        return out

    monkeypatch.setattr(batched, "_train_epoch", counting)
    train_batched(track, recipe, x, y, _sets(n, (n, n * 5 // 6)), (1, 2), device="cpu", streams=streams)
    if reads is None:
        assert len(counted[0]) >= 6
    else:
        assert len(counted[0]) == reads, counted


def test_group_noise_one_call_per_step(monkeypatch):
    # Device streams: one torch.randn per step for the whole group, each model's coordinates with
    # std sigma_k * C, models independent.
    calls = []
    randn = torch.randn

    def counting(*a, **k):
        calls.append(a)
        return randn(*a, **k)

    monkeypatch.setattr(torch, "randn", counting)
    g = torch.Generator().manual_seed(0)
    grads = {"w": torch.zeros(3, 200, 50), "b": torch.zeros(3, 50)}
    stds = torch.tensor([1.0, 2.5, 0.0])
    batched.add_group_noise(grads, g, stds)
    assert len(calls) == 1
    flat = torch.cat([grads["w"].flatten(1), grads["b"]], dim=1)
    assert flat[0].std().item() == pytest.approx(1.0, rel=0.03)
    assert flat[1].std().item() == pytest.approx(2.5, rel=0.03)
    assert not flat[2].any()
    assert abs(np.corrcoef(flat[0].numpy(), flat[1].numpy())[0, 1]) < 0.03


# ---------------------------------------------------------------- out-of-memory back-off


@pytest.fixture
def oom_above(monkeypatch):
    """Groups of more than the returned list's first value models raise torch's CUDA
    out-of-memory error; the sizes of all attempted groups are recorded in it after that value."""
    monkeypatch.setattr(batched, "_BACKED_OFF", {})
    limit_and_sizes = [2]
    original = batched._train_group

    def train_group(track, recipe, x, y, sets, *rest):
        limit_and_sizes.append(len(sets))
        if len(sets) > limit_and_sizes[0]:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return original(track, recipe, x, y, sets, *rest)

    monkeypatch.setattr(batched, "_train_group", train_group)
    return limit_and_sizes


def test_out_of_memory_halves_k_and_says_so(oom_above):
    x, y = _data("purchase100", 120)
    sets = _sets(120, (96, 96, 70, 80, 60))
    seeds = (1, 2, 3, 4, 5)
    recipe = recipe_for("purchase100", "inf", epochs=2, batch_size=16)
    with pytest.warns(batched.BackOffWarning) as record:
        got = train_batched("purchase100", recipe, x, y, sets, seeds, device="cpu")
    assert [str(w.message).split(":")[0] for w in record] == [
        "out of memory training 5 purchase100 models at once on cpu",
        "out of memory training 3 purchase100 models at once on cpu",
    ]
    assert "retrying as groups of at most 3; auto_parallel plans at most 3" in str(record[0].message)
    assert oom_above[1:] == [5, 3, 2, 1, 2]
    _assert_same_models(got, _sequential("purchase100", recipe, x, y, sets, seeds), atol=1e-5)
    assert auto_parallel("purchase100", recipe, "cpu") == 2  # the back-off lasts
    del oom_above[1:]
    train_batched("purchase100", recipe, x, y, sets[:4], seeds[:4], device="cpu")
    assert oom_above[1:] == [2, 2]  # a group larger than the lowered K is split before it is tried
    assert auto_parallel("purchase100", recipe_for("purchase100", "lo"), "cpu") > 2  # per (device, track, DP)
    oom_above[0] = 0
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one model that does not fit: nothing left to halve
        train_batched("purchase100", recipe, x, y, sets[:1], seeds[:1], device="cpu")


def test_train_many_keeps_the_back_off(oom_above):
    x, y = _data("purchase100", 120)
    recipe = recipe_for("purchase100", "inf", epochs=1, batch_size=32)
    with pytest.warns(batched.BackOffWarning):
        done = list(train_many("purchase100", recipe, x, y, _sets(120, (50,) * 6), range(6), parallel=4, device="cpu"))
    assert [i for i, _ in done] == list(range(6))
    assert oom_above[1:] == [4, 2, 2, 2]  # the second group is planned at the lowered K


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: out of memory",
    ],
)
def test_library_out_of_memory_backs_off_too(monkeypatch, message):
    # cuBLAS and cuDNN report their own failed allocations as plain RuntimeErrors; any other
    # RuntimeError is raised as it is.
    monkeypatch.setattr(batched, "_BACKED_OFF", {})
    original = batched._train_group

    def train_group(track, recipe, x, y, sets, *rest):
        if len(sets) > 1:
            raise RuntimeError(message)
        return original(track, recipe, x, y, sets, *rest)

    monkeypatch.setattr(batched, "_train_group", train_group)
    x, y = _data("purchase100", 40)
    recipe = recipe_for("purchase100", "inf", epochs=1, batch_size=16)
    with pytest.warns(batched.BackOffWarning):
        assert len(train_batched("purchase100", recipe, x, y, _sets(40, (30, 30)), (1, 2), device="cpu")) == 2
    monkeypatch.setattr(batched, "_BACKED_OFF", {})
    monkeypatch.setattr(batched, "_train_group", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_batched("purchase100", recipe, x, y, _sets(40, (30, 30)), (1, 2), device="cpu")


def test_out_of_memory_moving_the_data_backs_off_too(monkeypatch):
    # production.folders hands each group the dataset on the host; moving it to the device can run
    # out of memory (another group's or process's memory not yet freed) as a step can: halve K and
    # retry, not fail the run. One model with nothing to halve raises the error as it is.
    monkeypatch.setattr(batched, "_BACKED_OFF", {})
    x, y = _data("purchase100", 60)
    moves = []
    original = torch.Tensor.to

    def to(self, *args, **kwargs):
        if self is x:
            moves.append(len(moves))
            if len(moves) == 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected, moving the data)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    sets, seeds = _sets(60, (40, 30, 50)), (1, 2, 3)
    recipe = recipe_for("purchase100", "inf", epochs=1, batch_size=16)
    with pytest.warns(batched.BackOffWarning, match="out of memory training 3 purchase100 models at once"):
        got = train_batched("purchase100", recipe, x, y, sets, seeds, device="cpu")
    assert len(moves) == 3  # the failed move, then one per half
    monkeypatch.setattr(torch.Tensor, "to", original)
    _assert_same_models(got, _sequential("purchase100", recipe, x, y, sets, seeds), atol=1e-5)
    assert auto_parallel("purchase100", recipe, "cpu") == 2
    monkeypatch.setattr(torch.Tensor, "to", to)
    moves.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError, match="moving the data"):
        train_batched("purchase100", recipe, x, y, sets[:1], seeds[:1], device="cpu")


def test_free_cuda_memory_counts_the_allocators_cache(monkeypatch):
    # Memory torch's caching allocator reserved for an earlier group but no longer uses is free to
    # the next group, though the driver's free figure does not include it.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (10 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda dev=None: 30 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda dev=None: 5 << 30)
    assert batched.free_memory(torch.device("cuda")) == 35 << 30


def test_back_off_frees_the_failed_attempts_tensors_before_the_retry(monkeypatch):
    # The failed group's tensors, even those caught in a reference cycle (which only the cyclic
    # collector frees), are gone when the halves start: on CUDA they would take the retry's memory.
    monkeypatch.setattr(batched, "_BACKED_OFF", {})
    original, seen = batched._train_group, []

    class Cycle:
        def __init__(self):
            self.me, self.big = self, torch.zeros(1000)

    def train_group(track, recipe, x, y, sets, *rest):
        if len(sets) > 1:
            cycle = Cycle()
            seen.append(weakref.ref(cycle))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        assert seen[0]() is None, "the failed attempt's tensors are still alive"
        return original(track, recipe, x, y, sets, *rest)

    monkeypatch.setattr(batched, "_train_group", train_group)
    x, y = _data("purchase100", 40)
    recipe = recipe_for("purchase100", "inf", epochs=1, batch_size=16)
    gc.disable()  # no automatic collection by chance in between
    try:
        with pytest.warns(batched.BackOffWarning):
            train_batched("purchase100", recipe, x, y, _sets(40, (30, 30)), (1, 2), device="cpu")
    finally:
        gc.enable()
