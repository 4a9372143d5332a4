"""`crossent curves` and crossent.curves: values, autograd gradients, the PNG and the CSV."""

from __future__ import annotations

import csv
import json
import math

import pytest

from crossent.curves import DEFAULT_GAMMAS, compute_curves
from tests._helpers.cli import HAS_SOFTMAX, invoke, png_size, sha256


def test_default_is_lin_et_al_figure_1():
    curves = compute_curves(points=201)
    assert [c.label for c in curves.curves] == [
        "γ=0 (CE)",
        "FL γ=0.5",
        "FL γ=1",
        "FL γ=2",
        "FL γ=5",
    ]
    assert "Lin et al. 2017" in curves.title
    for c, gamma in zip(curves.curves, DEFAULT_GAMMAS):
        for p, loss in zip(curves.p_t, c.loss_vs_pt):
            assert loss == pytest.approx(-((1 - p) ** gamma) * math.log(p), rel=1e-9)
    # Lin et al.: with gamma = 2, p_t = 0.9 has 100x lower loss than CE.
    ce, fl2 = curves.curves[0].summary, curves.curves[3].summary
    assert ce["loss@0.9"] / fl2["loss@0.9"] == pytest.approx(100.0)


def test_gradients_come_from_autograd_and_match_the_derivative():
    """|dℓ/dz| of CE is 1 - p_t; of the focal loss, the closed form below (float64)."""
    curves = compute_curves(["focal:gamma=0,alpha=none", "focal:gamma=2,alpha=none"], points=101)
    for p, g in zip(curves.p_t, curves.curves[0].grad_vs_pt):
        assert g == pytest.approx(1 - p, rel=1e-9)
    for p, g in zip(curves.p_t, curves.curves[1].grad_vs_pt):
        # d/dz of -(1-p)^2 log p with dp/dz = p(1-p)
        expected = abs(2 * (1 - p) * math.log(p) * p * (1 - p) - (1 - p) ** 2 * (1 - p))
        assert g == pytest.approx(expected, rel=1e-8)
    for z, g in zip(curves.logit, curves.curves[0].grad_vs_logit):
        assert g == pytest.approx(1 / (1 + math.exp(z)), rel=1e-9)


def test_asymmetric_losses_get_both_sides_symmetric_ones_one():
    curves = compute_curves(["asl", "bce", "focal:gamma=2,alpha=none"], points=21)
    labels = [c.label for c in curves.curves]
    assert labels[:2] == ["ASL γ₊=0, γ₋=4, m=0.05, y=1", "ASL γ₊=0, γ₋=4, m=0.05, y=0"]
    assert labels[2] == "BCE" and labels[3] == "FL γ=2"
    neg = curves.curves[1]
    assert neg.summary["loss@0.99"] == 0.0  # p = 0.01 <= clip: the negative is discarded
    assert curves.curves[2].same_as == "ASL γ₊=0, γ₋=4, m=0.05, y=1"  # BCE = ASL's positive side


@pytest.mark.skipif(not HAS_SOFTMAX, reason="the softmax family is not merged")
def test_softmax_losses_on_two_classes():
    curves = compute_curves(["ce", "poly1:epsilon=1", "bce"], points=11)
    ce, poly, bce = curves.curves
    assert ce.loss_vs_pt == pytest.approx(bce.loss_vs_pt, rel=1e-12)  # 2-class CE = BCE
    assert bce.same_as == "CE"
    for p, loss in zip(curves.p_t, poly.loss_vs_pt):
        assert loss == pytest.approx(-math.log(p) + (1 - p), rel=1e-9)


def test_cli_writes_png_of_the_expected_size_and_csv(tmp_path):
    png, table = tmp_path / "fig.png", tmp_path / "curves.csv"
    result = invoke("curves", "--out", png, "--csv", table, "--points", "50")
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 20_000  # four panels of lines, not an empty canvas
    assert png_size(png) == (1200, 900)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 5 * 2 * 50
    assert set(rows[0]) == {"curve", "spec", "y", "grid", "p_t", "logit", "loss", "grad_abs"}
    assert "FL γ=2" in result.stdout and "Lin et al." in result.stdout
    assert f"wrote {png}" in " ".join(result.stdout.split())


