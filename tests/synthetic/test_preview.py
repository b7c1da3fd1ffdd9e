"""Tests of the SSA preview: the counts table, the figure, and the ``ssa-preview`` command end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import pytest

from visionad_multicore.cli import main
from visionad_multicore.synthetic.dataset import SyntheticAnomalySet
from visionad_multicore.synthetic.masks import SSAConfig, generate_masks
from visionad_multicore.synthetic.preview import brick_images, counts_table, preview_figure, table_to_markdown

matplotlib.use("Agg")

SMALL = SSAConfig(
    size=48, buckets=(1, 2, 5), masks_per_bucket=4, multi_counts=(2, 3), masks_per_multi=2, n_empty=3
)


def test_counts_table_rows() -> None:
    ms = generate_masks(SMALL, seed=0)
    rows = counts_table(ms)
    assert [(r["kind"], r["value"], r["count"]) for r in rows] == [
        ("single", 1, 4),
        ("single", 2, 4),
        ("single", 5, 4),
        ("multi", 2, 2),
        ("multi", 3, 2),
        ("empty", "", 3),
        ("total", "", len(ms)),
    ]
    assert rows[0]["median_area_px"] > rows[2]["median_area_px"] > 0
    assert rows[3]["mean_components"] == 2.0 and rows[5]["median_area_px"] == 0.0
    md = table_to_markdown(rows)
    assert md.count("\n") == len(rows) + 2 and md.startswith("| kind | value | count")


def test_preview_figure_has_all_panels() -> None:
    ms = generate_masks(SMALL, seed=0)
    images = brick_images(48, count=3)
    assert images.shape == (3, 3, 48, 48) and 0 <= images.min() and images.max() <= 1
    ds = SyntheticAnomalySet(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ms, size=len(ms), seed=0)
    fig = preview_figure(ms, ds, buckets=(1, 2, 5, 13), n_examples=8, source="brick")
    titles = [ax.get_title() for ax in fig.axes]
    assert "n = 1: 4 masks" in titles and "n = 5: 4 masks" in titles
    assert not any(t.startswith("n = 13:") for t in titles)  # bucket absent from the set is skipped
    assert sum(t.startswith("a = ") and "largest" in t for t in titles) == 2
    assert sum("img" in t for t in titles) == 8
    # every anomaly kind, in both mixtures, on one mask
    for kind in ("noise", "cutpaste", "texture", "blur", "colour"):
        assert f"{kind} (mixed)" in titles and f"{kind} (subtle)" in titles
    assert len(preview_figure(ms).axes) == 3 + 2 + 1  # no synthetic set: schema rows only


@pytest.mark.parametrize("with_dataset", [False, True])
def test_ssa_preview_command(
    tmp_path: Path, tiny_mvtec: Path, with_dataset: bool, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "preview.png"
    argv = ["ssa-preview", str(out), "--size", "64", "--seed", "1"]
    if with_dataset:
        registry = tmp_path / "registry.yaml"
        registry.write_text(f"datasets:\n  tiny:\n    path: {tiny_mvtec}\n")
        argv += ["--dataset", "tiny", "--registry", str(registry), "--max_images", "2"]
    assert main(argv) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["count"]) == 2060 and rows[0]["count"] == "60"
    assert "| single | 29 | 60 |" in out.with_suffix(".md").read_text()
    printed = capsys.readouterr().out
    assert "2060 masks at 64 px" in printed
