"""Neighbourhood queries (issue 24, item 2): the query views save_preds.py --neighbours caches, the
multivariate neighbourhood attack, its place in the line-up, and the classifier's features."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from scipy.special import ndtr
from scipy.stats import multivariate_normal, norm

import run_lira_mia
import save_preds
from attacks.auto import AutoAttack
from attacks.classifier import _features, neighbourhood
from attacks.lira import squash
from attacks.neighbours import GroupSums, neighbourhood_lira, oas_shrinkage
from attacks.options import AttackOptions
from attacks.suite import COMPARE, NEIGHBOURS_OFFLINE, NEIGHBOURS_ONLINE, make_attack, runnable
from challenges import cache, layout
from challenges.datasets import load_dataset, to_tensor
from challenges.tracks import CIFAR10_STD, load_params
from models import load_model
from models import query as query_module
from models.query import apply_view, neighbour_inputs, query, view_names
from tests.conftest import run_script
from tests.fake_scenario import fake_scenario, permute_membership

TRACK, SCENARIO = "purchase100", "purchase100_inf"
NEIGHBOUR_ROWS = (NEIGHBOURS_OFFLINE, NEIGHBOURS_ONLINE)


# ---------------------------------------------------------------------------------------------
# the views
# ---------------------------------------------------------------------------------------------


def test_view_names_say_how_the_neighbours_were_made():
    assert view_names(False, 0, 2, "purchase100") == ["orig", "nb1:flip4", "nb2:flip4"]
    assert view_names(False, 0, 1, "purchase100", flip_bits=8) == ["orig", "nb1:flip8"]
    assert view_names(True, 0, 2, "cifar10", noise=0.05) == ["orig", "flip", "nb1:noise0.05", "nb2:noise0.05"]
    assert view_names(False, 0) == ["orig"]
    with pytest.raises(ValueError, match="flip_bits"):
        view_names(False, 0, 1, "purchase100", flip_bits=601)


def test_purchase_neighbours_are_a_fixed_function_of_the_record(monkeypatch):
    """Each neighbour flips exactly b bits, chosen by (point, k) alone: the same in any batch, order
    or subset (every model, dev and final ones on their own points, sees the same neighbours)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((50, 600)) < 0.1).astype(np.float32))
    points = rng.choice(10_000, 50, replace=False)
    a = neighbour_inputs(x, points, "nb1:flip4")
    assert ((a != x).sum(1) == 4).all() and set(torch.unique(a).tolist()) <= {0.0, 1.0}
    order = rng.permutation(50)
    assert torch.equal(neighbour_inputs(x[order], points[order], "nb1:flip4"), a[order])
    assert torch.equal(neighbour_inputs(x[:7], points[:7], "nb1:flip4"), a[:7])
    assert torch.equal(apply_view(x, "nb1:flip4", points), a)
    b = neighbour_inputs(x, points, "nb2:flip4")  # another neighbour of the same record
    assert ((b != x).sum(1) == 4).all() and not torch.equal(a, b)
    c = neighbour_inputs(x, points + 1, "nb1:flip4")  # another record's draw
    assert not torch.equal(a, c)
    eight = neighbour_inputs(x, points, "nb1:flip8")
    assert ((eight != x).sum(1) == 8).all()
    with pytest.raises(ValueError, match="dataset indices"):
        apply_view(x, "nb1:flip4")
    monkeypatch.setattr(query_module, "NEIGHBOUR_BLOCK", 7)  # built block by block: the same
    assert torch.equal(neighbour_inputs(x, points, "nb1:flip4"), a)


def test_cifar_neighbours_add_fixed_pixel_noise():
    x = torch.zeros(64, 3, 32, 32)
    points = np.arange(1000, 1064)
    a = neighbour_inputs(x, points, "nb1:noise0.03")
    pixels = a * torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)  # back to [0, 1] pixel units
    assert abs(float(pixels.std()) - 0.03) < 0.001 and abs(float(pixels.mean())) < 0.001
    assert torch.equal(neighbour_inputs(x.flip(0), points[::-1].copy(), "nb1:noise0.03"), a.flip(0))
    assert not torch.equal(neighbour_inputs(x, points, "nb2:noise0.03"), a)


def test_query_gives_every_batch_size_the_same_neighbour_signals():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(600, 100))
    x = (torch.rand(30, 600) < 0.1).float()
    y = torch.randint(0, 100, (30,))
    points = np.arange(500, 530)
    views = view_names(False, 0, 3, "purchase100")
    whole = query(model, x, y, views, points=points)
    small = query(model, x, y, views, batch_size=7, points=points)
    assert whole["phi"].shape == (30, 4) and torch.allclose(whole["phi"], small["phi"])
    built = {name: neighbour_inputs(x, points, name) for name in views[1:]}
    assert torch.allclose(query(model, x, y, views, view_inputs=built)["phi"], whole["phi"])
    assert not torch.allclose(whole["phi"][:, 1], whole["phi"][:, 0])


