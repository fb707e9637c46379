"""Querying a model on challenge points: the signals every attack needs, for every query view.

For logits z (C classes) and true label y the stable logit-scaled signal is
``phi = z_y - logsumexp_{j != y} z_j``; the true-class probability is exactly ``sigmoid(phi)``
and ``log(p / (1 - p)) = phi``, so one float per (point, view) serves LiRA with any of its signal
flags. The modified prediction entropy of Song & Mittal (2021, eq. 6) needs the whole softmax
and is computed here too, so no attack has to rerun a model.

Neighbourhood views (``save_preds.py --neighbours K``) are K perturbed copies of every point, each a
fixed function of the record: ``nb<k>:flip<b>`` (purchase100) flips b of its 600 purchase bits,
``nb<k>:noise<sigma>`` (cifar10) adds Gaussian pixel noise of standard deviation sigma (in units of
the [0, 1] pixel range). Which bits, which noise, is drawn from a counter-based hash of (a fixed
seed, the point's dataset index, k), never from a random state: every model, train, shadow, dev or
final, sees the very same neighbours of a point, on any device and in any batch order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from challenges.tracks import CIFAR10_STD, get_track

# The neighbourhood views' seed. Their names say how they were made (b, sigma, k) but not this
# seed or the hash below: change either and the names must change too, or caches would mix.
NEIGHBOUR_SEED = 0x6E62_7669_6577_7331  # "nbviews1"
DEFAULT_FLIP_BITS = 4
DEFAULT_NOISE = 0.03
NEIGHBOUR_BLOCK = 2048  # points per block when building a neighbourhood view
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def view_names(
    augment: bool,
    shifts: int,
    neighbours: int = 0,
    track: str = "cifar10",
    flip_bits: int = DEFAULT_FLIP_BITS,
    noise: float = DEFAULT_NOISE,
) -> list[str]:
    """Query views, view 0 first: the plain input, then (cifar10) the horizontal flip and pixel
    shifts by up to ``shifts`` in each direction of both: ``orig``, ``flip``, ``orig:-1,0``...;
    then ``neighbours`` neighbourhood views (:func:`neighbour_names`)."""
    return _augment_names(augment, shifts) + neighbour_names(track, neighbours, flip_bits, noise)


def neighbour_names(track: str, k: int, flip_bits: int = DEFAULT_FLIP_BITS, noise: float = DEFAULT_NOISE) -> list:
    """The names of ``k`` neighbourhood views: ``nb1:flip4``, ... (purchase100, ``flip_bits`` bits
    flipped) or ``nb1:noise0.03``, ... (cifar10, pixel noise of standard deviation ``noise``)."""
    if k < 0:
        raise ValueError(f"the number of neighbourhood views must be >= 0, got {k}")
    if track == "purchase100":
        n = get_track(track).input_shape[0]
        if not 1 <= flip_bits <= n:
            raise ValueError(f"flip_bits must be in 1..{n}, got {flip_bits}")
        how = f"flip{int(flip_bits)}"
    else:
        if not (np.isfinite(noise) and noise > 0):
            raise ValueError(f"the pixel noise must be a number > 0, got {noise}")
        how = f"noise{noise:g}"
    return [f"nb{j}:{how}" for j in range(1, k + 1)]


def _augment_names(augment: bool, shifts: int) -> list[str]:
    if not augment:
        return ["orig"]
    names = []
    for flip in (False, True):
        for dx in range(-shifts, shifts + 1):
            for dy in range(-shifts, shifts + 1):
                names.append(("flip" if flip else "orig") + ("" if dx == dy == 0 else f":{dx},{dy}"))
    names.remove("orig")
    names.remove("flip")
    return ["orig", "flip"] + names


def is_neighbour(name: str) -> bool:
    return name.startswith("nb")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea and Flood 2014): a bijective mix of uint64 words."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hash(points: np.ndarray, k: int, n: int) -> np.ndarray:
    """uint64 [len(points), n]: hash of (NEIGHBOUR_SEED, point, k, j) for j < n; a pure function."""
    with np.errstate(over="ignore"):
        golden = np.uint64(0x9E3779B97F4A7C15)
        h = _mix(np.uint64(NEIGHBOUR_SEED) + np.asarray(points, dtype=np.uint64) * golden)
        h = _mix(h ^ (np.uint64(k) * golden))
        return _mix(h[:, None] + np.arange(1, n + 1, dtype=np.uint64)[None, :] * golden)


def _uniform(points: np.ndarray, k: int, n: int) -> np.ndarray:
    """float64 [len(points), n] in (0, 1): the hash's top 53 bits, offset by half a step."""
    return ((_hash(points, k, n) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def parse_neighbour(name: str) -> tuple[int, str, float]:
    """(k, 'flip' or 'noise', b or sigma) of a neighbourhood view's name."""
    head, _, how = name.partition(":")
    try:
        k = int(head[2:])
        kind = "flip" if how.startswith("flip") else "noise" if how.startswith("noise") else ""
        value = float(how[len(kind) :])
    except ValueError:
        kind = ""
    if not kind or k < 1:
        raise ValueError(f"not a neighbourhood view: {name!r} (expected nb<k>:flip<b> or nb<k>:noise<sigma>)")
    return k, kind, value


def neighbour_inputs(x: torch.Tensor, points: np.ndarray, name: str) -> torch.Tensor:
    """Neighbourhood view ``name`` of the inputs ``x`` [B, ...] of dataset points ``points`` [B]: a
    fixed function of each (point, view), computed on the CPU in float64 and moved to ``x``'s device.

    ``nb<k>:flip<b>``: the b features whose hash of (seed, point, k, feature) is smallest, a uniform
    draw of b distinct bits, each flipped (v -> 1 - v). ``nb<k>:noise<sigma>``: standard normal noise
    (Box-Muller from two hashed uniforms per value) times sigma, in units of the [0, 1] pixel range,
    added to the normalised image (so divided by each channel's std)."""
    k, kind, value = parse_neighbour(name)
    points = np.asarray(points, dtype=np.int64)
    if len(points) != len(x):
        raise ValueError(f"{len(points)} point indices for {len(x)} inputs")
    if len(x) > NEIGHBOUR_BLOCK:  # bounded temporaries (a block's hashes); the result is the same
        blocks = range(0, len(x), NEIGHBOUR_BLOCK)
        return torch.cat(
            [_neighbours(x[i : i + NEIGHBOUR_BLOCK], points[i : i + NEIGHBOUR_BLOCK], name) for i in blocks]
        )
    return _neighbours(x, points, name)


def _neighbours(x: torch.Tensor, points: np.ndarray, name: str) -> torch.Tensor:
    k, kind, value = parse_neighbour(name)
    n = int(np.prod(x.shape[1:]))
    if kind == "flip":
        b = int(value)
        if not 1 <= b <= n:
            raise ValueError(f"{name}: cannot flip {b} of {n} features")
        bits = np.argpartition(_hash(points, k, n), b - 1, axis=1)[:, :b]
        idx = torch.from_numpy(bits).to(x.device)
        flat = x.reshape(len(x), n).clone()
        flat.scatter_(1, idx, 1.0 - flat.gather(1, idx))
        return flat.view_as(x)
    u = _uniform(points, k, 2 * n)
    eps = np.sqrt(-2.0 * np.log(u[:, :n])) * np.cos(2.0 * np.pi * u[:, n:])
    noise = torch.from_numpy(eps.reshape(x.shape) * value).to(x.device, x.dtype)
    if x.ndim == 4 and x.shape[1] == len(CIFAR10_STD):
        noise = noise / torch.tensor(CIFAR10_STD, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x + noise


def apply_view(x: torch.Tensor, name: str, points: np.ndarray | None = None) -> torch.Tensor:
    """One query view of a batch: ``orig``; a neighbourhood view (:func:`neighbour_inputs`, needs
    the batch's dataset indices ``points``); or, for images [B, 3, H, W], an optional horizontal
    flip, then a shift by (dx, dy) pixels with reflect padding (the shape is kept)."""
    if name == "orig":
        return x
    if is_neighbour(name):
        if points is None:
            raise ValueError(f"view {name!r} needs the points' dataset indices")
        return neighbour_inputs(x, points, name)
    base, _, shift = name.partition(":")
    if base == "flip":
        x = torch.flip(x, dims=[3])
    if shift:
        dx, dy = (int(v) for v in shift.split(","))
        k = max(abs(dx), abs(dy))
        if k:
            h, w = x.shape[2:]
            padded = F.pad(x, (k, k, k, k), mode="reflect")
            x = padded[:, :, k + dy : k + dy + h, k + dx : k + dx + w]
    return x


def signals_from_logits(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(phi, mentr) for logits [B, C] and labels [B]; computed in float64 for stability."""
    z = logits.double()
    zy = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    phi = zy - torch.logsumexp(others, dim=1)
    logp = F.log_softmax(z, dim=1)
    p = logp.exp()
    log1mp = torch.log1p(-p.clamp(max=1 - 1e-16))
    py = p.gather(1, y[:, None]).squeeze(1)
    # Mentr(x, y) = -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)
    mentr = (
        -(1 - py) * logp.gather(1, y[:, None]).squeeze(1)
        - (p * log1mp).sum(1)
        + py * log1mp.gather(1, y[:, None]).squeeze(1)
    )
    return phi.float(), mentr.float()


@torch.inference_mode()
def query(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    views: list[str],
    batch_size: int = 4096,
    keep_logits: bool = False,
    points: np.ndarray | None = None,
    view_inputs: dict | None = None,
) -> dict:
    """Run ``model`` over inputs ``x`` [P, ...] (already on the model's device) for each view.

    ``points`` [P]: the inputs' dataset indices, which neighbourhood views need; ``view_inputs``:
    {view name: [P, ...] inputs} already built for some views (save_preds.py builds each
    neighbourhood view once per scenario, not once per model). Returns float32 CPU tensors:
    ``phi`` and ``mentr`` [P, V], and ``logits`` [P, V, C] when ``keep_logits``.
    """
    phis, mentrs, logits_out = [], [], []
    view_inputs = view_inputs or {}
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        xb, yb = x[sl], y[sl]
        pb = None if points is None else points[sl]
        ph, me, lg = [], [], []
        for name in views:
            logits = model(view_inputs[name][sl] if name in view_inputs else apply_view(xb, name, pb))
            p, m = signals_from_logits(logits, yb)
            ph.append(p)
            me.append(m)
            if keep_logits:
                lg.append(logits.float())
        phis.append(torch.stack(ph, 1).cpu())
        mentrs.append(torch.stack(me, 1).cpu())
        if keep_logits:
            logits_out.append(torch.stack(lg, 1).cpu())
    out = {"phi": torch.cat(phis), "mentr": torch.cat(mentrs)}
    if keep_logits:
        out["logits"] = torch.cat(logits_out)
    return out
