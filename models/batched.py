"""Train K models of one architecture at once on one device, each exactly as models.train would.

Every model of a group has its own training set (indices into shared ``x``/``y`` tensors on the
device), its own seed and its scenario's MICO recipe (:func:`models.train.recipe_for`); the
group's parameters are stacked (``name -> [K, *shape]``) and every step updates all K models.
Model k's result equals ``train_model(track, recipe, x[set_k], y[set_k], seed=seed_k)`` up to
float rounding, because it follows the same maths and, with exact streams (the CPU's default),
the same random numbers; with device streams (CUDA's default) it is equal in distribution:

* Initialisation: ``torch.manual_seed(seed_k); build_model(track)``.
* Random streams (``streams=``). "exact" (the default on the CPU): model k owns a CPU generator
  holding the global CPU state right after that initialisation, the state train_model's Poisson
  sampler, shuffles and DP noise draw from, so model k's result is train_model's up to float
  rounding; on CUDA, shuffles and noise come from a CUDA generator seeded with ``seed_k``, as
  train_model's global CUDA generator after ``torch.manual_seed``, and Poisson batches from the
  CPU one, copied to the device every step. "device" (the default on CUDA): no host round trip
  in the step loop. Model k's Poisson batches and shuffles come from its own device generator
  seeded with ``seed_k`` (a Poisson batch as a Binomial(N_k, q_k) count, drawn for the whole
  epoch, then that many records of smallest uniform key: equal in distribution to Opacus'
  sampler, see :func:`_device_poisson_batches`), and the group's DP noise from one device
  generator seeded from all its seeds, in one ``torch.randn`` per step. Non-private unshuffled
  training has no randomness after initialisation, so both streams give the same models; on
  CUDA the shuffles are train_model's in both. Both run on any device, so the CPU tests run the
  device streams too.
* Non-private: each model visits its own training set in the given order (or reshuffled per
  epoch with ``Recipe.shuffle``), batches of B, last batch smaller; mean cross-entropy.
* DP-SGD (Opacus' maths, Abadi et al. 2016, Alg. 1): ``S_k = ceil(N_k / B)`` Poisson batches per
  epoch at sample rate ``q_k = 1 / S_k``, an empty batch being a noise-only step. Each per-sample
  gradient, all parameters jointly, is scaled by ``min(1, C / (norm + 1e-6))`` (C =
  max_grad_norm); Gaussian noise of std ``sigma_k * C`` is added to the sum (exact streams: drawn
  per parameter in parameter order as Opacus' ``DPOptimizer.add_noise``); the sum is divided by Opacus'
  expected batch size ``int(N_k * q_k)``. ``sigma_k`` comes from
  :func:`models.privacy.find_noise_multiplier` and the reported epsilon from
  :func:`models.privacy.prv_epsilon`, as in train_model.
* Optimisers: torch.optim.SGD / Adam with default settings, applied to the stacked tensors (all
  their state is elementwise); Adam's step count is a per-model tensor on the device.
  StepLR(step_size, gamma) stepped once per epoch.

Models of one group may have training sets of different sizes: batches are padded to the
longest with a mask, and a model that has run its ``S_k`` steps of the epoch is not updated (its
optimiser state included) until the next epoch starts.

Gradients: the purchase100 MLP has a hand-written batched forward and backward (:func:`mlp_grads`:
``torch.baddbmm`` over stacked weights; per-sample norms by the ghost-clipping identity, so no
per-sample gradient is materialised); the cifar10 CNN runs as grouped convolutions with one
backward pass (:func:`cnn_grads`: per-sample norms from the layers' inputs and output gradients,
ghost norms for the wide convolutions, the clipped sum by the book-keeping method). Any
architecture can use :func:`func_grads` (torch.func: ``vmap`` over models of ``grad``, and for DP
of ``vmap`` over samples of ``grad``, which materialises per-sample gradients), which the tests
use as the slow obvious reference for both.

Speed (bench/bench_train.py, 2 CPU cores, 8 MLPs or 4 CNNs at once): on a CPU the MLP's step is
bound by its matrix products, the same per model either way, so batching saves only the
sequential trainer's per-step overheads: about 1.2x for purchase100 without DP and 2.1x with
DP-SGD (Opacus' ghost clipping runs two backward passes). The CNN under func_grads ran at
0.85-1.05x the sequential speed on a CPU; cnn_grads, which replaced it, took 0.55x (non-private)
and 0.75x (DP) of func_grads' time per step (4 models x 64 images, one thread, a loaded machine).
The gains are meant for GPUs, where one
model's step is mostly kernel-launch overhead; docs/gpu.md says what runs on the device and how
``make gpu-check`` measures it.

Host reads with device streams: one per epoch for DP (the epoch's Poisson counts, which size its
batches) and one per epoch for the loss and accuracy history; none inside the step loop (the
learning rate, a Python float, is the only host value a step takes).
"""

from __future__ import annotations

import functools
import gc
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from challenges.tracks import TRACKS
from models.loading import build_model, resolve_device
from models.memory import available_memory
from models.privacy import find_noise_multiplier, prv_epsilon
from models.train import Recipe, TrainResult, check_data

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which MICO used
ADAM_EPS = 1e-8
CLIP_EPS = 1e-6  # Opacus' clip factor: min(1, C / (norm + CLIP_EPS))
MLP_KEYS = ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias")
PSG_CHUNK = 32  # samples per model per per-sample-gradient call in func_grads (bounds memory)
EVAL_SAMPLES = {"purchase100": 1 << 16, "cifar10": 1 << 11}  # samples per forward, all models
MAX_PARALLEL = {"cpu": 8, "cuda": 64}  # auto_parallel's cap: bounds a group's latency
MEMORY_SHARE = 0.5  # auto_parallel plans for this share of the free memory
STREAMS = ("exact", "device")  # where random numbers come from (module docstring)