# ---------------------------------------------------------------------------------------------
# save_preds.py --neighbours: the cache
# ---------------------------------------------------------------------------------------------


def _save_preds(data_dir, cache_dir, *extra):
    return save_preds.main(
        ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--device", "cpu", *extra]
    )


def _lira(data_dir, cache_dir, report_dir, *extra):
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", str(report_dir)]
    return run_lira_mia.main(argv + list(extra))


def test_save_preds_caches_the_same_neighbours_for_every_model(small_copy, capsys):
    """Train, dev and final models hold the views, each computed on the same perturbed records (a
    direct forward pass agrees); another K or b recomputes every file, never mixing views."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir, "--neighbours", "2") == 0
    mds = layout.models(data_dir, TRACK, SCENARIO)
    ds = load_dataset(load_params(data_dir, TRACK))
    entries = {md.phase: cache.read(cache.cache_file(cache_dir, md)) for md in mds}
    assert set(entries) == {"train", "dev", "final"}
    for md in (mds[0], mds[-1]):  # a train model (the whole union) and a final one (its own points)
        entry = cache.read(cache.cache_file(cache_dir, md))
        assert list(entry["views"]) == ["orig", "nb1:flip4", "nb2:flip4"] and entry["phi"].shape[1] == 3
        pts = entry["points"][:40]
        x = to_tensor(TRACK, ds.x[pts])
        model = load_model(TRACK, md.model_file)
        with torch.no_grad():
            for v, name in enumerate(entry["views"]):
                logits = model(apply_view(x, str(name), pts)).double()
                zy = logits[torch.arange(40), torch.from_numpy(ds.y[pts])]
                others = logits.scatter(1, torch.from_numpy(ds.y[pts])[:, None], float("-inf"))
                phi = (zy - torch.logsumexp(others, 1)).numpy()
                np.testing.assert_allclose(entry["phi"][:40, v], phi, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert _save_preds(data_dir, cache_dir, "--neighbours", "2") == 0
    assert f"0 model(s) queried, {len(mds)} already cached" in capsys.readouterr().out
    for extra, views in (
        (["--neighbours", "1"], ["orig", "nb1:flip4"]),
        (["--neighbours", "1", "--flip-bits", "8"], ["orig", "nb1:flip8"]),
    ):
        assert _save_preds(data_dir, cache_dir, *extra) == 0
        assert f"{len(mds)} model(s) queried" in capsys.readouterr().out
        assert all(list(cache.read(cache.cache_file(cache_dir, md))["views"]) == views for md in mds)


def test_models_cached_with_other_views_are_refused(small_copy, tmp_path, capsys):
    """A run that changed the views of some models only (one shard rerun with another b) leaves views
    of the same count but different meaning: every attack refuses them, naming the fix."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir, "--neighbours", "2") == 0
    assert _save_preds(data_dir, cache_dir, "--neighbours", "2", "--flip-bits", "8", "--shard", "1/2") == 0
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--report-dir", str(tmp_path)]
    code, err = run_script(run_lira_mia.main, "run_lira_mia.py", argv + ["--attack", "neighbours"], capsys)
    assert code == 1 and "query views" in err[-1] and "differ" in err[-1] and "--flip-bits" in err[-1]


