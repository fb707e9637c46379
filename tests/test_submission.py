"""save_zip validates prediction.csv exactly as MICO's scorer parses it (np.loadtxt, delimiter ',')."""

import os
import warnings
import zipfile

import numpy as np
import pytest

import save_zip
from challenges.fileio import file_digest
from challenges.layout import LayoutError
from challenges.submission import check_prediction, manifest_path, write_manifest, write_prediction

GOOD = ",".join(["0.25"] * 199 + ["1"]) + "\n"


def scorer_accepts(path: str, n: int) -> bool:
    """What MICO's scoring/score.py does with one prediction file: np.loadtxt(path, delimiter=","),
    then every value in [0, 1] (asserted over the concatenation of all files) and one value per
    challenge point."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = np.loadtxt(path, delimiter=",")
        values = np.concatenate([values])
    except ValueError:
        return False
    return len(values) == n and bool(np.all(values >= 0)) and bool(np.all(values <= 1))


CASES = {
    "empty field": "0.5,," + ",".join(["0.3"] * 199) + "\n",  # 200 values once the empty one is skipped
    "underscore": "1_0e-1," + ",".join(["0.3"] * 199) + "\n",
    "hex float": "0x1p-1," + ",".join(["0.3"] * 199) + "\n",
    "non-ascii digit": "\uff10.5," + ",".join(["0.3"] * 199) + "\n",
    "trailing comma": ",".join(["0.3"] * 200) + ",\n",
    "two rows": ",".join(["0.3"] * 100) + "\n" + ",".join(["0.3"] * 100) + "\n",
    "empty": "",
    "nan": ",".join(["nan"] + ["0.3"] * 199) + "\n",
    "above one": ",".join(["1.5"] + ["0.3"] * 199) + "\n",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_refuses_what_the_scorer_refuses(tmp_path, name):
    path = tmp_path / "prediction.csv"
    path.write_text(CASES[name], encoding="utf-8")
    assert not scorer_accepts(str(path), 200)
    why = check_prediction(str(path), 200)
    assert why is not None and "\n" not in why


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        GOOD.strip(),
        " " + GOOD.replace(",", ", "),
        GOOD.replace(",", "\n"),
        ",".join(repr(float(v)) for v in np.linspace(0, 1, 200)) + "\n",
    ],
)
def test_accepts_what_the_scorer_accepts(tmp_path, text):
    path = tmp_path / "prediction.csv"
    path.write_text(text)
    assert scorer_accepts(str(path), 200)
    assert check_prediction(str(path), 200) is None


SCENARIOS = ("purchase100_inf", "purchase100_hi", "purchase100_lo")


def _tree(root, texts):
    """Dev models with these prediction files in purchase100_inf (valid ones in the other two
    scenarios: a submission is whole), recorded as one run's."""
    digests = {}
    for scenario in SCENARIOS:
        for i, text in enumerate(texts):
            d = root / "purchase100" / scenario / "dev" / f"model_{i}"
            d.mkdir(parents=True)
            (d / "prediction.csv").write_text(text if scenario == SCENARIOS[0] else GOOD)
            digests[f"{scenario}/dev/model_{i}/prediction.csv"] = file_digest(str(d / "prediction.csv"))
    write_manifest(str(root), "purchase100", digests, "run_lira_mia.py --challenge purchase100")


def test_save_zip_writes_nothing_for_a_file_the_scorer_rejects(tmp_path, capsys):
    _tree(tmp_path, [GOOD, CASES["empty field"], CASES["underscore"]])
    out = tmp_path / "sub.zip"
    assert save_zip.main(["--challenge", "purchase100", "--data-dir", str(tmp_path), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    for i in (1, 2):
        line = next(ln for ln in err.splitlines() if f"model_{i}{os.sep}prediction.csv" in ln)
        assert "MICO's scorer" in line
    assert "model_0" not in err and not out.exists()


def test_save_zip_accepts_valid_files(tmp_path):
    _tree(tmp_path, [GOOD, GOOD])
    out = tmp_path / "sub.zip"
    assert save_zip.main(["--challenge", "purchase100", "--data-dir", str(tmp_path), "--output", str(out)]) == 0
    assert sorted(zipfile.ZipFile(out).namelist()) == sorted(
        f"purchase100/{s}/dev/model_{i}/prediction.csv" for s in SCENARIOS for i in (0, 1)
    )


def test_save_zip_refuses_an_edited_file(tmp_path, capsys):
    _tree(tmp_path, [GOOD, GOOD])
    edited = tmp_path / "purchase100" / "purchase100_inf" / "dev" / "model_1" / "prediction.csv"
    edited.write_text(GOOD.replace("0.25", "0.5", 1))
    out = tmp_path / "sub.zip"
    assert save_zip.main(["--challenge", "purchase100", "--data-dir", str(tmp_path), "--output", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith(f"{edited}: changed since the last complete run_lira_mia.py run")
    assert "Nothing written" in err[1] and not out.exists()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{}",
        '{"run_id": "a", "finished": "b", "files": []}',
        '{"run_id": 1, "finished": 2, "files": {"x": 3}}',
    ],
)
def test_malformed_run_record_is_one_line(tmp_path, text):
    _tree(tmp_path, [GOOD])
    with open(manifest_path(str(tmp_path), "purchase100"), "w") as f:
        f.write(text)
    with pytest.raises(LayoutError, match="predictions.json: not a record of a run_lira_mia.py run") as e:
        save_zip.main(["--challenge", "purchase100", "--data-dir", str(tmp_path), "--output", str(tmp_path / "z")])
    assert "\n" not in str(e.value) and "then save_zip.py" in str(e.value)


def test_write_prediction_returns_the_digest_of_its_bytes(tmp_path):
    path = str(tmp_path / "prediction.csv")
    assert write_prediction(path, np.linspace(0, 1, 200)) == file_digest(path)