Params = dict  # parameter name -> stacked tensor [K, *shape]
GradFn = Callable[..., tuple[Params, torch.Tensor, torch.Tensor]]
ProgressFn = Callable[[int, int, float, float], None]


# ---------------------------------------------------------------- gradients


def _clip_factor(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    return (max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)


def _mean_weights(mask: torch.Tensor) -> torch.Tensor:
    """[K, B] weights 1/n_k on each model's n_k valid samples: the gradient of a mean loss."""
    w = mask.to(torch.float32)
    return w / w.sum(1, keepdim=True).clamp(min=1)


def mlp_grads(
    params: Params, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor, max_grad_norm: float | None = None
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """Gradients of K purchase100 MLPs on their batches, by hand with batched matmuls.

    params: ``MLP_KEYS -> [K, *shape]``; xb ``[K, B, 600]``; yb ``[K, B]``; mask ``[K, B]``
    (False: padding). ``max_grad_norm=None``: each model's gradient of its mean cross-entropy over
    its valid samples. Otherwise the sum over valid samples of the per-sample gradients, each
    clipped as a whole to ``max_grad_norm`` (Opacus' clip factor).
    Per-sample norms (ghost clipping, Li et al. 2022; Opacus' "ghost" mode): a linear layer's
    per-sample gradient is ``d_i a_i^T`` (d: gradient at its output, a: its input), whose norm
    is ``|d_i| |a_i|``; the bias adds ``|d_i|``. Returns (grads ``name -> [K, *shape]``, loss sum
    ``[K]``, correct predictions ``[K]``), sums over valid samples.
    """
    w1, b1, w2, b2 = (params[k] for k in MLP_KEYS)
    h = torch.tanh(torch.baddbmm(b1.unsqueeze(1), xb, w1.transpose(1, 2)))  # [K, B, 128]
    z = torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2))  # logits [K, B, 100]
    logp = torch.log_softmax(z, dim=2)
    nll = -logp.gather(2, yb.unsqueeze(2)).squeeze(2)  # [K, B]
    correct = ((z.argmax(dim=2) == yb) & mask).sum(1)
    d2 = logp.exp_()  # d l_i / d z = softmax - onehot(y_i)
    d2.scatter_add_(2, yb.unsqueeze(2), torch.full_like(nll, -1.0).unsqueeze(2))
    d1 = torch.bmm(d2, w2).mul_(1 - h * h)  # d l_i / d(first layer's output) [K, B, 128]
    if max_grad_norm is None:
        weight = _mean_weights(mask)
    else:

        def sq(t):  # squared norms of the rows [K, B]; vector_norm needs no temporary
            return torch.linalg.vector_norm(t, dim=2).square()

        norms = (sq(d2) * (sq(h) + 1) + sq(d1) * (sq(xb) + 1)).sqrt()
        weight = _clip_factor(norms, max_grad_norm) * mask
    d1.mul_(weight.unsqueeze(2))
    d2.mul_(weight.unsqueeze(2))
    grads = dict(
        zip(MLP_KEYS, (torch.bmm(d1.transpose(1, 2), xb), d1.sum(1), torch.bmm(d2.transpose(1, 2), h), d2.sum(1)))
    )
    return grads, (nll * mask).sum(1), correct


@functools.cache
def _skeleton(track: str) -> torch.nn.Module:
    """The track's module on the meta device (no storage, no random draws): functional_call
    supplies every weight. Built outside vmap, which refuses the random initialisation."""
    with torch.device("meta"):
        return build_model(track)


def _losses(module: torch.nn.Module, params: Params, xb: torch.Tensor, yb: torch.Tensor):
    """One model's per-sample cross-entropy ``[B]`` and correctness ``[B]`` on xb ``[B, ...]``."""
    out = functional_call(module, params, (xb,))
    return F.cross_entropy(out, yb, reduction="none"), out.argmax(dim=1) == yb