def test_cli_dpi_and_extra_losses(tmp_path):
    png = tmp_path / "small.png"
    result = invoke(
        "curves",
        "--out",
        png,
        "--loss",
        "asl",
        "--loss",
        "focal:gamma=1",
        "--dpi",
        "50",
        "--points",
        "20",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert png_size(png) == (600, 450)
    data = json.loads(result.stdout)
    assert len(data["curves"]) == 5 + 2 + 2
    assert len(data["p_t"]) == 20


@pytest.mark.parametrize(
    "args,message",
    [
        (["--loss", "hinge"], "Unknown loss 'hinge'"),
        (["--loss", "focal:gama=2"], "Unknown option 'gama'"),
        (["--no-default"], "Nothing to plot"),
        (["--loss", "bce:pos_weight=auto"], "'auto'"),
        (["--points", "1"], "--points"),
    ],
)
def test_cli_errors(tmp_path, args, message):
    result = invoke("curves", "--out", tmp_path / "x.png", *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "x.png").exists()


def test_cli_unwritable_output(tmp_path):
    result = invoke("curves", "--out", tmp_path / "no" / "such" / "dir.png", "--points", "5")
    assert result.exit_code == 2 and "Could not write" in " ".join(result.output.split())


def test_cli_never_overwrites_a_file_it_did_not_write(tmp_path):
    mine = tmp_path / "photo.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a figure of crossent" * 100)
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    before = (sha256(mine), sha256(data))
    for args, message in (
        (["--out", mine], "photo.png' exists and is not a figure crossent curves wrote"),
        (["--out", tmp_path / "new.png", "--csv", data], "data.csv' exists and is not a CSV"),
        (["--out", data], "exists and is not a figure crossent curves wrote"),
        (["--out", tmp_path / "x.png", "--csv", tmp_path / "x.png"], "is also given to --csv"),
        (["--out", tmp_path], "is a directory"),
    ):
        result = invoke("curves", *args, "--points", "5")
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert message in " ".join(result.output.replace("│", "").split()), result.output
    assert (sha256(mine), sha256(data)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "photo.png"]


def test_cli_replaces_its_own_earlier_files(tmp_path):
    png, table = tmp_path / "fig.png", tmp_path / "curves.csv"
    assert invoke("curves", "--out", png, "--csv", table, "--points", "5").exit_code == 0
    from crossent.cli._files import png_text

    assert png_text(png)["Software"] == "crossent curves"
    result = invoke("curves", "--out", png, "--csv", table, "--points", "7", "--loss", "bce")
    assert result.exit_code == 0, result.output
    assert f"(replaced {png} and {table}, from an earlier run)" in " ".join(result.stdout.split())
    assert len(list(csv.DictReader(table.open()))) == (5 + 1) * 2 * 7


def test_figure_text_and_legend_stay_inside_and_off_the_panels():
    pytest.importorskip("matplotlib")
    from crossent.curves import _figure

    for specs in (None, ["asl", "bce", "focal:gamma=2", "poly1_focal", "bce:pos_weight=[9]"]):
        fig = _figure(compute_curves(specs, points=20), width=12.0, height=9.0, dpi=100)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text")) if a_visible(t)]
        assert any("Dotted: identical to an earlier curve." in t.get_text() for t in texts)
        for text in texts:
            extent = text.get_window_extent(renderer)
            assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()
            assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()
        (legend,) = fig.legends
        legend_box = legend.get_window_extent(renderer)
        assert len(legend.get_texts()) == len(compute_curves(specs, points=5).curves)
        for ax in fig.axes:
            assert not legend_box.overlaps(ax.get_window_extent(renderer))


def a_visible(artist) -> bool:
    return artist.get_visible() and bool(artist.get_text().strip())
