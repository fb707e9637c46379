import os

import pytest

from challenges import layout
from challenges.datasets import DatasetError, load_dataset, load_purchase100
from challenges.fileio import atomic_path, write_text
from challenges.scenario import scenario_points
from challenges.tracks import load_params


def _model(root, scenario, phase, mid, seeds=("1", "2", "3")):
    d = os.path.join(root, "purchase100", scenario, phase, f"model_{mid}")
    os.makedirs(d)
    for name, v in zip(layout.SEED_FILES, seeds):
        if v is not None:
            with open(os.path.join(d, name), "w") as f:
                f.write(v)
    return d


def test_numeric_order_and_phases(tmp_path):
    root = str(tmp_path)
    for mid in (10, 2, 1):
        _model(root, "purchase100_inf", "train", mid)
    _model(root, "purchase100_inf", "dev", 100)
    os.makedirs(os.path.join(root, "purchase100", "purchase100_inf", "train", "model_3.partial"))
    os.makedirs(os.path.join(root, "purchase100", "purchase100_inf", "train", "model_07"))
    mds = layout.models(root, "purchase100", "purchase100_inf")
    assert [(m.phase, m.model_id) for m in mds] == [("train", 1), ("train", 2), ("train", 10), ("dev", 100)]
    assert layout.scenarios(root, "purchase100") == ["purchase100_inf"]
    assert mds[0].key == "purchase100_inf/train/model_1"


def test_seed_errors_name_the_file(tmp_path):
    root = str(tmp_path)
    d = _model(root, "purchase100_hi", "train", 0, seeds=("12x", "2", None))
    md = layout.models(root, "purchase100", "purchase100_hi")[0]
    with pytest.raises(layout.LayoutError, match=os.path.join(d, "seed_challenge")):
        md.seeds()
    d = _model(root, "purchase100_hi", "dev", 5, seeds=(None, None, None))
    md = layout.models(root, "purchase100", "purchase100_hi", ["dev"])[0]
    with pytest.raises(layout.LayoutError, match="missing") as e:
        md.seeds()
    assert "\n" not in str(e.value)


def test_seeds_optional_parts(tmp_path):
    _model(str(tmp_path), "purchase100_lo", "final", 7, seeds=("99", None, None))
    md = layout.models(str(tmp_path), "purchase100", "purchase100_lo")[0]
    assert md.seeds() == (99, None, None)
    assert md.solution() is None


def test_no_scenarios_is_a_clear_error(tmp_path):
    with pytest.raises(layout.LayoutError, match="download_files.py"):
        layout.scenarios(str(tmp_path), "cifar10")
    with pytest.raises(layout.LayoutError, match="unknown scenario"):
        layout.scenarios(str(tmp_path), "cifar10", "cifar10_mid")


def test_base_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="download_files.py"):
        load_dataset(load_params(str(tmp_path), "purchase100"))
    bad = tmp_path / "dataset_purchase"
    bad.write_text("1,0,1\n2,1,0\n")
    with pytest.raises(DatasetError, match="601 columns"):
        load_purchase100(str(bad))
    with pytest.raises(DatasetError, match="download_files.py"):
        load_dataset(load_params(str(tmp_path), "cifar10"))


def test_real_constants_without_challenge_json(tmp_path):
    p = load_params(str(tmp_path), "cifar10")
    assert (p.n_points, p.len_training, p.len_challenge) == (60000, 50000, 100)
    assert p.dataset.endswith(os.path.join("cifar10", "cifar-10-batches-py"))
    p = load_params(str(tmp_path), "purchase100")
    assert p.n_points is None and p.len_training == 150000
    (tmp_path / "purchase100").mkdir()
    (tmp_path / "purchase100" / "challenge.json").write_text("{nope")
    with pytest.raises(ValueError, match="challenge.json"):
        load_params(str(tmp_path), "purchase100")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = str(tmp_path / "out.csv")
    write_text(target, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise KeyboardInterrupt
    assert open(target).read() == "old\n" and os.listdir(tmp_path) == ["out.csv"]
    with pytest.raises(RuntimeError):
        with atomic_path(str(tmp_path / "folder")) as tmp:
            os.makedirs(os.path.join(tmp, "sub"))
            raise RuntimeError
    assert os.listdir(tmp_path) == ["out.csv"]


def test_missing_or_empty_scenario_folder_names_the_fix(tmp_path):
    root = str(tmp_path)
    fetch = "download_files.py --challenge purchase100 --scenario purchase100_hi"
    with pytest.raises(layout.LayoutError, match="no such scenario folder") as e:
        scenario_points(root, "purchase100", "purchase100_hi", None, 100)
    assert fetch in str(e.value) and "remove" not in str(e.value)
    os.makedirs(os.path.join(root, "purchase100", "purchase100_hi", "train"))
    with pytest.raises(layout.LayoutError, match="no train, dev or final model folders") as e:
        scenario_points(root, "purchase100", "purchase100_hi", None, 100)
    assert fetch in str(e.value) and "remove the folder" in str(e.value)
