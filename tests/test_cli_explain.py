"""`crossent explain` and crossent.explain: the seed walkthroughs, formulas, torch, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import crossent
from crossent import functional as CF
from crossent._io import load_tensor, parse_shape, parse_tensor_text, random_tensor
from crossent.explain import explain
from crossent.registry import LossSpec, get_loss
from tests._helpers.cli import HAS_SOFTMAX, invoke, sha256

SEED_42 = (
    "42",
    "[[0,1,1],[1,0,0]]",
    "0.7739",
    ["2.1394", "0.0888", "0.9601", "0.0415", "0.4950", "0.9185"],
)
SEED_0 = (
    "0",
    "[[0,0,1],[1,0,0]]",
    "1.3283",
    ["0.6857", "1.4620", "2.4250", "2.0247", "0.3673", "1.0053"],
)

requires_softmax = pytest.mark.skipif(not HAS_SOFTMAX, reason="the softmax family is not merged")


def _row_losses(output: str) -> list[str]:
    """The loss column (second to last cell) of the table rows "[i,j] ... │ loss │ formula"."""
    rows = [line for line in output.splitlines() if re.match(r"^\[\d+(,\d+)*\]", line.strip())]
    return [row.split("│")[-2].strip() for row in rows]


# --------------------------------------------------------------------------------------------
# The seed walkthroughs of the tutorials, exactly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [SEED_42, SEED_0], ids=["seed42", "seed0"])
def test_seed_walkthrough(case):
    seed, target, mean, elementwise = case
    result = invoke(
        "explain", "--rand", seed, "--shape", "2x3", "--target", target, "--loss", "bce", "--probs"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert _row_losses(out) == elementwise
    assert re.search(rf"^crossent\s+{mean}\s", out, re.M), out
    assert re.search(rf"^torch\s+{mean}\s.*torch\.nn\.functional\.binary_cross_entropy$", out, re.M)
    assert "|crossent - torch| = 0.0e+00" in out
    assert f"/ 6 = {mean}" in out  # the reduction, by hand
    assert "-log(1 - " in out and "per-sample means" in out


def test_seed_42_explains_the_tutorials_rounding():
    """The tutorial's 0.7725 came from rounded inputs: the exact inputs give 0.7739."""
    result = explain(
        random_tensor(42, (2, 3)), torch.tensor([[0, 1, 1], [1, 0, 0]]), "bce", probs=True
    )
    assert round(result.value, 4) == 0.7739
    assert result.steps[0].formula == "-log(1 - 0.8823)"
    assert result.samples[0].mean == pytest.approx(1.0627527, abs=1e-6)


def test_rand_reproduces_manual_seed():
    torch.manual_seed(7)
    expected = torch.rand(3, 4)
    assert torch.equal(random_tensor(7, (3, 4)), expected)
    state = torch.get_rng_state()
    random_tensor(123, (5,))
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched


# --------------------------------------------------------------------------------------------
# Per-element values are the library's; the displayed formula evaluates to them
# --------------------------------------------------------------------------------------------


def _eval_text(text: str) -> float:
    """Evaluate a displayed formula (rounded numbers) as Python."""
    expr = text.replace("·", "*").replace("^", "**").replace("log(", "math.log(")
    return eval(expr, {"math": math, "max": max})


BINARY_CASES = [
    ("bce", {}, False),
    ("bce", {}, True),
    ("bce:pos_weight=[1,2.5,4],weight=[0.5,1,2]", {}, False),
    ("bce:label_smoothing=0.1", {}, False),
    ("bce:ignore_index=-1", {}, False),
    ("bce:reduction=sum", {}, False),
    ("focal", {}, False),
    ("focal", {}, True),
    ("focal:gamma=0.5,alpha=none", {}, False),
    ("focal:pos_weight=[3]", {}, False),
    ("focal:label_smoothing=0.2,gamma=1", {}, False),
    ("asl", {}, False),
    ("asl:clip=none,gamma_pos=1,gamma_neg=2", {}, False),
    ("asl:label_smoothing=0.1", {}, False),
]
if "poly1_focal" in crossent.registry.LOSSES:
    BINARY_CASES += [
        ("poly1_focal", {}, False),
        ("poly1_focal:epsilon=-1,gamma=0,alpha=none", {}, False),
        ("poly1_focal:weight=[1,2,3],label_smoothing=0.1", {}, False),
    ]


