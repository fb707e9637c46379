"""Architectures (MICO-compatible state dicts) and model loading/saving."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from models import CNN, MLP, ModelLoadError, build_model, load_model, resolve_device
from production.folders import save_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")


# MICO's state dict layout: name -> shape.
CNN_KEYS = OrderedDict(
    [
        ("cnn.0.weight", (128, 3, 8, 8)),
        ("cnn.0.bias", (128,)),
        ("cnn.3.weight", (256, 128, 3, 3)),
        ("cnn.3.bias", (256,)),
        ("cnn.5.weight", (256, 256, 3, 3)),
        ("cnn.5.bias", (256,)),
        ("cnn.9.weight", (10, 6400)),
        ("cnn.9.bias", (10,)),
    ]
)
MLP_KEYS = OrderedDict(
    [
        ("mlp.0.weight", (128, 600)),
        ("mlp.0.bias", (128,)),
        ("mlp.2.weight", (100, 128)),
        ("mlp.2.bias", (100,)),
    ]
)


# ---------------------------------------------------------------- architectures


def test_cnn_forward_shape():
    model = CNN().eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10)


def test_cnn_intermediate_shapes():
    model = CNN().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = [
        (128, 16, 16),
        (128, 16, 16),
        (128, 14, 14),
        (256, 12, 12),
        (256, 12, 12),
        (256, 10, 10),
        (256, 10, 10),
        (256, 5, 5),
        (6400,),
        (10,),
    ]
    with torch.no_grad():
        for layer, shape in zip(model.cnn, expected):
            x = layer(x)
            assert tuple(x.shape[1:]) == shape, layer


def test_mlp_forward_shape():
    model = MLP().eval()
    with torch.no_grad():
        out = model(torch.randn(5, 600))
    assert out.shape == (5, 100)


@pytest.mark.parametrize("track,cls,keys", [("cifar10", CNN, CNN_KEYS), ("purchase100", MLP, MLP_KEYS)])
def test_state_dict_matches_mico(track, cls, keys):
    model = build_model(track)
    assert isinstance(model, cls)
    sd = model.state_dict()
    assert list(sd) == list(keys)
    for k, shape in keys.items():
        assert tuple(sd[k].shape) == shape, k


def test_layer_types_match_mico():
    cnn = CNN().cnn
    assert [type(m) for m in cnn] == [
        nn.Conv2d,
        nn.Tanh,
        nn.MaxPool2d,
        nn.Conv2d,
        nn.Tanh,
        nn.Conv2d,
        nn.Tanh,
        nn.AvgPool2d,
        nn.Flatten,
        nn.Linear,
    ]
    assert (cnn[0].kernel_size, cnn[0].stride, cnn[0].padding) == ((8, 8), (2, 2), (3, 3))
    assert (cnn[2].kernel_size, cnn[2].stride) == (3, 1)
    assert (cnn[7].kernel_size, cnn[7].stride) == (2, 2)
    assert [type(m) for m in MLP().mlp] == [nn.Linear, nn.Tanh, nn.Linear]


def test_param_counts():
    assert sum(p.numel() for p in CNN().parameters()) == 973_962
    assert sum(p.numel() for p in MLP().parameters()) == 89_828


def test_build_model_unknown_track():
    with pytest.raises(ValueError, match="unknown track"):
        build_model("sst2")


# ---------------------------------------------------------------- devices


def test_resolve_device():
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError):
        resolve_device("not-a-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_unavailable():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


# ---------------------------------------------------------------- loading / saving


def _assert_one_line_naming(err: Exception, path) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert os.fspath(path) in msg


@pytest.mark.parametrize("track", ["cifar10", "purchase100"])
def test_roundtrip(tmp_path, track):
    torch.manual_seed(0)
    model = build_model(track)
    path = tmp_path / "sub" / "model.pt"
    assert save_state_dict(model, path) == os.fspath(path)
    assert not os.path.exists(os.fspath(path) + ".tmp")
    loaded = load_model(track, path)
    assert not loaded.training
    assert type(loaded) is type(model)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
        assert loaded.state_dict()[k].device.type == "cpu"


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "model.pt"
    save_state_dict(build_model("purchase100"), path)
    torch.manual_seed(1)
    second = build_model("purchase100")
    save_state_dict(second, path)
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert torch.equal(load_model("purchase100", path).mlp[0].weight, second.mlp[0].weight)


def test_save_strips_opacus_wrapper(tmp_path):
    from opacus import GradSampleModule

    inner = MLP()
    wrapped = GradSampleModule(inner)
    assert all(k.startswith("_module.") for k in wrapped.state_dict())
    path = tmp_path / "model.pt"
    save_state_dict(wrapped, path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(MLP_KEYS)
    wrapped._close()


def test_opacus_prefixed_keys_load(tmp_path):
    model = build_model("cifar10")
    path = tmp_path / "model.pt"
    torch.save(OrderedDict(("_module." + k, v) for k, v in model.state_dict().items()), path)
    loaded = load_model("cifar10", path)
    assert torch.equal(loaded.cnn[9].weight, model.cnn[9].weight)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "model.pt"
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)
    assert "download_files.py" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", tmp_path)
    _assert_one_line_naming(e.value, tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)


def test_empty_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError) as e:
        load_model("cifar10", path)
    _assert_one_line_naming(e.value, path)


def test_truncated_file(tmp_path):
    good = tmp_path / "good.pt"
    save_state_dict(build_model("purchase100"), good)
    data = good.read_bytes()
    path = tmp_path / "model.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)


class _Evil:
    """Unpickling this object creates the marker file (open(path, 'w'))."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_not_executed(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    payload = {"mlp.0.weight": _Evil(os.fspath(marker))}
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)
    assert not marker.exists()
    if writer == "pickle":  # the payload is live: a plain unpickler would have run it
        with open(path, "rb") as f:
            obj = pickle.load(f)
        obj["mlp.0.weight"].close()
        assert marker.exists()


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)
    path2 = tmp_path / "model2.pt"
    torch.save({"mlp.0.weight": [1, 2, 3]}, path2)
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path2)
    _assert_one_line_naming(e.value, path2)


def test_whole_pickled_module_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(MLP(), path)  # a pickled nn.Module, not a state dict
    with pytest.raises(ModelLoadError) as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)


@pytest.mark.parametrize("saved,loaded_as", [("cifar10", "purchase100"), ("purchase100", "cifar10")])
def test_wrong_track(tmp_path, saved, loaded_as):
    path = tmp_path / "model.pt"
    save_state_dict(build_model(saved), path)
    with pytest.raises(ModelLoadError) as e:
        load_model(loaded_as, path)
    _assert_one_line_naming(e.value, path)
    assert loaded_as in str(e.value)


def test_wrong_shapes_and_extra_keys(tmp_path):
    sd = build_model("purchase100").state_dict()
    sd["mlp.2.weight"] = torch.zeros(10, 128)
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match="shape") as e:
        load_model("purchase100", path)
    _assert_one_line_naming(e.value, path)
    sd = build_model("purchase100").state_dict()
    sd["extra"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ModelLoadError, match="unexpected"):
        load_model("purchase100", path)


def test_load_model_unknown_track(tmp_path):
    with pytest.raises(ValueError):
        load_model("sst2", tmp_path / "model.pt")
