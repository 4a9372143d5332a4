"""`crossent compare` on the command line: what it refuses before any training (files it would
overwrite, problems of a CSV file), the report folder it replaces, and --json.

Every file the user gave is checked byte for byte after the command."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from crossent.compare import CompareConfig, CompareError, run_compare
from crossent.compare.report import REPORT_FILES, check_out_folder, write_report
from tests._helpers.cli import invoke, sha256

# One seed, two epochs: a second or two, enough to write a report.
QUICK = ["--data", "breast-cancer", "--loss", "bce", "--seeds", "1", "--epochs", "2", "-q"]

DATA = "f1,f2,y\n" + "".join(f"{i},{i % 5},{int(i % 4 == 0)}\n" for i in range(40))


def _snapshot(folder):
    """Every file under ``folder`` with its content hash."""
    return {str(p.relative_to(folder)): sha256(p) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def data_csv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "results.csv"  # the user's data, under a name a report also uses
    path.write_text(DATA)
    return path


@pytest.mark.parametrize(
    "out,message",
    [
        (".", "`--out .` would overwrite 'results.csv', the data this comparison reads"),
        ("results.csv", "`--out results.csv` would overwrite 'results.csv', the data"),
    ],
    ids=["out-is-the-input-folder", "out-is-the-input-file"],
)
def test_never_overwrites_the_csv_it_reads(tmp_path, data_csv, out, message):
    before = _snapshot(tmp_path)
    result = invoke("compare", "--csv", "results.csv", "--target", "y", "--out", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "nothing was run or written" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert _snapshot(tmp_path) == before


def test_never_overwrites_a_file_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes\n")
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "report.md").write_text("# my own report\n")
    (folder / "summary.csv").write_text("a,b\n1,2\n")
    before = _snapshot(tmp_path)
    result = invoke("compare", *QUICK, "--out", "notes.txt")
    assert result.exit_code == 2
    assert "`--out` names the folder the report goes into, but 'notes.txt' is a file" in (
        result.stderr
    )
    result = invoke("compare", *QUICK, "--out", "work")
    assert result.exit_code == 2
    assert "'work' already holds summary.csv, report.md, which crossent compare did not write" in (
        result.stderr
    )
    result = invoke("compare", *QUICK, "--tensorboard", "notes.txt", "--out", "new")
    assert result.exit_code == 2 and "`--tensorboard` names a folder" in result.stderr
    assert _snapshot(tmp_path) == before  # nothing changed, nothing created


@pytest.mark.slow
def test_replaces_an_earlier_report_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = invoke("compare", *QUICK, "--out", "report")
    assert first.exit_code == 0, first.output
    folder = tmp_path / "report"
    assert sorted(_snapshot(folder)) == sorted(REPORT_FILES)
    listed = json.loads((folder / "results.json").read_text())["report_files"]
    assert listed == list(REPORT_FILES)
    (folder / "my-notes.md").write_text("kept\n")
    keep = sha256(folder / "my-notes.md")
    second = invoke("compare", *QUICK[:-1], "--out", "report")
    assert second.exit_code == 0, second.output
    assert "Replacing the earlier report in report/." in second.stdout
    assert "Wrote report/ (replacing the earlier report)" in second.stdout
    assert sha256(folder / "my-notes.md") == keep
    # A report folder whose results.json was replaced by something else is not one any more.
    (folder / "results.json").write_text('{"mine": true}\n')
    before = _snapshot(folder)
    third = invoke("compare", *QUICK, "--out", "report")
    assert third.exit_code == 2 and "which crossent compare did not write" in third.stderr
    assert _snapshot(folder) == before


@pytest.mark.slow
def test_write_report_refuses_the_same_files(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text(DATA)
    config = CompareConfig(
        csv=str(path), targets=["y"], losses=["bce"], seeds=1, max_epochs=2, hidden=(8,)
    )
    result = run_compare(config)
    before = sha256(path)
    with pytest.raises(CompareError, match=r"would overwrite .*summary.csv', the data"):
        write_report(result, tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.html").write_text("<html>mine</html>")
    with pytest.raises(CompareError, match=r"already holds report.html"):
        write_report(result, tmp_path / "out")
    assert sha256(path) == before
    assert (tmp_path / "out" / "report.html").read_text() == "<html>mine</html>"
    assert check_out_folder(tmp_path / "new") is False
    write_report(result, tmp_path / "new")
    assert check_out_folder(tmp_path / "new") is True  # an earlier report: replaced


def test_csv_problems_in_one_error_before_any_training(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text(
        "name,age,city,label\n"
        + "".join(
            f"person {i},{'' if i % 7 == 0 else 20 + i},{'AB'[i % 2]},{int(i % 3 == 0)}\n"
            for i in range(30)
        )
    )
    before = sha256(path)
    result = invoke("compare", "--csv", path, "--target", "labl", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "Traceback" not in result.output
    err = result.stderr
    assert err.startswith(f"Error: {path} has 4 problems; nothing was run:")
    assert "Target column 'labl' is not in people.csv." in err
    assert "did you mean `--target label`?" in err
    assert "Column 'name' holds text (30 different values in 30 rows" in err
    assert "Column 'age' has 5 missing value(s) (empty on lines 2, 9, 16 and 2 more)." in err
    assert "Column 'city' holds categories (2: 'A', 'B'), not numbers." in err
    assert err.count("Fix: ") == 4
    assert sha256(path) == before and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_json_prints_the_results_and_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("compare", *QUICK[:-1], "--json", "--out", "r")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert data["best"] == "bce" and data["verdict"].startswith("On breast-cancer")
    assert data["report"]["folder"] == "r" and data["report"]["replaced_earlier_report"] is False
    assert set(data["report"]["files"]) == set(REPORT_FILES)
    assert json.loads((tmp_path / "r" / "results.json").read_text())["rows"] == data["rows"]