def _binary_data():
    x = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.1], [0.7, -0.2, -1.5]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    return x, y


@pytest.mark.parametrize(
    "spec,_,probs", BINARY_CASES, ids=[f"{c[0]}{'-probs' if c[2] else ''}" for c in BINARY_CASES]
)
def test_binary_formulas_agree_with_library(spec, _, probs):
    x, y = _binary_data()
    if "ignore_index" not in spec:
        y = y.clamp_min(0)
    if probs:
        x = torch.sigmoid(x)
    result = explain(x, y, spec, probs=probs)
    loss_spec, options = crossent.registry.parse_loss_spec(spec)
    options.pop("reduction", None)
    expected = loss_spec.function(probs=probs)(x, y, reduction="none", **options)
    assert [s.loss for s in result.steps] == expected.flatten().tolist()  # the library's, exactly
    assert not result.notes or all("torch" in n or "[0, 1]" in n for n in result.notes), (
        result.notes
    )
    for step in result.steps:
        if step.ignored:
            assert step.loss == 0.0 and step.formula is None
            continue
        assert step.formula is not None
        assert step.formula_value == pytest.approx(step.loss, rel=1e-5, abs=1e-7), step
        assert _eval_text(step.formula) == pytest.approx(step.loss, rel=2e-2, abs=2e-3), (
            step.formula
        )
    assert result.formula_max_error < 1e-6


def test_reduced_value_and_by_hand_reduction():
    x, y = _binary_data()
    y = y.clamp_min(0)
    for reduction in ("mean", "sum"):
        result = explain(x, y, "focal", reduction=reduction)
        assert result.value == pytest.approx(
            float(CF.sigmoid_focal_loss(x, y, reduction=reduction)), rel=1e-6
        )
        assert result.by_hand == pytest.approx(result.value, rel=1e-6)
    none = explain(x, y, "bce", reduction="none")
    assert none.value is None and none.by_hand is None
    assert none.elementwise_difference is not None and none.elementwise_difference < 1e-6


def test_ignore_index_mean_counts_valid_elements():
    x, y = _binary_data()  # one target is -1
    result = explain(x, y, "bce:ignore_index=-1")
    valid = [s.loss for s in result.steps if not s.ignored]
    assert len(valid) == 8 and sum(s.ignored for s in result.steps) == 1
    assert result.by_hand == pytest.approx(sum(valid) / 8, rel=1e-9)
    assert result.value == pytest.approx(result.by_hand, rel=1e-6)


def test_a_formula_that_does_not_match_is_reported():
    """The self-check can fail: a loss whose values differ from the formula is flagged."""
    real = get_loss("bce")

    def doubled(input, target, **kw):
        return 2 * CF.binary_cross_entropy_with_logits(input, target, **kw)

    class Doubled(LossSpec):  # the definition of bce, but its function returns twice the loss
        @property
        def logits(self):
            return doubled

    fake = Doubled(**{f.name: getattr(real, f.name) for f in dataclasses.fields(real)})
    x, y = _binary_data()
    result = explain(x, y.clamp_min(0), fake)
    assert any("does not describe this loss" in n for n in result.notes)
    assert result.formula_max_error > 0.01
    assert explain(x, y.clamp_min(0), real).formula_max_error < 1e-6


def test_torch_value_beside_ours():
    x, y = _binary_data()
    y = y.clamp_min(0)
    pw = torch.tensor([1.0, 2.0, 3.0])
    result = explain(x, y, "bce", pos_weight=pw)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x, y, pos_weight=pw)
    assert result.torch_function == "torch.nn.functional.binary_cross_entropy_with_logits"
    assert result.torch_value == pytest.approx(float(expected), rel=1e-7)
    assert result.difference < 1e-6
    focal = explain(x, y, "focal")
    assert focal.torch_value is None and any("torch has no Focal" in n for n in focal.notes)
    smoothed = explain(x, y, "bce:label_smoothing=0.1")
    assert smoothed.torch_value is None
    assert any("no `label_smoothing` option" in n for n in smoothed.notes)