def test_cache_load_refuses_views_of_the_same_count_but_other_names(small_copy):
    """One model's file holds another view than the others (same count): the shapes agree, so only
    the names can tell; cache.load refuses them instead of mixing."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir) == 0
    mds = layout.models(data_dir, TRACK, SCENARIO)
    path = cache.cache_file(cache_dir, mds[1])
    entry = cache.read(path)
    stamp = {k: entry[k] for k in (*cache.KEY, "model_sha256")}
    cache.write(path, entry["points"], ["nb1:flip4"], stamp, {"phi": entry["phi"], "mentr": entry["mentr"]})
    points = cache.read(cache.cache_file(cache_dir, mds[0]))["points"]
    with pytest.raises(cache.CacheError, match="query views .* differ from"):
        cache.load(cache_dir, mds[:2], points)


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--flip-bits", "8"], "--flip-bits needs --neighbours K"),
        (["--neighbours", "1", "--noise", "0.1"], "--noise does not apply to purchase100"),
        (["--neighbours", "-1"], "--neighbours"),
        (["--neighbours", "1", "--flip-bits", "601"], "--flip-bits"),
    ],
)
def test_neighbour_flag_checks(small_challenge, tmp_path, bad, says, capsys):
    argv = ["--challenge", TRACK, "--data-dir", small_challenge, "--cache-dir", str(tmp_path), "--device", "cpu"]
    code, err = run_script(save_preds.main, "save_preds.py", argv + bad, capsys)
    assert code != 0 and says in err[-1]


def test_cifar_neighbours_beside_flips(tiny_copy, tmp_path, capsys):
    """cifar10: the flips of --augment and the pixel-noise neighbours together, every model the same
    views; the attack runs on them; --flip-bits is purchase100's."""
    cache_dir = str(tmp_path / "cache")
    argv = ["--challenge", "cifar10", "--data-dir", tiny_copy, "--cache-dir", cache_dir, "--scenario", "cifar10_inf"]
    code, err = run_script(save_preds.main, "save_preds.py", argv + ["--neighbours", "1", "--flip-bits", "2"], capsys)
    assert code == 2 and "--flip-bits does not apply to cifar10" in err[-1]
    assert save_preds.main(argv + ["--device", "cpu", "--augment", "--neighbours", "1", "--noise", "0.05"]) == 0
    mds = layout.models(tiny_copy, "cifar10", "cifar10_inf")
    views = ["orig", "flip", "nb1:noise0.05"]
    assert all(list(cache.read(cache.cache_file(cache_dir, md))["views"]) == views for md in mds)
    attack = ["--attack", "neighbours", "--online_attack", "--report-dir", str(tmp_path)]
    assert run_lira_mia.main(argv + attack) == 0
    for md in layout.models(tiny_copy, "cifar10", "cifar10_inf", ["dev", "final"]):
        values = layout.read_row(md.prediction_file)
        assert values.shape == (200,) and np.all((values >= 0) & (values <= 1))


# ---------------------------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------------------------


def multiview(data, V=4, drop=0.6, rho=0.7, seed=5):
    """``data`` (a fake scenario, one view) with V views: view v of a model on a point is its phi
    plus noise correlated across views (rho), a member's neighbours dropping by ``drop`` more."""
    rng = np.random.default_rng(seed)
    n, P, _ = data.phi.shape
    member = np.zeros((n, P), dtype=bool)
    member[: data.n_shadows] = data.shadow_in
    for r in range(data.n_shadows, n):  # the targets' membership, from their challenge points
        member[r, data.challenge[r]] = data.solutions[r] == 1 if (data.solutions[r] >= 0).all() else False
    common = rng.normal(0, 1, (n, P, 1))
    noise = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(0, 1, (n, P, V))
    shift = np.concatenate([[0.0], -drop * np.ones(V - 1)])
    phi = data.phi + noise * 0.5 + member[:, :, None] * shift
    mentr = -0.5 * phi + rng.normal(0, 0.3, phi.shape)
    return dataclasses.replace(data, fields={"phi": phi.astype(np.float32), "mentr": mentr.astype(np.float32)})


def _fake(V=4, **kw):
    return multiview(fake_scenario(n_train=10, P=80, m=8, **kw), V=V)


def _loo(data):
    rows = np.arange(len(data.models))
    return rows, np.where(rows < data.n_shadows, rows, -1)