def func_grads(
    track: str,
    params: Params,
    xb: torch.Tensor,
    yb: torch.Tensor,
    mask: torch.Tensor,
    max_grad_norm: float | None = None,
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """:func:`mlp_grads`' contract for any track, by torch.func (xb ``[K, B, *input_shape]``).

    Non-private: ``vmap`` over models of ``grad`` of the weighted loss. DP: ``vmap`` over models
    of ``vmap`` over samples of ``grad`` gives per-sample gradients ``[K, c, *shape]``, PSG_CHUNK
    samples at a time; their norm is Opacus' (per-parameter norms, then the norm of those).
    """
    module = _skeleton(track)

    def weighted_loss(p, xk, yk, wk):
        nll, ok = _losses(module, p, xk, yk)
        return (nll * wk).sum(), (nll, ok)

    if max_grad_norm is None:
        grads, (nll, ok) = vmap(grad(weighted_loss, has_aux=True))(params, xb, yb, _mean_weights(mask))
        return grads, (nll * mask).sum(1), (ok & mask).sum(1)

    def sample_loss(p, xi, yi):
        return weighted_loss(p, xi.unsqueeze(0), yi.unsqueeze(0), torch.ones(1, device=xi.device))

    per_sample = vmap(vmap(grad(sample_loss, has_aux=True), in_dims=(None, 0, 0)))
    summed = {n: torch.zeros_like(p) for n, p in params.items()}
    loss = torch.zeros(len(mask), device=mask.device)
    correct = torch.zeros(len(mask), dtype=torch.int64, device=mask.device)
    for lo in range(0, mask.shape[1], PSG_CHUNK):
        m = mask[:, lo : lo + PSG_CHUNK]
        g, (nll, ok) = per_sample(params, xb[:, lo : lo + PSG_CHUNK], yb[:, lo : lo + PSG_CHUNK])
        norms = torch.stack([v.flatten(2).norm(dim=2) for v in g.values()]).norm(dim=0)  # [K, c]
        factor = _clip_factor(norms, max_grad_norm) * m
        for n, v in g.items():
            summed[n] += torch.einsum("kc,kc...->k...", factor, v)
        loss += (nll.squeeze(2) * m).sum(1)
        correct += (ok.squeeze(2) & m).sum(1)
    return summed, loss, correct


# The cifar10 CNN's layers (models/cnn.py): name, output channels, kernel, stride, padding.
CNN_CONVS = (("cnn.0", 128, 8, 2, 3), ("cnn.3", 256, 3, 1, 0), ("cnn.5", 256, 3, 1, 0))
GHOST_CHUNK = 32  # samples per model per norm computation in cnn_grads (bounds the unfolded inputs)


def _cnn_forward(params: Params, xb: torch.Tensor) -> tuple[list, torch.Tensor, torch.Tensor]:
    """K stacked CNNs on xb ``[K, B, 3, 32, 32]`` as grouped convolutions over ``[B, K * C, H, W]``.

    Returns the convolutions' (input, output) pairs, the linear layer's input ``[K, B, 6400]`` and
    the logits ``[K, B, 10]``; the outputs require grad, so the loss's gradients reach them."""
    K, B = xb.shape[:2]
    h = xb.transpose(0, 1).reshape(B, K * 3, 32, 32)
    convs = []
    for i, (name, _, _, stride, pad) in enumerate(CNN_CONVS):
        w, b = params[f"{name}.weight"], params[f"{name}.bias"]
        out = F.conv2d(h, w.flatten(0, 1), b.flatten(), stride=stride, padding=pad, groups=K)
        if i == 0:
            out.requires_grad_()  # the graph starts here: no parameter requires grad
        convs.append((h, out))
        h = torch.tanh(out)
        h = F.max_pool2d(h, 3, stride=1) if i == 0 else h
    a9 = F.avg_pool2d(h, 2, 2).view(B, K, 6400).transpose(0, 1)
    z = torch.baddbmm(params["cnn.9.bias"].unsqueeze(1), a9, params["cnn.9.weight"].transpose(1, 2))
    return convs, a9, z


def _conv_sq_norms(a: torch.Tensor, d: torch.Tensor, K: int, kernel: int, stride: int, pad: int) -> torch.Tensor:
    """Squared norms ``[B, K]`` of a convolution's per-sample weight and bias gradients, from its
    input a ``[B, K * C_in, H, W]`` and the gradient d ``[B, K * C_out, H', W']`` at its output.

    The weight's per-sample gradient is ``D_i A_i^T`` (A_i: the unfolded input ``[C_in k^2, P]``,
    D_i: ``[C_out, P]``, P output positions). When ``2 P^2 < C_out C_in k^2`` its norm comes from
    the P x P Gram matrices, ``|D_i A_i^T|^2 = <A_i^T A_i, D_i^T D_i>`` (ghost norm, Li et al.
    2022; the "mixed" rule of Bu et al. 2023's book-keeping), else from the gradient itself; the
    bias's is ``|D_i 1|^2``."""
    B, P = a.shape[0], d.shape[2] * d.shape[3]
    cols = F.unfold(a, kernel, padding=pad, stride=stride).view(B, K, -1, P)
    dd = d.reshape(B, K, -1, P)
    if 2 * P * P < dd.shape[2] * cols.shape[2]:
        weight = (cols.transpose(2, 3) @ cols).mul_(dd.transpose(2, 3) @ dd).sum((2, 3))
    else:
        weight = (dd @ cols.transpose(2, 3)).square().sum((2, 3))
    return weight + dd.sum(3).square().sum(2)


def cnn_grads(
    params: Params, xb: torch.Tensor, yb: torch.Tensor, mask: torch.Tensor, max_grad_norm: float | None = None
) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """:func:`mlp_grads`' contract for K cifar10 CNNs (xb ``[K, B, 3, 32, 32]``), with no
    per-sample gradient materialised.

    One backward pass of the summed per-sample losses gives every layer's output gradient per
    sample (d); DP takes each sample's norm from d and the layer inputs (:func:`_conv_sq_norms`,
    the linear layer's ``|d_i| |a_i|``), GHOST_CHUNK samples at a time. The weighted sum of
    per-sample gradients (weights: 1/n_k, or clip factors) is then each layer's weight gradient of
    the weighted d, as the "book-keeping" method (Bu et al. 2023) does: no second backward pass.
    """
    K, B = xb.shape[:2]
    with torch.enable_grad():
        convs, a9, z = _cnn_forward(params, xb)
        logp = torch.log_softmax(z, dim=2)
        nll = -logp.gather(2, yb.unsqueeze(2)).squeeze(2)  # [K, B]
        outs = [out for _, out in convs]
        *ds, d9 = torch.autograd.grad(nll.sum(), [*outs, z])
    nll, correct = nll.detach(), ((z.detach().argmax(dim=2) == yb) & mask).sum(1)
    if max_grad_norm is None:
        weight = _mean_weights(mask)
    else:
        sq = torch.linalg.vector_norm(d9, dim=2).square() * (torch.linalg.vector_norm(a9, dim=2).square() + 1)
        for lo in range(0, B, GHOST_CHUNK):
            part = slice(lo, lo + GHOST_CHUNK)
            for (a, _), d, (_, _, kernel, stride, pad) in zip(convs, ds, CNN_CONVS):
                sq[:, part] += _conv_sq_norms(a[part].detach(), d[part], K, kernel, stride, pad).T
        weight = _clip_factor(sq.sqrt(), max_grad_norm) * mask
    grads = {}
    for (a, _), d, (name, c_out, _, stride, pad) in zip(convs, ds, CNN_CONVS):
        # Each model's c_out channels times its samples' weights, by broadcasting: repeat_interleave
        # synchronises with the host on CUDA in some torch versions.
        dw = (d.reshape(B, K, c_out, *d.shape[2:]) * weight.T.reshape(B, K, 1, 1, 1)).reshape(d.shape)
        w = params[f"{name}.weight"]
        grads[f"{name}.weight"] = torch.nn.grad.conv2d_weight(
            a.detach(), w.flatten(0, 1).shape, dw, stride=stride, padding=pad, groups=K
        ).view(w.shape)
        grads[f"{name}.bias"] = dw.sum((0, 2, 3)).view(K, c_out)
    d9 = d9 * weight.unsqueeze(2)
    grads["cnn.9.weight"] = torch.bmm(d9.transpose(1, 2), a9.detach())
    grads["cnn.9.bias"] = d9.sum(1)
    return grads, (nll * mask).sum(1), correct


GRADS: dict[str, GradFn] = {"purchase100": mlp_grads, "cifar10": cnn_grads}


def logits(track: str, params: Params, xb: torch.Tensor) -> torch.Tensor:
    """Outputs ``[K, B, classes]`` of K stacked models on their inputs xb ``[K, B, ...]``."""
    return vmap(functools.partial(functional_call, _skeleton(track)))(params, (xb,))


# ---------------------------------------------------------------- optimisers


class StackedOptimizer:
    """torch.optim.SGD(lr, momentum) or torch.optim.Adam(lr) with their other defaults, for K
    models whose parameters are stacked ``[K, *shape]``.

    All their state is elementwise, so one update of the stacked tensors performs the K models'
    updates. Adam's bias correction follows each model's own step count, kept as a tensor ``[K]``
    on the parameters' device (no host value enters a step but the learning rate). ``step`` with
    an ``active`` mask leaves a model whose flag is False untouched, state included, as if its
    optimiser had not run. The arithmetic is torch's single-tensor implementation, operation for
    operation, so an active model's values are bit-equal to torch.optim's.
    """

    def __init__(self, recipe: Recipe, params: Params) -> None:
        self.kind, self.momentum, self.params = recipe.optimizer, recipe.momentum, params
        first = next(iter(params.values()))
        self.steps = torch.zeros(len(first), dtype=torch.int64, device=first.device)
        if self.kind == "adam":
            names = ("exp_avg", "exp_avg_sq")
        else:
            names = ("momentum_buffer",) if self.momentum else ()
        self.state = {s: {n: torch.zeros_like(p) for n, p in params.items()} for s in names}

    def step(self, grads: Params, lr: float, active: torch.Tensor | None = None) -> None:
        """One step of the models where ``active`` (bool ``[K]`` on the parameters' device; None:
        all) holds; grads ``name -> [K, *shape]``."""
        if active is None:
            self.steps += 1
            self._update(grads, lr)
            return
        self.steps += active
        # Update every model, then put the inactive ones back: a device mask, no host round trip.
        tensors = [self.params, *self.state.values()]
        before = [{n: v.clone() for n, v in d.items()} for d in tensors]
        self._update(grads, lr)
        for d, old in zip(tensors, before):
            for n, v in d.items():
                v.copy_(torch.where(active.view((-1,) + (1,) * (v.dim() - 1)), v, old[n]))

    def _update(self, grads: Params, lr: float) -> None:
        if self.kind == "sgd":
            for n, p in self.params.items():
                d = grads[n]
                if self.momentum:  # buffer 0 at first: momentum * 0 + g is torch's clone(g)
                    d = self.state["momentum_buffer"][n].mul_(self.momentum).add_(d)
                p.add_(d, alpha=-lr)
            return
        beta1, beta2 = ADAM_BETAS
        # torch computes these per step in Python floats (double); here one per model in float64
        # on the device, rounded alike. A model at step 0 (inactive) gives inf, discarded by step.
        steps = self.steps.to(torch.float64)
        neg_step_size = (-lr / (1 - beta1**steps)).to(torch.float32)
        bc2_sqrt = ((1 - beta2**steps) ** 0.5).to(torch.float32)
        for n, p in self.params.items():
            g, m, v = grads[n], self.state["exp_avg"][n], self.state["exp_avg_sq"][n]
            per_model = (-1,) + (1,) * (p.dim() - 1)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bc2_sqrt.view(per_model)).add_(ADAM_EPS)
            p.add_(torch.mul(m, neg_step_size.view(per_model)).div_(denom))  # addcdiv's order