def test_logits_in_unit_interval_get_a_hint():
    p = random_tensor(0, (2, 3))
    result = explain(p, torch.zeros(2, 3), "bce")
    assert any("--probs" in n for n in result.notes)
    assert not any("--probs" in n for n in explain(p, torch.zeros(2, 3), "bce", probs=True).notes)


# --------------------------------------------------------------------------------------------
# The softmax family (class dimension 1)
# --------------------------------------------------------------------------------------------

SOFTMAX_CASES = [
    "ce",
    "ce:weight=[1,2,3,0.5]",
    "ce:label_smoothing=0.1",
    "ce:label_smoothing=0.1,weight=[1,2,3,0.5]",
    "softmax_focal",
    "softmax_focal:alpha=0.25",
    "softmax_focal:alpha=[0.1,0.2,0.3,0.4],gamma=0.5",
    "softmax_focal:label_smoothing=0.2",
    "poly1",
    "poly1:epsilon=-1,weight=[1,2,3,0.5]",
    "poly1:label_smoothing=0.2",
]


@requires_softmax
@pytest.mark.parametrize("spec", SOFTMAX_CASES)
@pytest.mark.parametrize("targets", ["index", "probabilities"])
def test_softmax_formulas_agree_with_library(spec, targets):
    x = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.1, 3.0, -2.0, 1.0], [-1.0, 0.2, 2.5, 0.3]])
    t = torch.tensor([0, 3, 2]) if targets == "index" else torch.softmax(torch.randn(3, 4), 1)
    result = explain(x, t, spec)
    loss_spec, options = crossent.registry.parse_loss_spec(spec)
    expected = loss_spec.function()(x, t, reduction="none", **options)
    assert [s.loss for s in result.steps] == expected.tolist()
    for step in result.steps:
        assert len(step.probability) == 4
        assert sum(step.probability) == pytest.approx(1.0, abs=1e-9)
        if targets == "index":
            assert step.p_t == pytest.approx(step.probability[int(step.target)])
        assert step.formula is not None, result.notes
        assert step.formula_value == pytest.approx(step.loss, rel=1e-5, abs=1e-7)
        assert _eval_text(step.formula) == pytest.approx(step.loss, rel=2e-2, abs=2e-3)
    assert result.by_hand == pytest.approx(result.value, rel=1e-6)
    if loss_spec.torch_logits is not None:
        assert result.difference is not None and result.difference < 1e-6


@requires_softmax
def test_softmax_many_classes_and_spatial_and_ignore():
    x = torch.randn(2, 12, 3)  # (N, C, d)
    t = torch.randint(0, 12, (2, 3))
    t[0, 1] = -100
    result = explain(x, t, "ce:label_smoothing=0.1")
    assert len(result.steps) == 6 and sum(s.ignored for s in result.steps) == 1
    assert len(result.samples) == 2  # a sample holds 3 positions
    assert result.formula_max_error < 1e-5
    assert result.value == pytest.approx(result.torch_value, rel=1e-6)


@requires_softmax
def test_cli_softmax_rows():
    result = invoke(
        "explain",
        "--input",
        "[[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]]",
        "--target",
        "[0, 1]",
        "--loss",
        "ce",
    )
    assert result.exit_code == 0, result.output
    assert "p = softmax(x)" in result.stdout and "-log(" in result.stdout
    value = float(
        torch.nn.functional.cross_entropy(
            torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]]), torch.tensor([0, 1])
        )
    )
    assert f"{value:.4f}" in result.stdout


# --------------------------------------------------------------------------------------------
# The command line: options, inputs, JSON, errors
# --------------------------------------------------------------------------------------------


