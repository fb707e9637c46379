"""Training model folders: the synthetic challenge's models and extra shadow models.

A :class:`Job` says where a model goes, what it trains on, its seed and the files that go with
it. :func:`train_jobs` trains jobs K at a time with the batched trainer (:mod:`models.batched`)
and writes each folder as its group finishes:

- a folder is assembled under a private temporary name (``.model_<id>.<random>.partial``),
  flushed to the disk and renamed into place only once complete, so neither a killed run nor a
  power loss leaves a folder that looks finished, and a rerun trains only what is missing (an
  interrupted group is trained again, nothing else); a folder that lost a file since (a deleted
  model.pt) is incomplete, and is removed and trained again;
- runs sharing a scenario cooperate: a run claims each model with a non-blocking ``flock`` on
  ``<phase>/.model_<id>.lock`` before training it, skips models another run holds, and at the end
  waits for those and trains any whose holder died. Different ``--shard`` s never touch the same
  model; identical concurrent runs split the work.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from challenges.datasets import BaseDataset, to_tensor
from challenges.fileio import atomic_path, remove_leftovers, try_lock, write_text
from challenges.layout import ModelDir
from challenges.membership import CHECKSUM, TRAINING_SET, write_training_set
from challenges.splits import reconstruct
from challenges.tracks import SECRET_FILE, TEST_SECRET_ENV, ChallengeParams, scenario_suffix
from models.batched import auto_parallel, train_batched
from models.loading import plain_state_dict
from models.privacy import opacus
from models.train import Recipe, TrainResult, recipe_for

PARTIAL = ".partial"  # suffix of a model folder being assembled (``.model_<id>.<random>.partial``)


def model_seeds(*key: int) -> tuple[int, int, int]:
    """(challenge, training, membership) seeds drawn from ``key`` (e.g. run seed, scenario, id):
    fresh per model, yet the same on a rerun, so an interrupted build resumes identically.
    Values below 2**32: torchcsprng keeps only the low 32 bits."""
    rng = np.random.default_rng([int(k) for k in key])
    return tuple(int(v) for v in rng.integers(0, 2**32, size=3, dtype=np.uint64))


# Tests only: $MICO_TEST_TRAINING_SECRET (TEST_SECRET_ENV), a fixed secret (64 hex digits) for new
# challenges, so that the suite's fixtures train the same models on every run. A challenge built
# with a known secret has no private targets, and its challenge.json says so (training_secret: test).


def _test_secret() -> str:
    """``$MICO_TEST_TRAINING_SECRET`` (hex), or '' when unset; ValueError if it is not 64 hex digits."""
    fixed = os.environ.get(TEST_SECRET_ENV, "").strip()
    try:
        ok = len(bytes.fromhex(fixed)) == 32
    except ValueError:
        ok = False
    if fixed and not ok:
        raise ValueError(f"${TEST_SECRET_ENV}: 64 hex digits (a test-only fixed secret), or unset it")
    return fixed


def secret_origin(data_dir: str, track: str) -> str | None:
    """Where the secret of the challenge in ``<data_dir>/<track>`` comes from (tracks.SECRET_ORIGINS):
    for a new one, 'test' if ``$MICO_TEST_TRAINING_SECRET`` is set, else 'random'. For a secret
    already written (by a build that stopped before its challenge.json, before the two were written
    in that order): 'test' if it is the test secret set now, else None (not known)."""
    path = os.path.join(data_dir, track, "solutions", SECRET_FILE)
    fixed = _test_secret()
    if not os.path.exists(path):
        return "test" if fixed else "random"
    return "test" if fixed and open(path).read().strip() == fixed else None


def training_secret(data_dir: str, track: str, origin: str | None = None) -> bytes:
    """The challenge's training secret: 32 bytes from ``os.urandom`` (or ``$MICO_TEST_TRAINING_SECRET``,
    for tests), written once (hex) to ``<data_dir>/<track>/solutions/training_secret`` and read back
    by every later build, so a rerun resumes with the same models. The caller holds the build lock.
    ``origin``: what challenge.json records; a missing secret is written only from that source.
    Like MICO's ``--train_seed``, it never enters a model folder: no published file regenerates a model."""
    path = os.path.join(data_dir, track, "solutions", SECRET_FILE)
    if not os.path.exists(path):
        fixed = _test_secret()
        if origin is not None and origin != ("test" if fixed else "random"):
            state = "set" if fixed else "unset"
            raise ValueError(
                f"{path}: missing, and challenge.json records a {origin} secret while ${TEST_SECRET_ENV} is "
                f"{state}; rerun as the build began, or delete {os.path.join(data_dir, track)} and build it again"
            )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text(path, (fixed or os.urandom(32).hex()) + "\n")
    try:
        secret = bytes.fromhex(open(path).read().strip())
    except ValueError:
        secret = b""
    if len(secret) != 32:
        raise ValueError(f"{path}: not a training secret (64 hex digits); restore it or rebuild the challenge")
    return secret


