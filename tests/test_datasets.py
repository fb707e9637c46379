"""CIFAR-10 batches are unpickled without running code: only what the real files hold loads."""

import os
import pickle
import struct

import numpy as np
import pytest

from challenges.datasets import CIFAR_FILES, DatasetError, load_cifar10, read_cifar_batch
from production.synthetic import write_cifar_batches


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle wrote it: SHORT_BINSTRING or BINSTRING."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _py2_array(a: np.ndarray) -> bytes:
    """A uint8 array as numpy 1.x under Python 2 pickled it (protocol 2): _reconstruct, then BUILD
    with (version, shape, dtype, fortran, raw bytes); the dtype itself from numpy.dtype('u1', 0, 1)."""
    shape = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in a.shape) + b"t"
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + _py2_str(b"b")
        + b"\x87R("
        + b"K\x01"
        + shape
        + dtype
        + b"\x89"
        + _py2_str(a.tobytes())
        + b"tb"
    )


def py2_batch(data: np.ndarray, labels: list[int], name: bytes) -> bytes:
    """A CIFAR-10 batch laid out as the real cifar-10-batches-py files are (cPickle, protocol 2)."""
    labels_op = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    names = b"](" + b"".join(_py2_str(b"img_%d.png" % i) for i in range(len(labels))) + b"e"
    return (
        b"\x80\x02}("
        + _py2_str(b"batch_label")
        + _py2_str(name)
        + _py2_str(b"labels")
        + labels_op
        + _py2_str(b"data")
        + _py2_array(data)
        + _py2_str(b"filenames")
        + names
        + b"u."
    )


def _write_dir(root, make):
    os.makedirs(root, exist_ok=True)
    for i, name in enumerate(CIFAR_FILES):
        with open(os.path.join(root, name), "wb") as f:
            f.write(make(i))
    return str(root)


def test_real_layout_loads(tmp_path):
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, (3, 3072), dtype=np.uint8) for _ in CIFAR_FILES]
    labels = [[int(v) for v in rng.integers(0, 10, 3)] for _ in CIFAR_FILES]
    root = _write_dir(tmp_path / "c", lambda i: py2_batch(data[i], labels[i], b"batch %d" % i))
    first = (tmp_path / "c" / "data_batch_1").read_bytes()
    assert pickle.loads(first, encoding="bytes")[b"labels"] == labels[0]  # the hand-made file is a valid pickle
    ds = load_cifar10(root)
    np.testing.assert_array_equal(ds.x, np.concatenate(data).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.y, np.concatenate(labels))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_pickles_of_this_python_load(tmp_path, protocol):
    """What numpy and Python 3 write today (our synthetic writer uses the default protocol; at
    protocol 2 Python 3 writes bytes through _codecs.encode(text, 'latin1'))."""
    batch = {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [1, 2]}
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    out = read_cifar_batch(str(path))
    np.testing.assert_array_equal(out[b"data"], batch[b"data"])
    assert out[b"labels"] == [1, 2]


def test_synthetic_writer_loads(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)
    y = np.arange(12) % 10
    write_cifar_batches(str(tmp_path / "c"), x, y)
    ds = load_cifar10(str(tmp_path / "c"))
    np.testing.assert_array_equal(ds.x, x)
    np.testing.assert_array_equal(ds.y, y)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


class _Codec:
    def __reduce__(self):
        import _codecs

        return _codecs.encode, (b"x" * 10, "zlib")


@pytest.mark.parametrize("payload", ["system", "eval", "in_array", "codec"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_crafted_batch_is_refused_and_not_run(tmp_path, payload, protocol):
    marker = tmp_path / "pwned"
    evil = {
        "system": _Payload(marker),
        "eval": _Eval(),
        "codec": _Codec(),
        "in_array": np.array([_Payload(marker)], dtype=object),
    }[payload]
    root = _write_dir(tmp_path / "c", lambda i: pickle.dumps({b"data": evil, b"labels": [0]}, protocol=protocol))
    with pytest.raises(DatasetError) as ei:
        load_cifar10(root)
    assert not marker.exists()
    msg = str(ei.value)
    assert "\n" not in msg and os.path.join(root, "data_batch_1") in msg
    assert "re-download" in msg
    assert any(s in msg for s in ("posix.system", "builtins.eval", "__builtin__.eval", "'zlib'"))
