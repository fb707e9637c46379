"""The CUDA path: the batched trainer, save_preds.py and train_shadows.py on a GPU, each against
the one-model trainer or the CPU. Skipped without CUDA (``make gpu-check`` runs them on a GPU).

TF32 is switched off for these tests: cuDNN's default TF32 convolutions round to 10 mantissa
bits, which the two trainers (grouped against plain convolutions) would not round alike.

Rehearsal without a GPU: ``MICO_GPU_TEST_DEVICE=cpu python -m pytest tests/test_gpu.py`` runs
every test with "cpu" in place of "cuda" (the sync count is then not checked: CUDA's sync debug
mode needs CUDA), which catches the tests' own mistakes before a GPU is at hand.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import save_preds
import train_shadows
from challenges import cache, layout
from models import batched, build_model, load_model
from models.batched import auto_parallel, train_batched, train_many
from models.train import recipe_for, train_model
from tests.test_batched import CASES, _assert_same_models, _data, _sets, assert_dp_accounting, case_data

DEV = os.environ.get("MICO_GPU_TEST_DEVICE", "cuda")  # "cpu": a rehearsal (module docstring)
pytestmark = [
    pytest.mark.skipif(DEV == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.usefixtures("single_thread", "no_tf32"),
]
ATOL = 1e-4  # CUDA reductions (atomics, other kernels than the CPU's) round differently


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _on_cuda(track, recipe, x, y, sets, seeds):
    return [train_model(track, recipe, x[s], y[s], device=DEV, seed=seed) for s, seed in zip(sets, seeds)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("track", sorted(CASES))
def test_nonprivate_equals_train_model_on_cuda(track, shuffle):
    # Device streams (CUDA's default): no randomness without shuffling, and the shuffles are
    # train_model's (the CUDA generator seeded with the model's seed).
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "inf", shuffle=shuffle, **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], device=DEV)
    assert all(next(r.model.parameters()).device.type == DEV for r in got)
    ref = _on_cuda(track, recipe, x, y, sets, c["seeds"])
    _assert_same_models(got, ref, atol=ATOL)
    for g, r in zip(got, ref):
        assert g.train_accuracy == pytest.approx(r.train_accuracy, abs=0.02)


@pytest.mark.parametrize("track", sorted(CASES))
def test_exact_streams_dp_equal_train_model_on_cuda(track):
    # Exact streams on CUDA: Poisson batches from the CPU generator, noise from the CUDA one that
    # train_model's torch.manual_seed seeds, per parameter as Opacus draws it.
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "lo", lr=c["dp_lr"], **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], device=DEV, streams="exact")
    _assert_same_models(got, _on_cuda(track, recipe, x, y, sets, c["seeds"]), atol=ATOL)


@pytest.mark.parametrize("track", sorted(CASES))
def test_device_streams_dp_accounting_on_cuda(track):
    # Device streams: other random numbers, the same privacy (noise multiplier, sample rate,
    # steps, epsilon) as train_model on CUDA.
    c, x, y, sets = case_data(track)
    recipe = recipe_for(track, "lo", lr=c["dp_lr"], **c["overrides"])
    got = train_batched(track, recipe, x, y, sets, c["seeds"], device=DEV, streams="device")
    ref = _on_cuda(track, recipe, x, y, sets[:1], c["seeds"][:1])[0]
    assert got[0].noise_multiplier == ref.noise_multiplier and got[0].epsilon == ref.epsilon
    assert_dp_accounting(got, sets, recipe)


def test_device_noise_std_on_cuda(monkeypatch):
    # Zero gradients and SGD at lr 1: a model's update is its summed noise over its expected
    # batch size, std sqrt(steps) * sigma * C / expected per coordinate; models independent.
    def zero_grads(params, xb, yb, mask, max_grad_norm=None):
        zeros = torch.zeros(len(mask), device=mask.device)
        return {n: torch.zeros_like(p) for n, p in params.items()}, zeros, zeros.long()

    monkeypatch.setitem(batched.GRADS, "purchase100", zero_grads)
    c, x, y, sets = case_data("purchase100", (96, 70, 96))
    seeds = (11, 12, 13)
    recipe = recipe_for("purchase100", "lo", optimizer="sgd", lr=1.0, **c["overrides"])
    got = train_batched("purchase100", recipe, x, y, sets, seeds, device=DEV, streams="device")
    deltas = []
    for res, s, seed in zip(got, sets, seeds):
        torch.manual_seed(seed)
        init = build_model("purchase100").state_dict()
        delta = torch.cat([(res.model.state_dict()[n].cpu() - init[n]).flatten() for n in init])
        steps = -(-len(s) // recipe.batch_size)
        expected_std = (steps * recipe.epochs) ** 0.5 * res.noise_multiplier * recipe.max_grad_norm
        expected_std /= int(len(s) * (1.0 / steps))
        assert delta.std().item() == pytest.approx(expected_std, rel=0.02)
        deltas.append(delta.numpy())
    assert abs(np.corrcoef(deltas[0], deltas[2])[0, 1]) < 0.02


def test_device_poisson_batches_on_cuda():
    # The device sampler on CUDA: batch sizes of mean N q, records of the model's own set only.
    recipe = recipe_for("purchase100", "lo", batch_size=10, epochs=1)
    sets = [torch.as_tensor(s) for s in _sets(190, (130, 60))]
    group = batched._make_group(recipe, sets, (5, 6), [None, None], torch.device(DEV), "device")
    sizes = [[], []]
    for _ in range(60):
        for active, idx, mask in batched._epoch_batches(group, recipe):
            assert idx.device.type == mask.device.type == DEV
            for k in range(2):
                rows = idx[k][mask[k]].cpu().numpy()
                assert np.isin(rows, sets[k].numpy()).all() and len(np.unique(rows)) == len(rows)
                if active[k]:
                    sizes[k].append(len(rows))
    for k, (n, s) in enumerate([(130, 13), (60, 6)]):
        assert len(sizes[k]) == 60 * s
        assert np.mean(sizes[k]) == pytest.approx(n / s, rel=0.1)


@pytest.mark.parametrize("suffix", ["inf", "lo"])
def test_no_sync_in_the_step_loop_on_cuda(monkeypatch, suffix):
    # CUDA's sync debug mode warns at every blocking host read or copy: an epoch of 40 steps may
    # have its few per-epoch ones (setup copies, the Poisson counts), not one per step.
    x, y = _data("purchase100", 320)
    recipe = recipe_for("purchase100", suffix, epochs=1, batch_size=8)
    original = batched._train_epoch

    def watched(*args):
        if DEV != "cuda":  # a rehearsal: the sync debug mode needs CUDA
            return original(*args)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return original(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    monkeypatch.setattr(batched, "_train_epoch", watched)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_batched("purchase100", recipe, x, y, _sets(320, (320, 300)), (1, 2), device=DEV, streams="device")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 8, syncs


@pytest.mark.parametrize("clip", [None, 1.0])
def test_cnn_grads_match_func_grads_on_cuda(clip):
    # Grouped convolutions, ghost norms and book-keeping on CUDA against torch.func's
    # materialised per-sample gradients.
    g = torch.Generator().manual_seed(0)
    params = {
        n: 0.1 * torch.randn(3, *p.shape, generator=g).to(DEV) for n, p in build_model("cifar10").named_parameters()
    }
    xb = torch.randn(3, 40, 3, 32, 32, generator=g).to(DEV)
    yb = torch.randint(0, 10, (3, 40), generator=g).to(DEV)
    mask = (torch.arange(40) < torch.tensor([[40], [17], [0]])).to(DEV)
    fast = batched.cnn_grads(params, xb, yb, mask, clip)
    slow = batched.func_grads("cifar10", params, xb, yb, mask, clip)
    for n in params:
        scale = slow[0][n].abs().max().item()
        torch.testing.assert_close(fast[0][n], slow[0][n], rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(fast[1], slow[1], rtol=1e-5, atol=1e-5)


def test_train_many_and_auto_parallel_on_cuda():
    for track, suffix in [("purchase100", "inf"), ("purchase100", "lo"), ("cifar10", "inf"), ("cifar10", "lo")]:
        k = auto_parallel(track, recipe_for(track, suffix), DEV, n_train=50_000)
        assert 1 <= k <= batched.MAX_PARALLEL[DEV]
    c, x, y, sets = case_data("purchase100", (96, 70, 96))
    recipe = recipe_for("purchase100", "inf", shuffle=True, **c["overrides"])
    many = [r for _, r in train_many("purchase100", recipe, x, y, sets, (1, 2, 3), parallel=2, device=DEV)]
    _assert_same_models(many, train_batched("purchase100", recipe, x, y, sets, (1, 2, 3), device=DEV), atol=ATOL)


@pytest.mark.parametrize("track", ["purchase100", "cifar10"])
def test_save_preds_cuda_equals_cpu(tiny_copy, tmp_path, track):
    scenario = f"{track}_inf"
    signals = {}
    for dev in ("cpu", DEV):
        cache_dir = str(tmp_path / dev)
        argv = ["--challenge", track, "--data-dir", tiny_copy, "--cache-dir", cache_dir, "--scenario", scenario]
        assert save_preds.main([*argv, "--device", dev, "--save-logits"]) == 0
        mds = layout.models(tiny_copy, track, scenario)
        entries = [cache.read(cache.cache_file(cache_dir, md)) for md in mds]
        signals[dev] = {f: np.stack([e[f] for e in entries]) for f in ("phi", "mentr", "logits")}
    for f in ("phi", "mentr", "logits"):
        np.testing.assert_allclose(signals[DEV][f], signals["cpu"][f], rtol=1e-4, atol=1e-4, err_msg=f)


def test_train_shadows_on_cuda(small_copy):
    data_dir, cache_dir = small_copy
    argv = ["--challenge", "purchase100", "--scenario", "purchase100_inf", "--data-dir", data_dir]
    assert train_shadows.main([*argv, "--design", "balanced", "--n", "4", "--epochs", "1", "--device", DEV]) == 0
    shadows = layout.models(data_dir, "purchase100", "purchase100_inf", ("shadow",))
    assert len(shadows) == 4
    for md in shadows:
        model = load_model("purchase100", md.model_file, "cpu")
        assert all(torch.isfinite(p).all() for p in model.parameters())
    save = ["--challenge", "purchase100", "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", DEV]
    assert save_preds.main(save) == 0