def private_seed(secret: bytes, *key) -> int:
    """A model's torch seed (below 2**63): SHA-256 of the secret and ``key`` (scenario, phase, id).
    Independent of the model's published seeds, as MICO's ``--train_seed`` was."""
    digest = hashlib.sha256(secret + repr(tuple(key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def save_state_dict(model: torch.nn.Module, path: str) -> str:
    """Save ``model``'s plain (prefix-free, CPU) state dict to ``path`` atomically; returns the path.

    Serialised in memory first (a few MB): torch's zip writer reports a full disk as a bare
    RuntimeError, a plain write as the OSError it is, which :func:`atomic_path` names in one line.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    torch.save(plain_state_dict(model), buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(buf.getbuffer())
    return path


@dataclass(frozen=True)
class Job:
    """One model folder to train."""

    md: ModelDir
    train: np.ndarray  # dataset indices it trains on, in MICO's order
    eval: np.ndarray  # held-out dataset indices for its accuracy file
    seed: int  # torch seed: initialisation, batch sampling, DP noise (private for challenge models)
    files: dict = field(default_factory=dict)  # name -> text, written into the folder
    training_set: bool = False  # write the explicit training-set file (designed shadows)
    solution: str | None = None  # dev/final ground truth, for the separate solutions/ tree


def seeded_job(
    md: ModelDir,
    params: ChallengeParams,
    n_points: int,
    seeds: tuple[int, int, int],
    *,
    reveal: bool,
    torch_seed: int | None = None,
) -> Job:
    """A MICO model defined by its three seeds, trained on ``member ++ training`` in that order
    (MICO's ``get_train_dataset``; non-private models never shuffle it). ``reveal``:
    seed_training, seed_membership and solution.csv go into the folder (MICO's train phase);
    otherwise the solution goes to the ``solutions/`` tree and the folder shows seed_challenge
    only, as MICO's dev/final models. ``torch_seed``: the training seed (initialisation, Poisson
    batches, DP noise), written nowhere; None: seed_challenge (extra shadows, which the
    attacker trains and may reproduce)."""
    sc, st, sm = seeds
    s = reconstruct(n_points, params.len_training, params.len_challenge, sc, st, sm)
    solution = ",".join(str(v) for v in s.solutions()) + "\n"
    files = {"seed_challenge": f"{sc}\n"}
    if reveal:
        files.update({"seed_training": f"{st}\n", "seed_membership": f"{sm}\n", "solution.csv": solution})
    seed = sc if torch_seed is None else torch_seed
    return Job(md, s.train_indices(), s.evaluation, seed, files, solution=None if reveal else solution)


def complete(job: Job) -> bool:
    """Whether ``job``'s folder holds model.pt and every file the job writes (nothing deleted since)."""
    names = ["model.pt", *job.files] + ([TRAINING_SET, CHECKSUM] if job.training_set else [])
    return all(os.path.isfile(os.path.join(job.md.path, name)) for name in names)


def write_folder(job: Job, result: TrainResult) -> dict:
    """Place ``job``'s folder (model.pt, its files, accuracy, epsilon) atomically; returns
    {'accuracy', 'train_accuracy', 'epsilon'} (accuracy: held-out if there is held-out data)."""
    md = job.md
    acc = result.eval_accuracy if result.eval_accuracy is not None else result.train_accuracy
    if job.solution is not None:
        sol_dir = os.path.join(md.data_dir, md.track, "solutions", md.key)
        os.makedirs(sol_dir, exist_ok=True)
        write_text(os.path.join(sol_dir, "solution.csv"), job.solution)
    files = {**job.files, "accuracy": f"{acc:.6f}\n"}
    if result.epsilon is not None:
        files["epsilon"] = f"{result.epsilon:.6f}\n"
    os.makedirs(os.path.dirname(md.path), exist_ok=True)
    with atomic_path(md.path, PARTIAL) as tmp:
        os.makedirs(tmp)
        save_state_dict(result.model, os.path.join(tmp, "model.pt"))
        for name, text in files.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        if job.training_set:
            write_training_set(tmp, job.train)
    return {"accuracy": acc, "train_accuracy": result.train_accuracy, "epsilon": result.epsilon}


def _lock_path(md: ModelDir) -> str:
    return os.path.join(os.path.dirname(md.path), f".{md.name}.lock")


def _claim(jobs: list[Job], k: int) -> tuple[list[Job], list]:
    """Up to ``k`` unfinished jobs this run can lock now (and their open lock files)."""
    group, locks = [], []
    for job in jobs:
        if len(group) == k:
            break
        if complete(job):
            continue
        lock = try_lock(_lock_path(job.md))
        if lock is None:
            continue  # another run is training it
        if complete(job):  # finished while we looked
            lock.close()
            continue
        remove_leftovers(job.md.path, PARTIAL)  # a killed run's partial folder: every writer holds this lock
        if os.path.isdir(job.md.path):  # an incomplete folder (model.pt deleted since): trained again
            shutil.rmtree(job.md.path)
        group.append(job)
        locks.append(lock)
    return group, locks


def train_jobs(
    jobs: list[Job],
    params: ChallengeParams,
    dataset: BaseDataset,
    *,
    device="auto",
    parallel: int | None = None,
    recipe: Recipe | None = None,
    progress: Callable[[list[Job], int, int], None] | None = None,
) -> Iterator[tuple[Job, dict]]:
    """Train every unfinished job (all of one scenario: one recipe), ``parallel`` at a time (None:
    as many as the device's memory holds), writing each folder as its group finishes; yields
    ``(job, info)`` per model written by this run. ``progress(group, epoch, n_epochs)``."""
    if not jobs:
        return
    track = params.track
    recipe = recipe or recipe_for(track, scenario_suffix(jobs[0].md.scenario))
    if recipe.private:
        opacus("opacus.accountants")  # DP without opacus: its one-line error before any work
    k = parallel or auto_parallel(track, recipe, device, max(len(j.train) for j in jobs))
    x, y = to_tensor(track, dataset.x), torch.from_numpy(dataset.y)
    pending = list(jobs)
    while pending:
        group, locks = _claim(pending, k)
        if not group:
            waiting = [j for j in pending if not complete(j)]
            if not waiting:
                return
            with try_lock(_lock_path(waiting[0].md), wait=True):  # another run holds it: wait, then look again
                pass
            pending = waiting
            continue
        try:
            results = train_batched(
                track,
                recipe,
                x,
                y,
                [j.train for j in group],
                [j.seed for j in group],
                eval_sets=[j.eval for j in group],
                device=device,
                progress=None if progress is None else (lambda epoch, n, *_, g=group: progress(g, epoch, n)),
            )
            for job, result in zip(group, results):
                yield job, write_folder(job, result)
        finally:
            for lock in locks:
                lock.close()
        trained = {id(j) for j in group}
        pending = [j for j in pending if id(j) not in trained]


def train_with_progress(
    jobs: list[Job], params: ChallengeParams, dataset: BaseDataset, desc: str, **kwargs
) -> list[tuple[Job, dict]]:
    """:func:`train_jobs` under one progress bar over the models (K in flight, epoch, ETA)."""
    todo = [j for j in jobs if not complete(j)]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="model", dynamic_ncols=True)

    def progress(group, epoch, n_epochs):
        bar.set_postfix_str(f"{len(group)} in flight, epoch {epoch}/{n_epochs}")

    done = []
    try:
        for job, info in train_jobs(todo, params, dataset, progress=progress, **kwargs):
            done.append((job, info))
            eps = "" if info["epsilon"] is None else f", eps {info['epsilon']:.2f}"
            bar.set_postfix_str(f"{job.md.name}: acc {info['accuracy']:.3f}{eps}")
            bar.update()
    finally:
        bar.close()
    return done
