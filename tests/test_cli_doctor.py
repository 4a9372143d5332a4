"""`crossent doctor` and crossent.doctor.diagnose: every finding triggered and not, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossent.doctor import CHECKS, diagnose
from tests._helpers.cli import HAS_SOFTMAX, invoke, sha256

pytestmark = pytest.mark.skipif(not HAS_SOFTMAX, reason="needs crossent.weights and 'ce'")

N, C = 64, 4


def _logits(*shape, scale=2.0):
    g = torch.Generator().manual_seed(1)
    return torch.randn(*shape, generator=g) * scale


def _index(n=N, c=C):
    return torch.arange(n) % c  # balanced


def _multi_hot(n=N, c=C):
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(n, c, generator=g) < 0.4).float()
    y[0] = torch.tensor([1.0, 1.0, 0.0, 0.0])[:c]  # at least one row with two positives
    y[1, :] = 0.0
    y[:, :].index_fill_(0, torch.tensor([2]), 1.0)  # every label positive somewhere
    y[3] = 0.0
    y[3, 0] = 1.0
    return y


def _binary(n=N, share=0.5):
    k = max(1, round(n * share))
    return torch.cat([torch.ones(k), torch.zeros(n - k)])


def _nan(t):
    t = t.clone()
    t.view(-1)[5] = float("nan")
    return t


# (code, triggering case, a near miss that must not trigger it); a case is the kwargs of diagnose.
CASES = {
    "D001": (
        dict(output=_nan(_logits(N, C)), target=_index()),
        dict(output=_logits(N, C), target=_index()),
    ),
    "D002": (
        dict(output=_logits(N), target=_nan(_binary())),
        dict(output=_logits(N), target=_binary()),
    ),
    "D003": (
        dict(output=_logits(N, 1), target=_binary()),
        dict(output=_logits(N), target=_binary()),
    ),
    "D004": (
        dict(output=_logits(N, C), target=_index(N - 3)),
        dict(output=_logits(N, C), target=_index()),
    ),
    "D005": (
        dict(output=_logits(N, C).argmax(1), target=_index()),
        dict(output=_logits(N, C), target=_index()),
    ),
    "D006": (
        dict(output=torch.zeros(0, C), target=torch.zeros(0, dtype=torch.int64)),
        dict(output=_logits(1, C), target=torch.tensor([2])),
    ),
    "D010": (
        dict(output=torch.softmax(_logits(N, C), 1), target=_index(), loss="ce"),
        dict(output=_logits(N, C), target=_index(), loss="ce"),
    ),
    "D011": (
        dict(output=torch.sigmoid(_logits(N, C)), target=_multi_hot(), loss="bce"),
        dict(output=torch.sigmoid(_logits(N, C)), target=_multi_hot(), loss="bce", probs=True),
    ),
    "D012": (
        dict(output=_logits(N, C), target=_multi_hot(), loss="bce", probs=True),
        dict(output=torch.sigmoid(_logits(N, C)), target=_multi_hot(), loss="bce", probs=True),
    ),
    "D020": (
        dict(output=_logits(N, C), target=_multi_hot(), loss="ce"),
        dict(output=_logits(N, C), target=_multi_hot(), loss="bce"),
    ),
    "D021": (
        dict(output=_logits(N, C), target=_index(), loss="bce"),
        dict(output=_logits(N, C), target=_index(), loss="ce"),
    ),
    "D022": (
        dict(output=_logits(N, C), target=F.one_hot(_index(), C).float(), loss="ce"),
        dict(output=_logits(N, C), target=_index(), loss="ce"),
    ),
    "D023": (
        dict(output=_logits(N, C), target=F.one_hot(_index(), C).float(), loss="bce"),
        dict(output=_logits(N, C), target=_multi_hot(), loss="bce"),
    ),
    "D024": (
        dict(output=_logits(N, C), target=_index().float()),
        dict(output=_logits(N, C), target=_index()),
    ),
    "D025": (
        dict(output=_logits(N, C), target=_index() + 1),
        dict(output=_logits(N, C), target=_index()),
    ),
    "D026": (
        dict(output=_logits(N), target=_binary() * 2 - 1, loss="bce"),
        dict(output=_logits(N), target=_binary(), loss="bce"),
    ),
    "D030": (
        dict(output=_logits(N, scale=30.0), target=_binary()),
        dict(output=_logits(N, scale=3.0), target=_binary()),
    ),
    "D040": (
        dict(output=_logits(1000), target=_binary(1000, share=0.02)),
        dict(output=_logits(1000), target=_binary(1000, share=0.2)),
    ),
    "D041": (
        dict(output=_logits(N, C), target=_multi_hot() * torch.tensor([1.0, 1.0, 1.0, 0.0])),
        dict(output=_logits(N, C), target=_multi_hot()),
    ),
    "D042": (
        dict(output=_logits(N, C), target=torch.where(torch.arange(N) < 3, -100, _index())),
        dict(output=_logits(N, C), target=_index()),
    ),
}


def test_every_code_has_cases():
    assert set(CASES) == set(CHECKS)


@pytest.mark.parametrize("code", sorted(CASES))
def test_finding_triggers(code):
    report = diagnose(**CASES[code][0])
    assert code in report.codes, [(f.code, f.message) for f in report.findings]
    finding = next(f for f in report.findings if f.code == code)
    check = CHECKS[code]
    assert (finding.name, finding.severity) == (check.name, check.severity)
    assert finding.message and finding.fix and any(ch.isdigit() for ch in finding.message)
    expected_exit = {"error": 2, "warning": 1, "info": 0}[check.severity]
    assert report.exit_code >= expected_exit


@pytest.mark.parametrize("code", sorted(CASES))
def test_finding_does_not_trigger(code):
    report = diagnose(**CASES[code][1])
    assert code not in report.codes, [(f.code, f.message) for f in report.findings]


@pytest.mark.parametrize(
    "output,target,task,fmt,recommended",
    [
        (_logits(N), _binary(), "binary", "binary", "bce"),
        (_logits(N, C), _multi_hot(), "multi-label", "multi-hot", "bce"),
        (_logits(N, C), _index(), "multi-class", "index", "ce"),
        (_logits(N, C, 3), torch.arange(N * 3).reshape(N, 3) % C, "multi-class", "index", "ce"),
        (_logits(N, C), F.one_hot(_index(), C).float(), "multi-class", "one-hot", "ce"),
        (
            _logits(N, C),
            torch.softmax(_logits(N, C), 1),
            "multi-class (soft labels)",
            "probabilities",
            "ce",
        ),
        (_logits(N), torch.rand(N), "binary (soft labels)", "soft", "bce"),
    ],
    ids=[
        "binary",
        "multi-label",
        "index",
        "index-spatial",
        "one-hot",
        "soft-multi-class",
        "soft-binary",
    ],
)
def test_task_inference(output, target, task, fmt, recommended):
    report = diagnose(output, target)
    assert (report.task, report.target_format, report.recommended_loss) == (task, fmt, recommended)
    assert report.reason
    assert report.exit_code <= 1, report.codes  # clean data, nothing wrong


def test_clean_multiclass_exits_zero():
    report = diagnose(_logits(N, C), _index(), loss="ce")
    assert report.findings == [] and report.exit_code == 0


def test_one_hot_with_2_of_4_one_hot_rows_is_multi_hot():
    y = F.one_hot(_index(), C).float()
    y[0, 1] = 1.0
    assert diagnose(_logits(N, C), y).target_format == "multi-hot"


def test_imbalance_suggestions_come_from_crossent_weights():
    import crossent

    y = torch.zeros(1000, 3)
    y[:500, 0] = 1
    y[:20, 1] = 1
    y[:100, 2] = 1
    report = diagnose(_logits(1000, 3), y, loss="bce")
    expected = crossent.pos_weight(y)
    assert report.codes == ["D040"]
    finding = report.findings[0]
    assert finding.data["pos_weight"] == pytest.approx(expected.tolist(), rel=1e-6)
    assert finding.data["label"] == 1 and finding.data["ratio"] == pytest.approx(49.0)
    assert "1:49" in finding.message and "2.00%" in finding.message
    pw_all = crossent.pos_weight(y.reshape(-1))
    assert finding.data["alpha"] == pytest.approx(float(pw_all / (1 + pw_all)))
    assert report.suggestions["pos_weight"].startswith("bce:pos_weight=[1, 49, 9]")
    # the suggestion is a valid spec for the same library
    _, options = crossent.registry.parse_loss_spec(report.suggestions["pos_weight"])
    assert torch.allclose(options["pos_weight"], expected, rtol=1e-3)


def test_class_imbalance_suggests_class_weights():
    import crossent

    t = torch.cat([torch.zeros(900), torch.ones(90), torch.full((10,), 2)]).long()
    report = diagnose(_logits(1000, 3), t, loss="ce")
    assert report.codes == ["D040"]
    counts = crossent.class_counts(t, num_classes=3)
    assert report.counts == counts.tolist()
    weights = crossent.class_weights(counts, method="effective_num", beta=0.999)
    assert report.findings[0].data["class_weights"] == pytest.approx(weights.tolist(), rel=1e-6)
    assert "90:1" in report.findings[0].message
    for key in ("class_weights", "class_weights_inverse_freq", "focal"):
        crossent.registry.parse_loss_spec(report.suggestions[key])  # valid specs


def test_confidently_wrong_saturated_logit_alone_triggers():
    x = _logits(N, scale=1.0)
    y = _binary()
    x[0] = -40.0  # target 1: confidently wrong
    report = diagnose(x, y)
    finding = next(f for f in report.findings if f.code == "D030")
    assert finding.data["wrong"] == 1 and finding.data["count"] == 1


def test_one_based_labels_get_the_specific_fix():
    report = diagnose(_logits(N, C), _index() + 1)
    finding = next(f for f in report.findings if f.code == "D025")
    assert "1-based" in finding.fix and "D041" not in report.codes


def test_given_ignore_index_is_used():
    y = _multi_hot()
    y[0, 0] = -1
    report = diagnose(_logits(N, C), y, loss="bce:ignore_index=-1")
    assert "D026" not in report.codes and "D042" in report.codes


def test_diagnose_does_not_change_its_inputs():
    x, y = _nan(_logits(N, C)), _index()
    x0, y0 = x.clone(), y.clone()
    diagnose(x, y, loss="ce")
    assert torch.equal(x.nan_to_num(7.0), x0.nan_to_num(7.0)) and torch.equal(y, y0)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _save(tmp_path, name, tensor):
    path = tmp_path / name
    np.save(path, tensor.numpy())
    return path


@pytest.mark.parametrize(
    "case,codes,exit_code,strict_exit_code",
    [
        (CASES["D001"][1], [], 0, 0),
        (CASES["D040"][0], ["D040"], 0, 1),  # imbalance on correct data: advice only
        (CASES["D030"][0], ["D030"], 1, 1),
        (CASES["D010"][0], ["D010"], 2, 2),
    ],
    ids=["clean", "note", "warning", "error"],
)
def test_cli_exit_status_and_files_unchanged(tmp_path, case, codes, exit_code, strict_exit_code):
    out = _save(tmp_path, "out.npy", case["output"])
    tgt = _save(tmp_path, "tgt.npy", case["target"])
    before = (sha256(out), sha256(tgt), out.stat().st_mtime_ns, tgt.stat().st_mtime_ns)
    args = ["doctor", out, tgt] + (["--loss", case["loss"]] if "loss" in case else [])
    result = invoke(*args)
    assert result.exit_code == exit_code, result.output
    assert f"exit status {exit_code}" in result.stdout
    assert "task" in result.stdout and "recommended" in result.stdout
    for code in codes:
        assert code in result.stdout
    strict = invoke(*args, "--strict")
    assert strict.exit_code == strict_exit_code, strict.output
    assert f"exit status {strict_exit_code}" in strict.stdout
    data = json.loads(invoke(*args, "--strict", "--json").stdout)
    assert data["exit_code"] == strict_exit_code and [f["code"] for f in data["findings"]] == codes
    assert (sha256(out), sha256(tgt), out.stat().st_mtime_ns, tgt.stat().st_mtime_ns) == before


def test_severities_and_exit_codes_follow_the_checks():
    # Notes are advice on data that is not wrong: they alone never fail the command.
    assert {c.code for c in CHECKS.values() if c.severity == "info"} == {"D022", "D040", "D042"}
    note = diagnose(**CASES["D040"][0])
    assert note.codes == ["D040"] and note.findings[0].severity == "info"
    assert note.exit_code == 0
    from crossent.cli.doctor import exit_status

    assert exit_status(note, strict=True) == 1
    warning = diagnose(**CASES["D030"][0])
    assert warning.exit_code == 1 and exit_status(warning, strict=True) == 1


def test_cli_json(tmp_path):
    case = CASES["D010"][0]
    result = invoke(
        "doctor",
        _save(tmp_path, "o.npy", case["output"]),
        _save(tmp_path, "t.npy", case["target"]),
        "--loss",
        "ce",
        "--json",
    )
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["exit_code"] == 2 and data["task"] == "multi-class"
    codes = [f["code"] for f in data["findings"]]
    assert codes == ["D010"]
    assert set(data["findings"][0]) >= {"code", "name", "severity", "message", "fix"}


def test_cli_inline_and_pt_inputs(tmp_path):
    result = invoke("doctor", "[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]", "[0, 1, 0]", "--loss", "ce")
    assert result.exit_code == 2 and "D010 double-softmax" in result.stdout
    torch.save(_logits(N, C), tmp_path / "o.pt")
    torch.save(_index(), tmp_path / "t.pt")
    assert invoke("doctor", tmp_path / "o.pt", tmp_path / "t.pt").exit_code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.npy", "[0, 1]"], "does not exist"),
        (["[[1.0, 2.0]]", "[0]", "--loss", "hinge"], "Unknown loss 'hinge'"),
        (["[[1.0, 2.0]]", "[0]", "--loss", "asl", "--probs"], "no probability form"),
        (["[[1.0, 2.0]"], "Missing argument"),
    ],
)
def test_cli_user_errors(args, message):
    result = invoke("doctor", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output