# ---------------------------------------------------------------- DP noise


def add_noise(grads: Params, generators: Sequence[torch.Generator], stds: np.ndarray, active: np.ndarray) -> None:
    """Exact streams: add N(0, std_k^2) to every coordinate of active model k's gradients, in place.

    Drawn like Opacus' ``DPOptimizer.add_noise``: one ``torch.normal`` per parameter in parameter
    order from model k's generator, and nothing at all when the std is 0.
    """
    for k in np.flatnonzero(active):
        if stds[k] == 0:
            continue
        for g in grads.values():
            g[k] += torch.normal(
                mean=0, std=float(stds[k]), size=g[k].shape, device=g.device, generator=generators[k], dtype=g.dtype
            )


def add_group_noise(grads: Params, generator: torch.Generator, stds: torch.Tensor) -> None:
    """Device streams: add N(0, std_k^2) to every coordinate of model k's gradients, in place, for
    all K models from one ``torch.randn`` call ``[K, n_params]`` (stds ``[K]`` on the device).

    An inactive model's noise is drawn and discarded with the rest of its step."""
    first = next(iter(grads.values()))
    sizes = [g[0].numel() for g in grads.values()]
    noise = torch.randn(len(first), sum(sizes), generator=generator, device=first.device, dtype=first.dtype)
    noise.mul_(stds.view(-1, 1))
    for g, part in zip(grads.values(), noise.split(sizes, dim=1)):
        g += part.view(g.shape)


# ---------------------------------------------------------------- batches


