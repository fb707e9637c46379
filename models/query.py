"""Querying a model on challenge points: the signals every attack needs, for every query view.

For logits z (C classes) and true label y the stable logit-scaled signal is
``phi = z_y - logsumexp_{j != y} z_j``; the true-class probability is exactly ``sigmoid(phi)``
and ``log(p / (1 - p)) = phi``, so one float per (point, view) serves LiRA with any of its signal
flags. The modified prediction entropy of Song & Mittal (2021, eq. 6) needs the whole softmax
and is computed here too, so no attack has to rerun a model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def view_names(augment: bool, shifts: int) -> list[str]:
    """Query views, view 0 first: the plain input, then (cifar10) the horizontal flip and pixel
    shifts by up to ``shifts`` in each direction of both: ``orig``, ``flip``, ``orig:-1,0``..."""
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


def apply_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One query view of a batch of images [B, 3, H, W]: optional horizontal flip, then a
    shift by (dx, dy) pixels with reflect padding (the shape is kept)."""
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
) -> dict:
    """Run ``model`` over inputs ``x`` [P, ...] (already on the model's device) for each view.

    Returns float32 CPU tensors: ``phi`` and ``mentr`` [P, V], and ``logits`` [P, V, C] when
    ``keep_logits``.
    """
    phis, mentrs, logits_out = [], [], []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        ph, me, lg = [], [], []
        for name in views:
            logits = model(apply_view(xb, name) if name != "orig" else xb)
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
