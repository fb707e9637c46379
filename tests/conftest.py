"""Shared fixtures: tiny synthetic challenges in MICO's exact layout (seconds to build)."""

import os
import shutil
import sys

import pytest
import torch

from challenges import cli
from production.synthetic import build_synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Every challenge the suite builds (fixtures, and scripts it starts) trains the same models on every
# run; tests/test_synthetic.py checks the secret's own behaviour with and without it.
os.environ.setdefault("MICO_TEST_TRAINING_SECRET", "5eed" * 16)

TINY = {
    "purchase100": dict(n_points=1200, len_training=700, n_train=6, n_dev=2, n_final=2, epochs=4, seed=1),
    # Only cifar10_inf (DP training of the CNN is the slow part); its tests need one scenario.
    "cifar10": dict(
        n_points=260, len_training=140, n_train=2, n_dev=1, n_final=1, epochs=1, seed=2, scenarios=["cifar10_inf"]
    ),
}


@pytest.fixture(scope="session", autouse=True)
def no_disk_flush():
    """Writes in this process skip os.fsync, as database test suites run with fsync off: a flush
    costs milliseconds on a real disk and guards only against a power loss, which no test can
    simulate. tests/test_faults.py records the calls instead; scripts run as subprocesses flush."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="session")
def tiny_challenges(tmp_path_factory):
    """A read-only data dir holding tiny synthetic purchase100 and cifar10 challenges."""
    root = str(tmp_path_factory.mktemp("tiny") / "data")
    for track, opts in TINY.items():
        build_synthetic(root, track, **opts)
    return root


@pytest.fixture
def tiny_copy(tiny_challenges, tmp_path):
    """A private, writable copy of the tiny challenges."""
    dst = str(tmp_path / "data")
    shutil.copytree(tiny_challenges, dst)
    return dst


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread is faster and far less sensitive to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SMALL = {
    "n_points": 600,
    "len_training": 300,
    "n_train": 4,
    "n_dev": 1,
    "n_final": 1,
    "epochs": 1,
    "seed": 3,
    "scenarios": ["purchase100_inf"],
}


@pytest.fixture(scope="session")
def small_challenge(tmp_path_factory):
    """A read-only data dir with one tiny purchase100 scenario (4 train, 1 dev, 1 final models)."""
    root = str(tmp_path_factory.mktemp("small") / "data")
    build_synthetic(root, "purchase100", device="cpu", **SMALL)
    return root


@pytest.fixture
def small_copy(small_challenge, tmp_path):
    """A private, writable copy of ``small_challenge`` and an empty cache dir beside it."""
    dst = str(tmp_path / "data")
    shutil.copytree(small_challenge, dst)
    return dst, str(tmp_path / "cache")


def run_script(main, name, argv, capsys):
    """A script run as ``python <name> ...`` would end, in-process (no cold start): its exit status
    and its stderr lines, the message of ``sys.exit("...")`` included as the interpreter prints it."""
    capsys.readouterr()
    try:
        cli.run(lambda: main(list(argv)), name)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    if isinstance(code, str):
        err, code = f"{err}{code}\n", 1
    return code or 0, err.strip().splitlines()