class _Rows:
    """``x[idx]`` for idx ``[K, B]`` as ``[K, B, *x.shape[1:]]``, gathered into one buffer that
    is reused from step to step: a fresh allocation per step doubled the gather's time on the CPU.
    The returned tensor is overwritten by the next call."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.buf = x, torch.empty(0, dtype=x.dtype, device=x.device)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        shape = (idx.numel(), *self.x.shape[1:])
        if self.buf.numel() < math.prod(shape):
            self.buf = torch.empty(math.prod(shape), dtype=self.x.dtype, device=self.x.device)
        out = self.buf[: math.prod(shape)].view(shape)
        torch.index_select(self.x, 0, idx.flatten(), out=out)
        return out.view(*idx.shape, *self.x.shape[1:])


def _padded(rows: list[torch.Tensor], dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """K CPU index vectors -> indices ``[K, Bmax]`` (padding: 0) and mask ``[K, Bmax]``, on dev."""
    lengths = torch.tensor([len(r) for r in rows])
    idx = torch.zeros(len(rows), int(lengths.max()), dtype=torch.int64)
    for k, r in enumerate(rows):
        idx[k, : len(r)] = r
    mask = torch.arange(idx.shape[1]) < lengths.unsqueeze(1)
    return idx.to(dev), mask.to(dev)


@dataclass
class _Group:
    """K models' training sets, per-model DP constants and random generators (module docstring:
    "Random streams")."""

    sets: list[torch.Tensor]  # CPU int64 dataset indices, in MICO's order
    padded: torch.Tensor  # the same on the device [K, Nmax], padding 0
    steps: np.ndarray  # [K] batches per epoch, ceil(N_k / B)
    streams: str  # "exact" or "device"
    poisson_gens: list[torch.Generator]  # exact: CPU generators; device: the device ones
    shuffle_gens: list[torch.Generator]  # on the device
    noise_gens: list[torch.Generator]  # exact: one per model; device: one for the group
    rates: np.ndarray | None = None  # DP: sample rate 1 / steps
    expected: np.ndarray | None = None  # DP: Opacus' expected batch size int(N_k * rate)
    sigmas: np.ndarray | None = None  # DP: noise multipliers

    @property
    def sizes(self) -> list[int]:
        return [len(s) for s in self.sets]


def _plain_batches(group: _Group, recipe: Recipe) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Non-private steps: each model's set in MICO's order (or reshuffled per epoch), B at a time."""
    order, dev = group.padded, group.padded.device
    if recipe.shuffle:
        order = torch.zeros_like(group.padded)
        for k, (n, g) in enumerate(zip(group.sizes, group.shuffle_gens)):
            order[k, :n] = group.padded[k, torch.randperm(n, generator=g, device=dev)]
    valid = torch.arange(order.shape[1], device=dev) < torch.tensor(group.sizes, device=dev).unsqueeze(1)
    B = recipe.batch_size
    for step in range(int(group.steps.max())):
        yield group.steps > step, order[:, step * B : (step + 1) * B], valid[:, step * B : (step + 1) * B]


def _exact_poisson_batches(group: _Group) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """DP steps drawn as Opacus' UniformWithReplacementSampler draws them: ``rand(N_k) < q_k``
    from model k's CPU generator, the batch then copied to the device."""
    empty = torch.zeros(0, dtype=torch.int64)
    for step in range(int(group.steps.max())):
        active = group.steps > step
        rows = [
            s[(torch.rand(len(s), generator=g) < q).nonzero().squeeze(1)] if a else empty
            for s, g, q, a in zip(group.sets, group.poisson_gens, group.rates, active)
        ]
        yield (active, *_padded(rows, group.padded.device))


def _device_poisson_batches(group: _Group) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """DP steps drawn on the device, equal in distribution to Poisson sampling.

    Poisson sampling at rate q keeps c ~ Binomial(N, q) records, a uniformly random subset of
    that size. So the epoch's counts ``[K, S]`` come first (``torch.binomial``, one host read per
    epoch: it sizes the batches), then each step takes model k's c records of smallest key under
    fresh uniform keys (float64: ties have probability ~N^2 / 2^54). Every draw comes from model
    k's own device generator, so a model's batches do not depend on its group.
    """
    dev = group.padded.device
    K, n_max = group.padded.shape
    s_max = int(group.steps.max())
    counts = torch.zeros(K, s_max, device=dev)
    for k, (n, s, q, g) in enumerate(zip(group.sizes, group.steps, group.rates, group.poisson_gens)):
        s = int(s)
        counts[k, :s] = torch.binomial(
            torch.full((s,), float(n), device=dev), torch.full((s,), float(q), device=dev), generator=g
        )
    counts = counts.to(torch.int64)
    host_counts = counts.cpu().numpy()  # the epoch's one host read
    keys = torch.full((K, n_max), 2.0, dtype=torch.float64, device=dev)  # padding: never among the smallest
    for step in range(s_max):
        width = int(host_counts[:, step].max())
        for k in np.flatnonzero(host_counts[:, step]):
            torch.rand(group.sizes[k], generator=group.poisson_gens[k], out=keys[k, : group.sizes[k]])
        pos = torch.topk(keys, width, dim=1, largest=False, sorted=True).indices  # [K, width]
        mask = torch.arange(width, device=dev) < counts[:, step : step + 1]
        yield group.steps > step, group.padded.gather(1, pos), mask