def test_cli_focal_flags_and_json():
    result = invoke(
        "explain",
        "--input", "[[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]]",
        "--target", "[[1,0,1],[0,1,0]]",
        "--loss", "focal", "--gamma", "2", "--alpha", "0.25", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["options"]["gamma"] == 2 and data["options"]["alpha"] == 0.25
    x = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert data["value"] == pytest.approx(float(CF.sigmoid_focal_loss(x, y, gamma=2, alpha=0.25)))
    assert len(data["steps"]) == 6
    assert data["steps"][0]["formula"] == "-0.25 · (1 - 0.8808)^2 · log(0.8808)"
    assert data["form"] == "logits" and data["torch_value"] is None


def test_cli_generic_opt_and_alpha_none():
    a = invoke(
        "explain",
        "-i",
        "[0.5, -2.0]",
        "-t",
        "[1, 0]",
        "--loss",
        "focal",
        "--alpha",
        "none",
        "--opt",
        "gamma=1",
        "--json",
    )
    b = invoke(
        "explain",
        "-i",
        "[0.5, -2.0]",
        "-t",
        "[1, 0]",
        "--loss",
        "focal:gamma=1,alpha=none",
        "--json",
    )
    assert a.exit_code == b.exit_code == 0
    va, vb = json.loads(a.stdout)["value"], json.loads(b.stdout)["value"]
    assert (
        va
        == vb
        == pytest.approx(
            float(
                CF.sigmoid_focal_loss(
                    torch.tensor([0.5, -2.0]), torch.tensor([1.0, 0.0]), gamma=1, alpha=None
                )
            )
        )
    )


def test_cli_inputs_from_files_are_read_not_changed(tmp_path):
    p = random_tensor(42, (2, 3))
    y = torch.tensor([[0, 1, 1], [1, 0, 0]])
    files = {
        "npy": (tmp_path / "p.npy", tmp_path / "y.npy"),
        "pt": (tmp_path / "p.pt", tmp_path / "y.pt"),
        "csv": (tmp_path / "p.csv", tmp_path / "y.csv"),
    }
    np.save(files["npy"][0], p.numpy())
    np.save(files["npy"][1], y.numpy())
    torch.save(p, files["pt"][0])
    torch.save(y, files["pt"][1])
    files["csv"][0].write_text(
        "a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in p.tolist()) + "\n"
    )
    files["csv"][1].write_text("0,1,1\n1,0,0\n")
    for kind, (fp, fy) in files.items():
        before = (sha256(fp), sha256(fy), fp.stat().st_mtime_ns)
        result = invoke("explain", "--input", fp, "--target", fy, "--probs", "--json")
        assert result.exit_code == 0, (kind, result.output)
        # torch's float32 value; the fused path rounds differently in the last float32 bits
        assert json.loads(result.stdout)["value"] == pytest.approx(0.7738943696, rel=1e-6), kind
        assert (sha256(fp), sha256(fy), fp.stat().st_mtime_ns) == before, kind


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--rand", "0", "--shape", "2x3", "--target", "[[0,1,1],[1,0,0]]", "--loss", "hinge"],
            "Unknown loss 'hinge'",
        ),
        (
            ["--rand", "0", "--shape", "2x3", "--target", "[[0,1,1],[1,0,0]]", "--gamma", "2"],
            "Unknown option 'gamma' for loss 'bce'",
        ),
        (["--rand", "0", "--shape", "2x3", "--target", "[[0,1],[1,0]]"], "Target size"),
        (["--rand", "0", "--shape", "2y3", "--target", "[0]"], "Expected `shape` to be sizes"),
        (["--rand", "0", "--target", "[0]"], "--rand needs --shape"),
        (
            ["--input", "[1, 2]", "--rand", "0", "--shape", "2", "--target", "[0, 1]"],
            "either as --input",
        ),
        (["--target", "[0, 1]"], "either as --input"),
        (["--input", "[[0.2, 0.3], [0.1]]", "--target", "[0, 1]"], "rectangular"),
        (["--input", "[0.2, abc]", "--target", "[0, 1]"], "could not read"),
        (["--input", "missing_file.npy", "--target", "[0, 1]"], "does not exist"),
        (
            ["--input", "[2.0, -1.0]", "--target", "[1, 0]", "--loss", "asl", "--probs"],
            "no probability form",
        ),
        (["--input", "[2.0, -1.0]", "--target", "[1, 0]", "--probs"], "probabilities in [0, 1]"),
        (["--input", "[2.0, -1.0]", "--target", "[1, 0]", "--opt", "gamma"], "Expected KEY=VALUE"),
        (
            ["--input", "[2.0, -1.0]", "--target", "[1, 0]", "--pos-weight", "auto"],
            "crossent doctor",
        ),
        (["--input", "[2.0, -1.0]", "--target", "[1, 0]", "--dtype", "int8"], "float32 or float64"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_cli_user_errors_are_clear(args, message):
    result = invoke("explain", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output


def test_cli_bad_file_types(tmp_path):
    (tmp_path / "x.txt").write_text("1,2")
    torch.save({"a": torch.ones(2)}, tmp_path / "d.pt")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    for name, message in [
        ("x.txt", "file"),
        ("d.pt", "not a single tensor"),
        ("bad.npy", "Could not read"),
    ]:
        result = invoke("explain", "--input", tmp_path / name, "--target", "[1, 0]")
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output


def test_help_everywhere():
    for args in ([], ["explain"], ["doctor"], ["curves"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.stdout
    assert "--rand" in invoke("explain", "--help").stdout
    assert "D010" in invoke("doctor", "--help").stdout


def test_version_and_bare_command():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"crossent {crossent.__version__}"
    bare = invoke()
    assert "explain" in bare.output and "doctor" in bare.output and "curves" in bare.output


def test_python_dash_m_entry_point():
    """`python -m crossent` runs the same app (one subprocess: it imports torch)."""
    src = Path(crossent.__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(src), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "crossent", "explain", "--rand", "0", "--shape", "2x3", "--target", "[[0,0,1],[1,0,0]]", "--probs"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1.3283" in proc.stdout


# --------------------------------------------------------------------------------------------
# Reading tensors
# --------------------------------------------------------------------------------------------


def test_parse_tensor_text():
    assert parse_tensor_text("[[0,1,1],[1,0,0]]").dtype == torch.int64
    assert parse_tensor_text("0.5 1e-3 -2").dtype == torch.float32
    assert parse_tensor_text("[[1 2] [3 4]]").shape == (2, 2)
    assert parse_tensor_text("[true, false]").dtype == torch.bool
    t = parse_tensor_text("[nan, inf, -Infinity]")
    assert torch.isnan(t[0]) and t[1] == math.inf and t[2] == -math.inf
    with pytest.raises(ValueError, match="close every"):
        parse_tensor_text("[[1, 2]")
    assert parse_shape("2x3x4") == (2, 3, 4)
    with pytest.raises(ValueError, match=">= 1"):
        parse_shape("0x3")


def test_csv_layouts(tmp_path):
    (tmp_path / "col.csv").write_text("label\n1\n0\n1\n")
    (tmp_path / "row.csv").write_text("# comment\n0.5;0.25\n")
    assert load_tensor(tmp_path / "col.csv", name="t").shape == (3,)
    assert load_tensor(tmp_path / "row.csv", name="t").tolist() == [[0.5, 0.25]]
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="same number of columns"):
        load_tensor(tmp_path / "ragged.csv", name="t")


@pytest.mark.parametrize("name", sorted(crossent.registry.LOSSES))
def test_every_registered_loss_is_explained_with_formulas(name):
    """A newly registered loss needs a formula builder in crossent.explain (and this passes)."""
    spec = get_loss(name)
    if spec.family == "softmax":
        x, t = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]]), torch.tensor([0, 2])
    else:
        x, t = _binary_data()
        t = t.clamp_min(0)
    result = explain(x, t, name)
    assert result.notes == [] or all("torch" in n for n in result.notes), result.notes
    assert all(s.formula is not None for s in result.steps)
    assert result.formula_max_error < 1e-6
    assert result.by_hand == pytest.approx(result.value, rel=1e-6)


def test_demo_text_and_json():
    text = invoke("demo")
    assert text.exit_code == 0
    assert "mean by hand 0.7739 | crossent 0.7739 | torch 0.7739" in text.stdout
    result = invoke("demo", "--json")
    assert result.exit_code == 0
    first, second = json.loads(result.stdout)
    assert (first["seed"], second["seed"]) == (42, 0)
    assert round(first["mean"], 4) == round(first["torch"], 4) == 0.7739
    assert first["rows"][0][0] == {
        "p": pytest.approx(0.8823, abs=1e-4),
        "y": 0.0,
        "loss": pytest.approx(2.1394, abs=1e-4),
    }
