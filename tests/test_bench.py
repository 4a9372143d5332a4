"""The benchmark library and ``crossent bench``: what it measures, how it reports, a quick run.

Timing is not tested (no test asserts a time); the memory measurements are checked against
functions whose memory use is known exactly.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from typer.testing import CliRunner

from crossent import bench as B
from crossent.cli import app
from tests._helpers.cli import sha256

RUNNER = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
N = 1 << 22  # 16 MB buffers: page-sized noise is far below the tolerances


def test_saved_extra_bytes_counts_what_autograd_keeps_except_inputs():
    x = torch.randn(1000, requires_grad=True)
    y = torch.randn(1000)
    assert B.saved_extra_bytes(lambda x, y: (x * y).sum(), x, y) == 0  # saves the inputs only
    assert B.saved_extra_bytes(lambda x, y: x.exp().sum(), x, y) == 4000  # saves exp(x)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_cpu_peak_extra_bytes_sees_live_buffers():
    x = torch.randn(N, requires_grad=True)
    y = torch.randn(N)
    # forward keeps exp(x) (1 buffer); backward writes x.grad (1 more) while it is alive
    peak, method = B.peak_extra_bytes(lambda x, y: x.exp().sum(), x, y, torch.device("cpu"))
    assert method == "VmHWM"
    assert 1.9 <= peak / (4 * N) <= 2.3
    # y * 2 * x: two temporaries in forward, x.grad in backward
    peak, _ = B.peak_extra_bytes(lambda x, y: (y * 2 * x).sum(), x, y, torch.device("cpu"))
    assert 1.9 <= peak / (4 * N) <= 3.3


def _row(loss, size, provider, total, numel=N, peak=None):
    return {
        "run_id": "r1",
        "loss": loss,
        "size": size,
        "provider": provider,
        "total_ms": total,
        "numel": numel,
        "grad_bytes": 4 * numel,
        "peak_extra_bytes": peak,
        "peak_method": "VmHWM",
    }


def test_targets_are_checked_as_ratios_of_medians():
    rows = [
        _row("sigmoid_focal", "4M", "crossent", 10.0, peak=4 * N),
        _row("sigmoid_focal", "4M", "torchvision-style", 70.0),
        _row("sigmoid_focal", "4M", "torchvision-style+compile", 15.0),
        _row("bce_with_logits", "4M", "crossent", 5.0, peak=8 * N),
        _row("bce_with_logits", "4M", "torch", 20.0),
    ]
    checks = {c["target"]: c for c in B.targets(rows)}
    assert checks["sigmoid_focal 4M: crossent vs torchvision-style, fwd+bwd"]["met"]
    compiled = checks["sigmoid_focal 4M: crossent vs torchvision-style+compile, fwd+bwd"]
    assert not compiled["met"] and compiled["measured"].startswith("1.50x")
    assert checks["bce_with_logits 4M: crossent vs torch, fwd+bwd"]["met"]
    assert checks["sigmoid_focal 4M: crossent peak extra memory"]["met"]
    assert not checks["bce_with_logits 4M: crossent peak extra memory"]["met"]


def test_quick_bench_command_writes_csv_and_markdown(tmp_path):
    out_csv, out_md = tmp_path / "results.csv", tmp_path / "RESULTS.md"
    args = [
        "bench",
        "--quick",
        "--backend",
        "fused",  # no compile in a unit test
        "--providers",
        "crossent,crossent-reference,torch,torchvision-style",
        "--repeats",
        "2",
        "--csv",
        str(out_csv),
        "--markdown",
        str(out_md),
    ]
    result = RUNNER.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "crossent bench" in result.output and "sigmoid_focal" in result.output
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    # bce: 3 providers, sigmoid focal: 3, cross entropy: 3, softmax focal: 2
    assert len(rows) == 11
    assert {r["backend"] for r in rows if r["provider"] == "crossent"} == {"fused"}
    assert all(float(r["total_ms"]) > 0 and r["repeats"] == "2" for r in rows)
    text = out_md.read_text()
    assert "| sigmoid_focal | 4K | crossent | fused |" in text
    assert "| softmax_focal | 64x10 | crossent | fused |" in text
    # a second run appends, and the report shows both
    assert RUNNER.invoke(app, args).exit_code == 0
    with out_csv.open() as f:
        assert len(list(csv.DictReader(f))) == 22


def test_bench_rejects_bad_options_clearly():
    result = RUNNER.invoke(app, ["bench", "--quick", "--backend", "gpu"])
    assert result.exit_code == 2
    assert "Expected `backend` to be one of" in result.output
    result = RUNNER.invoke(app, ["bench", "--quick", "--family", "softmax"])
    assert result.exit_code == 2 and "Expected `family` to be one of" in result.output
    result = RUNNER.invoke(app, ["bench", "--quick", "--losses", "hinge"])
    assert result.exit_code == 2 and "Unknown loss 'hinge'" in result.output


def test_bench_names_losses_as_the_registry_does():
    from crossent.bench import LOSSES, resolve_loss
    from crossent.registry import get_loss

    assert resolve_loss("focal") == resolve_loss("sigmoid_focal_loss") == "sigmoid_focal"
    assert resolve_loss("ce") == "cross_entropy"
    for key in LOSSES:  # every case measures a registered loss under one of its names
        assert resolve_loss(get_loss(key).name) == key
    with pytest.raises(ValueError, match="no case for the loss 'asl'"):
        resolve_loss("asl")


QUICK_ONE = [
    "bench",
    "--quick",
    "--backend",
    "fused",
    "--family",
    "elementwise",
    "--losses",
    "bce_with_logits",
    "--providers",
    "crossent,torch",
    "--repeats",
    "2",
    "--no-memory",
]


def test_bench_json(tmp_path):
    result = RUNNER.invoke(app, [*QUICK_ONE, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # progress goes to stderr, only JSON on stdout
    assert {r["provider"] for r in data["rows"]} == {"crossent", "torch"}
    assert all(r["loss"] == "bce_with_logits" and r["total_ms"] > 0 for r in data["rows"])
    assert isinstance(data["targets"], list)


def test_bench_never_overwrites_a_file_it_did_not_write(tmp_path):
    data, notes = tmp_path / "data.csv", tmp_path / "notes.md"
    data.write_text("a,b\n1,2\n")
    notes.write_text("# my notes\n")
    before = (sha256(data), sha256(notes))
    for args, message in (
        (["--csv", data], "data.csv' exists and is not a results CSV crossent bench wrote"),
        (["--markdown", notes], "notes.md' exists and is not a report crossent bench wrote"),
        (["--csv", tmp_path / "r.csv", "--markdown", tmp_path / "r.csv"], "also given to"),
    ):
        result = RUNNER.invoke(app, [*QUICK_ONE, *args])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message in " ".join(result.output.replace("│", "").split()), result.output
        assert "running" not in result.output  # refused before measuring anything
    assert (sha256(data), sha256(notes)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "notes.md"]


def test_small_suite_rows_ratios_and_report(tmp_path):
    from crossent import bench as B

    rows = B.run_small(cases=["cross_entropy", "asl"], sizes=[[8, 3]], rounds=1, calls=2)
    assert {(r["case"], r["provider"]) for r in rows} == {
        ("cross_entropy", "crossent"),
        ("cross_entropy", "torch"),
        ("asl", "crossent"),
        ("asl", "plain formula"),
    }
    assert all(r["fwd_us"] > 0 and r["total_us"] > 0 and r["threads"] == 1 for r in rows)
    ratios = B.small_ratios(rows)
    assert [r["case"] for r in ratios] == ["cross_entropy", "asl"]
    assert ratios[0]["total_ratio"] == rows[0]["total_us"] / rows[1]["total_us"]
    path = tmp_path / "small.csv"
    B.append_small_csv(rows, path)
    B.append_small_csv(rows, path)
    again = B.read_small_csv(path)
    assert len(again) == 8 and again[0]["total_us"] == rows[0]["total_us"]
    text = B.render_small_markdown(again)
    assert "| cross_entropy | 8x3 | torch |" in text and "| asl | 8x3 | plain formula |" in text
    with pytest.raises(ValueError, match="Unknown small case 'nope'"):
        B.run_small(cases=["nope"])