def _balanced(S=12, P=30, V=3, T=4, seed=0):
    """Arrays of S shadows (each point IN for exactly S/2 of them) and T dev/final-like targets, V
    correlated views whose member shift differs by view."""
    rng = np.random.default_rng(seed)
    member = np.zeros((S + T, P), dtype=bool)
    for p in range(P):
        member[rng.permutation(S)[: S // 2], p] = True
    member[S:] = rng.random((T, P)) < 0.5
    common = rng.normal(0, 1, (S + T, P, 1))
    noise = 0.8 * common + 0.6 * rng.normal(0, 1, (S + T, P, V))
    effect = rng.normal(0, 0.5, (1, P, V))  # each point's own view effects
    phi = rng.normal(1.0, 1.0, (1, P, 1)) + effect + noise + member[:, :, None] * np.linspace(1.5, 0.8, V)
    return phi, member


def _reference(phi, member, S, t, exclude, online, lam):
    """Target row ``t``'s llr (online) or Z (offline) on every pool point, straight from (N1)-(N5):
    the shadows but ``exclude``, loops and scipy's densities; no point lacks a group here."""
    keep = [s for s in range(S) if s != exclude]
    x, m = phi[keep], member[keep]
    P, V = phi.shape[1:]
    means = {g: np.array([x[m[:, p] == g, p].mean(axis=0) for p in range(P)]) for g in (True, False)}
    every = x.mean(axis=0)
    effect = every - every[:, :1]
    cov, offset = {}, {}
    for g in (True, False):
        resid = [x[m[:, p] == g, p] - means[g][p] for p in range(P)]
        pooled = sum(r.T @ r for r in resid) / sum(len(r) - 1 for r in resid)
        sd = np.sqrt(np.diag(pooled))
        R = pooled / np.outer(sd, sd)
        cov[g] = np.outer(sd, sd) * ((1 - lam) * R + lam * np.eye(V))
        counts = np.array([(m[:, p] == g).sum() for p in range(P)])
        offset[g] = (counts[:, None] * (means[g] - means[g][:, :1] - effect)).sum(axis=0) / counts.sum()
    out = []
    for p in range(P):
        s = phi[t, p]
        if not online:
            sd = np.sqrt(np.diag(cov[False]))
            w = np.linalg.solve(cov[False] / np.outer(sd, sd), np.ones(V))
            out.append(((s - means[False][p]) / sd) @ w / np.sqrt(w.sum()))
            continue
        mu = {g: means[g][p, 0] + effect[p] + offset[g] for g in (True, False)}
        if lam == 1:  # independent views: a product of one-dimensional densities
            logpdf = {g: norm.logpdf(s, mu[g], np.sqrt(np.diag(cov[g]))).sum() for g in (True, False)}
        else:
            logpdf = {g: multivariate_normal(mu[g], cov[g]).logpdf(s) for g in (True, False)}
        out.append(logpdf[True] - logpdf[False])
    return np.array(out)


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_attack_agrees_with_a_direct_reference(online, lam):
    """(N1)-(N5) against a from-scratch computation per target, train models left out (the
    reference drops the shadow itself) and dev/final-like targets; lam = 1 is the product of
    independent per-view Gaussians."""
    S, V = 12, 3
    phi, member = _balanced(S=S, V=V)
    P = phi.shape[1]
    rows = np.arange(len(phi))
    exclude = np.where(rows < S, rows, -1)
    idx = np.broadcast_to(np.arange(P), (len(rows), P))
    scores = neighbourhood_lira(phi, phi[:S], member[:S], idx, exclude, online=online, shrinkage=lam, min_shadows=1)
    for t in (0, 5, S, S + 3):
        ref = _reference(phi, member, S, t, exclude[t], online, lam)
        expected = squash(ref / V) if online else ndtr(ref)
        np.testing.assert_allclose(scores[t], expected, rtol=0, atol=1e-10)


def test_left_out_sums_equal_ones_computed_without_the_shadow():
    data = _fake(V=3)
    shadow = data.phi[: data.n_shadows]
    for group in (data.shadow_in, ~data.shadow_in):
        full = GroupSums(shadow, group)
        for e in (0, 4, 9):
            keep = np.arange(data.n_shadows) != e
            got, ref = full.left_out(e), GroupSums(shadow[keep], group[keep]).left_out(-1)
            for a, b in zip(got, ref):
                np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_oas_shrinks_little_with_many_residuals_and_fully_with_none():
    R = np.array([[1.0, 0.8], [0.8, 1.0]])
    assert oas_shrinkage(R, 1e6) < 1e-3 < oas_shrinkage(R, 10) < 1
    assert oas_shrinkage(R, 0) == 1 and oas_shrinkage(np.eye(3), 100) == 1


@pytest.mark.parametrize("label", NEIGHBOUR_ROWS)
def test_a_targets_membership_never_enters_its_own_scores(label):
    """Shuffling a left-out train model's membership changes no score of its own (its signals and
    membership are left out of the means, sigmas and correlations), while it does move the others'."""
    data = _fake()
    attack = make_attack(dict(COMPARE)[label])
    rows, exclude = _loo(data)
    before = attack(data, rows, exclude)
    for t in (0, 3):
        after = attack(permute_membership(data, t), rows, exclude)
        np.testing.assert_allclose(after[t], before[t], rtol=0, atol=1e-12)
        assert not np.allclose(np.delete(after, t, 0), np.delete(before, t, 0))


def test_neighbourhood_attack_sees_what_independent_views_miss():
    """A member's neighbours drop more than a non-member's: the joint test ranks better than
    LiRA's rule of independent views on the same views, on train models left out."""
    from sklearn.metrics import roc_auc_score

    data = _fake(V=4)
    rows, exclude = _loo(data)
    train = rows[: data.n_shadows]
    truth = data.solutions[train].ravel()
    ours = make_attack(AttackOptions(attack="neighbours", online_attack=True))(data, train, train)
    lira_views = make_attack(AttackOptions(online_attack=True, stable_logit_scaling=True))(data, train, train)
    assert roc_auc_score(truth, ours.ravel()) > roc_auc_score(truth, lira_views.ravel()) + 0.02


# ---------------------------------------------------------------------------------------------
# the line-up and the classifier
# ---------------------------------------------------------------------------------------------


def test_lineup_leaves_the_rows_out_on_one_view():
    kept, left_out = runnable(COMPARE, 1)
    assert set(left_out) == set(NEIGHBOUR_ROWS) and "--neighbours" in left_out[NEIGHBOURS_ONLINE]
    assert [lb for lb, _ in kept] == [lb for lb, _ in COMPARE if lb not in NEIGHBOUR_ROWS]
    assert runnable(COMPARE, 3) == (list(COMPARE), {})


def test_auto_leaves_the_rows_out_on_one_view_and_may_choose_them_on_more():
    one = fake_scenario(n_train=8, P=60, m=6)
    attack = make_attack(AttackOptions(attack="auto"))
    assert isinstance(attack, AutoAttack)
    rows, exclude = _loo(one)
    attack(one, rows, exclude)
    choice = attack.choices[one.scenario]
    assert set(choice.left_out) == set(NEIGHBOUR_ROWS) and not set(choice.train_tpr) & set(NEIGHBOUR_ROWS)
    many = _fake()
    attack(many, *_loo(many))
    choice = attack.choices[many.scenario]
    assert not choice.left_out and set(NEIGHBOUR_ROWS) <= set(choice.train_tpr)


def test_classifier_gets_the_neighbourhood_features():
    phi = np.array([[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]])
    np.testing.assert_allclose(neighbourhood(phi), [[-1.5, 0.5], [0.0, 0.0]])
    assert neighbourhood(phi[:, :1]) is None
    mentr = np.zeros_like(phi)
    assert _features(phi, mentr, None, None, 10).shape == (2, 2 * 3 + 2)
    assert _features(phi[:, :1], mentr[:, :1], None, None, 10).shape == (2, 2)
    data = _fake()
    rows, exclude = _loo(data)
    scores = make_attack(AttackOptions(attack="classifier"))(data, rows, exclude)
    assert scores.shape == (len(rows), data.challenge.shape[1]) and np.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------


def test_end_to_end_neighbours_evaluate_and_compare(small_copy, tmp_path, capsys):
    """save_preds.py --neighbours 2, then run_lira_mia.py --attack neighbours --evaluate (offline and
    online) writes scored predictions; --compare shows the rows."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir, "--neighbours", "2") == 0
    for extra in ([], ["--online_attack"]):
        assert _lira(data_dir, cache_dir, tmp_path, "--attack", "neighbours", "--evaluate", *extra) == 0
        scores = json.load(open(tmp_path / TRACK / "scores.json"))[SCENARIO]
        assert 0 <= scores["train"]["TPR_FPR_1000"] <= 1 and "dev+final" in scores
        for md in layout.models(data_dir, TRACK, SCENARIO, ["dev", "final"]):
            values = layout.read_row(md.prediction_file)
            assert values.shape == (200,) and np.all((values >= 0) & (values <= 1))
    assert _lira(data_dir, cache_dir, tmp_path / "cmp", "--compare", "--rmia-population", "100") == 0
    report = (tmp_path / "cmp" / TRACK / "report.md").read_text()
    assert all(f"| {label} |" in report for label in NEIGHBOUR_ROWS) and "Left out" not in report


def test_compare_and_attack_on_a_cache_without_neighbours(small_copy, tmp_path, capsys):
    """Existing caches hold one view: --compare still runs, the neighbourhood rows left out with a
    note; --attack neighbours refuses in one line naming the fix."""
    data_dir, cache_dir = small_copy
    assert _save_preds(data_dir, cache_dir) == 0
    assert _lira(data_dir, cache_dir, tmp_path, "--compare", "--rmia-population", "100") == 0
    report = (tmp_path / TRACK / "report.md").read_text()
    assert "Left out of this comparison and of auto's line-up" in report and "--neighbours K" in report
    assert not any(f"| {label} |" in report for label in NEIGHBOUR_ROWS)
    argv = ["--challenge", TRACK, "--data-dir", data_dir, "--cache-dir", cache_dir, "--attack", "neighbours"]
    code, err = run_script(run_lira_mia.main, "run_lira_mia.py", argv, capsys)
    assert code == 1 and "needs 1 or more query views beyond orig" in err[-1] and "--neighbours K" in err[-1]
    assert not os.path.exists(os.path.join(data_dir, TRACK, "predictions.json"))