def _epoch_batches(group: _Group, recipe: Recipe) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(active [K] host bool, dataset indices ``[K, W]``, mask ``[K, W]``, both on the device) for
    every step of one epoch. A model whose epoch has fewer steps is inactive (empty batch) for the
    remaining ones."""
    if not recipe.private:
        return _plain_batches(group, recipe)
    if group.streams == "exact":
        return _exact_poisson_batches(group)
    return _device_poisson_batches(group)


# ---------------------------------------------------------------- one group


def resolve_streams(streams: str, dev: torch.device) -> str:
    """'auto' -> 'exact' on the CPU, 'device' elsewhere; 'exact' and 'device' pass through."""
    if streams == "auto":
        return "exact" if dev.type == "cpu" else "device"
    if streams not in STREAMS:
        raise ValueError(f"streams must be 'auto', {' or '.join(map(repr, STREAMS))}, got {streams!r}")
    return streams


def _init(track: str, seeds: Sequence[int], dev: torch.device) -> tuple[Params, list]:
    """Stacked initial parameters of ``torch.manual_seed(s); build_model(track)`` for each seed,
    and the CPU generators holding the global CPU state right after each initialisation (what
    train_model draws its Poisson batches, and on the CPU its shuffles and noise, from). The
    global RNG is left as it was."""
    models, cpu_gens = [], []
    with torch.random.fork_rng(devices=[]):
        for s in seeds:
            torch.default_generator.manual_seed(s)  # the CPU part of train_model's manual_seed
            models.append(build_model(track))
            cpu_gens.append(torch.Generator())
            cpu_gens[-1].set_state(torch.get_rng_state())
    params = {n: torch.stack([m.state_dict()[n] for m in models]).to(dev) for n in models[0].state_dict()}
    return params, cpu_gens


def _make_group(
    recipe: Recipe, sets: list[torch.Tensor], seeds: Sequence[int], cpu_gens: list, dev: torch.device, streams: str
) -> _Group:
    sizes = np.array([len(s) for s in sets])
    padded = torch.zeros(len(sets), int(sizes.max()), dtype=torch.int64)
    for k, s in enumerate(sets):
        padded[k, : len(s)] = s
    # train_model's torch.manual_seed(seed) seeds the CUDA generator with the seed itself.
    seeded = [torch.Generator(dev).manual_seed(int(s)) for s in seeds]
    if streams == "exact":
        device_gens = cpu_gens if dev.type == "cpu" else seeded
        gens = dict(poisson_gens=cpu_gens, shuffle_gens=device_gens, noise_gens=device_gens)
    else:
        group_seed = int(np.random.SeedSequence([int(s) % 2**64 for s in seeds]).generate_state(1, np.uint64)[0])
        noise = [torch.Generator(dev).manual_seed(group_seed)]
        gens = dict(poisson_gens=seeded, shuffle_gens=seeded, noise_gens=noise)
    group = _Group(sets, padded.to(dev), -(-sizes // recipe.batch_size), streams, **gens)
    if recipe.private:
        group.rates = 1.0 / group.steps
        # Opacus' make_private: expected_batch_size = int(len(dataset) * sample_rate).
        group.expected = np.array([int(n * q) for n, q in zip(sizes, group.rates)])
        bad = sizes[group.expected < 1]  # float rounding, e.g. N = 49, B = 1: 49 * (1/49) < 1
        if len(bad):
            raise ValueError(
                f"a training set of {bad[0]} records with batch size {recipe.batch_size} "
                "gives Opacus an expected batch size of 0 (it would divide by zero)"
            )
        group.sigmas = np.array(
            [
                find_noise_multiplier(float(recipe.epsilon), float(recipe.delta), float(q), int(s) * recipe.epochs)
                for q, s in zip(group.rates, group.steps)
            ]
        )
    return group


def _privatise(grads: Params, group: _Group, clip: float, active: np.ndarray, stds, expected) -> None:
    """DP-SGD's noise and division by the expected batch size, in place (stds, expected: [K] on
    the device)."""
    if group.streams == "exact":
        add_noise(grads, group.noise_gens, group.sigmas * clip, active)
    else:
        add_group_noise(grads, group.noise_gens[0], stds)
    for g in grads.values():
        g /= expected.view((-1,) + (1,) * (g.dim() - 1))


def _train_epoch(
    track: str,
    recipe: Recipe,
    group: _Group,
    params: Params,
    opt: StackedOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
) -> tuple[torch.Tensor, ...]:
    """One epoch for the group; returns per-model loss sum, correct count and samples seen [K].

    Device streams: nothing in the step loop reads a device value on the host."""
    dev = x.device
    K = len(group.sets)
    loss = torch.zeros(K, device=dev)
    correct = torch.zeros(K, dtype=torch.int64, device=dev)
    seen = torch.zeros(K, dtype=torch.int64, device=dev)
    clip = float(recipe.max_grad_norm) if recipe.private else None
    if recipe.private:
        expected = torch.as_tensor(group.expected, dtype=torch.float32).to(dev)
        stds = torch.as_tensor(group.sigmas * clip, dtype=torch.float32).to(dev)
    steps = torch.as_tensor(group.steps).to(dev)
    gather = _Rows(x)
    for step, (active, idx, mask) in enumerate(_epoch_batches(group, recipe)):
        if idx.shape[1]:
            grads, batch_loss, batch_correct = GRADS[track](params, gather(idx), y[idx], mask, clip)
            loss += batch_loss
            correct += batch_correct
            seen += mask.sum(1)
        else:  # every Poisson batch empty: noise-only steps
            grads = {n: torch.zeros_like(p) for n, p in params.items()}
        if recipe.private:
            _privatise(grads, group, clip, active, stds, expected)
        opt.step(grads, lr, None if active.all() else steps > step)
    return loss, correct, seen


def _accuracies(
    track: str, params: Params, x: torch.Tensor, y: torch.Tensor, sets: list[torch.Tensor]
) -> list[float | None]:
    """Each model's top-1 accuracy on its own index set (dataset indices); None for an empty set."""
    idx, mask = _padded(sets, x.device)
    chunk = max(1, EVAL_SAMPLES[track] // len(sets))
    correct = torch.zeros(len(sets), dtype=torch.int64, device=x.device)
    with torch.no_grad():
        for lo in range(0, idx.shape[1], chunk):
            i, m = idx[:, lo : lo + chunk], mask[:, lo : lo + chunk]
            correct += ((logits(track, params, x[i]).argmax(dim=2) == y[i]) & m).sum(1)
    return [c / n if n else None for c, n in zip(correct.tolist(), mask.sum(1).tolist())]


def _as_index(s, n: int, what: str, allow_empty: bool = False) -> torch.Tensor:
    """``s`` (array, tensor or sequence of ints) as a CPU int64 tensor of indices into n records."""
    a = np.asarray(s.cpu() if isinstance(s, torch.Tensor) else s)
    if a.ndim != 1 or (len(a) and a.dtype.kind not in "iu") or not (len(a) or allow_empty):
        raise ValueError(f"{what}: expected a {'' if allow_empty else 'non-empty '}1-D array of integer indices")
    if len(a) and (a.min() < 0 or a.max() >= n):
        raise ValueError(f"{what}: indices must lie in [0, {n})")
    return torch.as_tensor(a.astype(np.int64))


def train_batched(
    track: str,
    recipe: Recipe,
    x: torch.Tensor,
    y: torch.Tensor,
    train_sets: Sequence,
    seeds: Sequence[int],
    *,
    eval_sets: Sequence | None = None,
    device="auto",
    streams: str = "auto",
    progress: ProgressFn | None = None,
) -> list[TrainResult]:
    """Train one group of K = len(seeds) models at once; result k as train_model's (see module).

    x: float32 ``[N, *input_shape]`` (all records, preprocessed as for train_model), y: int64
    ``[N]``; both are moved to ``device`` once per group. train_sets[k]: model k's training set, indices
    into x in MICO's order (``Splits.train_indices()``); eval_sets[k] (optional): indices of its
    evaluation set (``Splits.evaluation``; an empty one gives ``eval_accuracy=None``).
    ``streams``: where the random numbers come from (module docstring; 'auto': 'exact' on the
    CPU, 'device' elsewhere). ``progress(epoch, n_epochs, loss, acc)`` after every epoch, with
    the means over the group of the models' running loss and accuracy. The global random state
    is left untouched. Out of memory with K > 1 (in a step, or moving the data to the device): a
    warning, then the two halves of the group one after the other (each model's result does not
    depend on its group, DP noise apart with device streams); from then on, in this process,
    :func:`auto_parallel` plans at most K / 2 and a larger group is trained in parts of that size
    without another try.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    check_data(track, x, y, "training data")
    if len(seeds) != len(train_sets) or not len(seeds):
        raise ValueError(f"need one seed per training set, got {len(seeds)} seeds and {len(train_sets)} sets")
    if eval_sets is not None and len(eval_sets) != len(seeds):
        raise ValueError(f"need one evaluation set per model, got {len(eval_sets)} for {len(seeds)} models")
    dev = resolve_device(device)
    streams = resolve_streams(streams, dev)
    sets = [_as_index(s, len(x), f"training set {k}") for k, s in enumerate(train_sets)]
    evals = (
        None
        if eval_sets is None
        else [_as_index(s, len(x), f"evaluation set {k}", allow_empty=True) for k, s in enumerate(eval_sets)]
    )
    k = _capped(track, recipe, dev, len(sets))
    if k == len(sets):
        try:  # moving the data (the whole dataset when given on the host) can run out of memory too
            x, y = x.to(dev, torch.float32), y.to(dev, torch.int64)
            return _train_group(track, recipe, x, y, sets, list(seeds), evals, streams, progress)
        except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
            if k == 1 or not _is_oom(e):
                raise
        # Outside the handler: the failed attempt's tensors, held by the traceback, are free again.
        k = (k + 1) // 2
        _back_off(track, recipe, dev, len(sets), k)
    return [  # groups of at most k, one after the other
        r
        for lo in range(0, len(sets), k)
        for r in train_batched(
            track,
            recipe,
            x,
            y,
            sets[lo : lo + k],
            seeds[lo : lo + k],
            eval_sets=None if evals is None else evals[lo : lo + k],
            device=dev,
            streams=streams,
            progress=progress,
        )
    ]


def _train_group(
    track: str,
    recipe: Recipe,
    x: torch.Tensor,
    y: torch.Tensor,
    sets: list[torch.Tensor],
    seeds: list[int],
    evals: list | None,
    streams: str,
    progress: ProgressFn | None,
) -> list[TrainResult]:
    """train_batched's work once its arguments are checked and x, y are on the device."""
    params, cpu_gens = _init(track, seeds, x.device)
    group = _make_group(recipe, sets, seeds, cpu_gens, x.device, streams)
    opt = StackedOptimizer(recipe, params)
    histories: list[list] = [[] for _ in seeds]
    lr = float(recipe.lr)
    for epoch in range(1, recipe.epochs + 1):
        loss, correct, seen = (
            t.cpu().double().numpy() for t in _train_epoch(track, recipe, group, params, opt, x, y, lr)
        )
        seen = np.maximum(seen, 1)
        for h, lo, ac in zip(histories, loss / seen, correct / seen):
            h.append({"epoch": epoch, "loss": float(lo), "train_accuracy": float(ac)})
        if epoch % recipe.step_size == 0:  # StepLR, stepped once per epoch
            lr *= recipe.gamma
        if progress is not None:
            progress(epoch, recipe.epochs, float(np.mean(loss / seen)), float(np.mean(correct / seen)))
    return _results(track, recipe, group, params, x, y, evals, histories)


def _results(
    track: str,
    recipe: Recipe,
    group: _Group,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    evals: list | None,
    histories: list[list],
) -> list[TrainResult]:
    """The K trained models as plain modules in eval mode, with accuracies and epsilons."""
    train_acc = _accuracies(track, params, x, y, group.sets)
    eval_acc = _accuracies(track, params, x, y, evals) if evals is not None else [None] * len(group.sets)
    out = []
    for k in range(len(group.sets)):
        with torch.device("meta"):  # no random initialisation: the weights are assigned
            model = build_model(track)
        model.load_state_dict({n: p[k].clone() for n, p in params.items()}, strict=True, assign=True)
        eps = sigma = None
        if recipe.private:
            sigma = float(group.sigmas[k])
            eps = prv_epsilon(sigma, float(group.rates[k]), int(group.steps[k]) * recipe.epochs, float(recipe.delta))
        out.append(
            TrainResult(
                model=model.eval(),
                train_accuracy=train_acc[k],
                eval_accuracy=eval_acc[k],
                epsilon=eps,
                history=histories[k],
                noise_multiplier=sigma,
            )
        )
    return out


# ---------------------------------------------------------------- many groups


def free_memory(dev: torch.device) -> int:
    """Bytes free on ``dev``: CUDA's free memory, with what torch's caching allocator holds but does
    not use (an earlier group's, free to this process though not to the driver), or the host
    memory this process may still take for the CPU: the node's, its cgroup's or its SLURM job's,
    whichever is least (:func:`models.memory.available_memory`)."""
    if dev.type == "cuda":
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(torch.cuda.mem_get_info(dev)[0]) + max(0, int(cached))
    return available_memory()


# Floats alive per sample of a step (layer outputs and their gradients, log-softmax, masks), by
# track: estimates with about 2x headroom over the layer outputs of models/mlp.py and cnn.py.
ACTIVATION_FLOATS = {"purchase100": 2_000, "cifar10": 600_000}
GHOST_FLOATS = 1_000_000  # per sample of a chunk in cnn_grads' DP norms (unfolded inputs: ~0.45M)

# Largest K known to run out of memory, halved: (device, track, private) -> K. Filled by
# train_batched's back-off, read by auto_parallel, for the life of the process.
_BACKED_OFF: dict[tuple[str, str, bool], int] = {}


# Out of memory as cuBLAS and cuDNN report it: a plain RuntimeError, not torch's OutOfMemoryError
# (a library's own allocation failed, e.g. cuBLAS' handle or workspace on a nearly full device).
OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or any(m in str(e) for m in OOM_MESSAGES)


class BackOffWarning(UserWarning):
    """A group ran out of memory and is retried as two halves."""


def _back_off(track: str, recipe: Recipe, dev: torch.device, k: int, half: int) -> None:
    key = (str(dev), track, recipe.private)
    _BACKED_OFF[key] = min(half, _BACKED_OFF.get(key, half))
    gc.collect()  # the failed attempt's tensors caught in reference cycles, before the retry
    if dev.type == "cuda":
        torch.cuda.empty_cache()  # and its cached blocks back to the driver (free_memory, cuBLAS)
    warnings.warn(
        f"out of memory training {k} {track} models at once on {dev}: retrying as groups of at most "
        f"{half}; auto_parallel plans at most {_BACKED_OFF[key]} from now on",
        BackOffWarning,
        stacklevel=3,
    )


def auto_parallel(track: str, recipe: Recipe, device="auto", n_train: int | None = None) -> int:
    """How many models to train at once on ``device``: as many as MEMORY_SHARE of its free memory
    holds by a per-model estimate, capped at MAX_PARALLEL and at half of any K that ran out of
    memory in this process. ``n_train``: training-set size, which sets the DP batch (Poisson,
    mean n / ceil(n / B), padded to the group's largest)."""
    dev = resolve_device(device)
    n_params = sum(p.numel() for p in _skeleton(track).parameters())
    batch = recipe.batch_size
    if recipe.private:
        n = n_train or batch
        expected = n / math.ceil(n / batch)
        batch = int(expected + 4 * math.sqrt(expected)) + 1
    if not recipe.private or GRADS[track] is mlp_grads:
        extra = 0
    elif GRADS[track] is cnn_grads:  # GHOST_CHUNK samples' unfolded inputs and Gram matrices
        extra = min(batch, GHOST_CHUNK) * GHOST_FLOATS
    else:  # func_grads: PSG_CHUNK samples' per-sample gradients
        extra = min(batch, PSG_CHUNK) * 2 * n_params
    floats = (
        8 * n_params  # parameters, gradients, optimiser state, noise, temporaries
        + batch * math.prod(TRACKS[track].input_shape)  # the gathered batch
        + batch * ACTIVATION_FLOATS[track]
        + extra
    )
    k = int(MEMORY_SHARE * free_memory(dev) // (4 * floats))
    return max(1, _capped(track, recipe, dev, min(k, MAX_PARALLEL.get(dev.type, 1))))


def _capped(track: str, recipe: Recipe, dev: torch.device, k: int) -> int:
    """k, or less if a back-off lowered the cap for (device, track, privacy)."""
    return min(k, _BACKED_OFF.get((str(dev), track, recipe.private), k))


def train_many(
    track: str,
    recipe: Recipe,
    x: torch.Tensor,
    y: torch.Tensor,
    train_sets: Sequence,
    seeds: Sequence[int],
    *,
    eval_sets: Sequence | None = None,
    parallel: int | None = None,
    device="auto",
    streams: str = "auto",
    progress: ProgressFn | None = None,
) -> Iterator[tuple[int, TrainResult]]:
    """Train len(seeds) models in groups of ``parallel`` (None: :func:`auto_parallel`; either
    lowered for the next groups after a back-off), yielding ``(job index, TrainResult)`` as each group
    finishes, so the caller can save and resume. Arguments as :func:`train_batched`'s, one entry
    per job."""
    if parallel is not None and (not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"parallel must be a positive integer or None, got {parallel!r}")
    if len(seeds) != len(train_sets):
        raise ValueError(f"need one seed per training set, got {len(seeds)} seeds and {len(train_sets)} sets")
    dev = resolve_device(device)
    n_train = max((len(s) for s in train_sets), default=1)
    x, y = x.to(dev, torch.float32), y.to(dev, torch.int64)
    k = parallel or auto_parallel(track, recipe, dev, n_train)
    lo = 0
    while lo < len(seeds):
        hi = min(lo + _capped(track, recipe, dev, k), len(seeds))
        group_eval = None if eval_sets is None else eval_sets[lo:hi]
        results = train_batched(
            track,
            recipe,
            x,
            y,
            train_sets[lo:hi],
            seeds[lo:hi],
            eval_sets=group_eval,
            device=dev,
            streams=streams,
            progress=progress,
        )
        yield from zip(range(lo, hi), results)
        lo = hi
