"""Leaderboard: scanning VisionAD-layout results, epoch selection, means, ranks, outputs, plot, gallery."""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionad_multicore.cli import main
from visionad_multicore.reporting import leaderboard as lb
from visionad_multicore.reporting.gallery import (
    choose_images,
    find_input_image,
    load_predictions,
    make_gallery,
)
from visionad_multicore.reporting.plots import plot_leaderboard
from visionad_multicore.reporting.results import scan_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_epoch(
    root: Path,
    run: str,
    algo: str,
    desc: str,
    dataset: str,
    epoch: int,
    metrics: dict[str, dict[str, float]],
    train_per_image: float = 1.0,
    infer_per_image: float = 0.1,
    model_params: str | None = None,
    metrics_in_json: bool = True,
) -> Path:
    """Write one epoch folder the way VisionAD's train_algo does (data.json + metrics.pk)."""
    run_time = run[:19]
    epoch_dir = root / run / f"{algo}_{desc}" / dataset / str(epoch)
    epoch_dir.mkdir(parents=True, exist_ok=True)
    with (epoch_dir / "metrics.pk").open("wb") as f:
        pickle.dump({m: {"metric_results": v} for m, v in metrics.items()}, f)
    data = {
        "time": run_time,
        "run_description": run[20:],
        "model_description": desc,
        "model_long_description": "",
        "epoch": epoch,
        "training_transforms": "",
        "model": algo,
        "train_time": train_per_image * 10,
        "train_time_per_image": train_per_image,
        "inference_time": infer_per_image * 8,
        "inference_time_per_image": infer_per_image,
        "model_params": model_params
        if model_params is not None
        else algo + str({"seed": 3, "device": "cpu"}),
        "dataset": dataset,
        "batch_size": 4,
    }
    if metrics_in_json:
        data["metrics"] = metrics
    (epoch_dir / "data.json").write_text(json.dumps(data))
    return epoch_dir


def _m(i_auc: float, p_auc: float, aupro: float, pl: float, method: str) -> dict[str, dict[str, float]]:
    return {
        "Imagewise_AUC": {method: i_auc},
        "Pixelwise_AUC": {method: p_auc},
        "Pixelwise_AUPRO": {method: aupro},
        "PL": {method: pl},
    }


def _merge(*parts: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for part in parts:
        for metric, values in part.items():
            out.setdefault(metric, {}).update(values)
    return out


RUN = "2026_01_02_03_04_05_bench"


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    """Two algorithms (alpha: methods m1, m2; beta_X: method b), two datasets, three epochs each."""
    root = tmp_path / "results"
    for dataset, shift in (("ds1", 0.0), ("ds2", -0.1)):
        # alpha/m1: PL best at epoch 1; final epoch 2
        for epoch, pl in enumerate((0.3, 0.9, 0.5)):
            write_epoch(
                root,
                RUN,
                "alpha",
                "",
                dataset,
                epoch,
                _merge(
                    _m(0.9 + shift, 0.95 + shift, 0.8 + shift, pl + shift, "m1"), _m(0.7, 0.8, 0.6, 0.2, "m2")
                ),
                train_per_image=2.0,
            )
        for epoch in range(3):
            write_epoch(
                root, RUN, "beta", "X", dataset, epoch, _m(0.8, 0.9 + shift, 0.7, 0.4, "b"), 0.5, 0.05
            )
    return root


def test_final_and_best_epoch_selection(results: Path) -> None:
    board = lb.build_leaderboard([results], epoch_mode="final")
    rows = {(r.algorithm, r.method, r.dataset): r for r in board.rows}
    assert set(rows) == {
        (a, m, d) for a, m in (("alpha", "m1"), ("alpha", "m2"), ("beta_X", "b")) for d in ("ds1", "ds2")
    }
    assert rows[("alpha", "m1", "ds1")].epoch == 2
    assert rows[("alpha", "m1", "ds1")].metrics["PL"] == pytest.approx(0.5)
    assert rows[("beta_X", "b", "ds2")].train_time_per_image == 0.5

    best = lb.build_leaderboard([results], epoch_mode="best", best_metric="PL")
    rows = {(r.algorithm, r.method, r.dataset): r for r in best.rows}
    assert rows[("alpha", "m1", "ds1")].epoch == 1
    assert rows[("alpha", "m1", "ds2")].metrics["PL"] == pytest.approx(0.8)
    # constant PL: the earliest epoch reaching the maximum (VisionAD's strict '>' keeps the first)
    assert rows[("beta_X", "b", "ds1")].epoch == 0


def test_means_and_ranks_by_hand(results: Path) -> None:
    board = lb.build_leaderboard([results])
    means = {(m.algorithm, m.method): m for m in board.means}
    m1 = means[("alpha", "m1")]
    assert m1.n_datasets == 2
    assert m1.metrics["Imagewise_AUC"] == pytest.approx((0.9 + 0.8) / 2)
    assert m1.metrics["PL"] == pytest.approx((0.5 + 0.4) / 2)
    assert m1.train_time_per_image == pytest.approx(2.0)

    ranks = {(r.algorithm, r.method): r for r in board.ranks}
    # Final-epoch values (m1 on ds2 is shifted by -0.1; b's P-AUC too):
    #            I-AUC          P-AUC             AUPRO            PL
    #   ds1   m1 .9 b .8 m2 .7  m1 .95 b .9 m2 .8  m1 .8 b .7 m2 .6   m1 .5 b .4 m2 .2
    #   ds2   m1 .8 b .8 m2 .7  m1 .85 b .8 m2 .8  m1 .7+ b .7 m2 .6  m1 .4 b .4 m2 .2
    # (.7+: 0.8 - 0.1 is 0.7000000000000001 in floating point, so m1 beats b there: no tie.)
    # Ranks (ties averaged), then the mean over the two datasets, then over the four metrics:
    #   m1  I (1 + 1.5)/2 = 1.25  P 1                    A 1                  PL (1 + 1.5)/2 = 1.25 -> 1.125
    #   b   I (2 + 1.5)/2 = 1.75  P (2 + 2.5)/2 = 2.25  A 2                  PL (2 + 1.5)/2 = 1.75 -> 1.9375
    #   m2  I 3                   P (3 + 2.5)/2 = 2.75  A 3                  PL 3                  -> 2.9375
    expected = {
        ("alpha", "m1"): (
            {"Imagewise_AUC": 1.25, "Pixelwise_AUC": 1.0, "Pixelwise_AUPRO": 1.0, "PL": 1.25},
            1.125,
        ),
        ("beta_X", "b"): (
            {"Imagewise_AUC": 1.75, "Pixelwise_AUC": 2.25, "Pixelwise_AUPRO": 2.0, "PL": 1.75},
            1.9375,
        ),
        ("alpha", "m2"): (
            {"Imagewise_AUC": 3.0, "Pixelwise_AUC": 2.75, "Pixelwise_AUPRO": 3.0, "PL": 3.0},
            2.9375,
        ),
    }
    for key, (per_metric, mean_rank) in expected.items():
        assert ranks[key].ranks == pytest.approx(per_metric), key
        assert ranks[key].mean_rank == pytest.approx(mean_rank), key
        assert ranks[key].n_datasets == 2
    assert [(r.algorithm, r.method) for r in board.ranks] == [
        ("alpha", "m1"),
        ("beta_X", "b"),
        ("alpha", "m2"),
    ]


def test_outputs_md_csv_json(results: Path) -> None:
    board = lb.build_leaderboard([results])
    md = lb.render(board, "md")
    assert "## ds1" in md and "## ds2" in md and "## Mean over datasets (2)" in md and "## Ranks" in md
    assert "| alpha | m1 | **0.9000** |" in md  # best I-AUC on ds1 in bold
    rows = list(csv.DictReader(io.StringIO(lb.render(board, "csv"))))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("dataset") == 6 and kinds.count("mean") == 3 and kinds.count("rank") == 3
    first = next(
        r for r in rows if r["kind"] == "dataset" and r["algorithm"] == "alpha" and r["dataset"] == "ds1"
    )
    assert float(first["Imagewise_AUC"]) == pytest.approx(0.9) and first["epoch"] == "2"
    doc = json.loads(lb.render(board, "json"))
    assert doc["schema"] == "visionad_multicore.leaderboard"
    assert set(doc["datasets"]) == {"ds1", "ds2"} and len(doc["mean"]) == 3 and len(doc["ranks"]) == 3
    with pytest.raises(ValueError, match="unknown format"):
        lb.render(board, "xml")  # type: ignore[arg-type]


def test_malformed_entries_skipped_with_warning(results: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = results / RUN / "alpha_" / "ds1" / "7"
    bad.mkdir()
    (bad / "data.json").write_text("{not json")
    orphan = results / RUN / "beta_X" / "ds1" / "9"
    orphan.mkdir()
    (orphan / "metrics.pk").write_bytes(b"whatever")
    report = scan_results([results])
    assert any(str(bad / "data.json") in w and "not valid JSON" in w for w in report.warnings)
    assert any(str(orphan) in w and "no data.json" in w for w in report.warnings)
    assert str(bad / "data.json") in caplog.text
    board = lb.build_leaderboard(report)
    assert all(r.epoch != 7 for r in board.rows)  # the others still count
    assert "## Skipped or ambiguous entries" in lb.render(board, "md")


def test_metrics_pk_fallback_nan_and_duplicate_runs(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_epoch(root, "2026_01_01_00_00_00_a", "alpha", "", "ds", 0, _m(0.6, 0.6, 0.6, 0.6, "m"))
    newer = write_epoch(
        root,
        "2026_02_01_00_00_00_b",
        "alpha",
        "",
        "ds",
        0,
        _m(0.7, 0.7, float("nan"), 0.7, "m"),
        metrics_in_json=False,
    )
    board = lb.build_leaderboard([root])
    assert len(board.rows) == 1
    row = board.rows[0]
    assert row.source == str(newer) and row.metrics["Imagewise_AUC"] == pytest.approx(0.7)  # from metrics.pk
    assert math.isnan(row.metrics["Pixelwise_AUPRO"])
    assert any("several runs" in w for w in board.warnings)
    assert "Pixelwise_AUPRO" not in board.ranks[0].ranks  # NaN is not ranked
    assert "Pixelwise_AUPRO" not in board.means[0].metrics
    assert json.loads(lb.render(board, "json"))["datasets"]["ds"][0]["metrics"]["Pixelwise_AUPRO"] is None


def test_plot_png(results: Path, tmp_path: Path) -> None:
    board = lb.build_leaderboard([results], published=lb.load_published())
    out = plot_leaderboard(board, tmp_path / "plots" / "board.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as im:
        assert im.width > 600 and im.height > 600


def test_published_rows(results: Path, tmp_path: Path) -> None:
    published = lb.load_published()
    assert published and all(r.published for r in published)
    algorithms = {r.algorithm for r in published}
    assert any("PatchCore" in a for a in algorithms) and any("MultiCore" in a for a in algorithms)
    board = lb.build_leaderboard([results], published=published)
    md = lb.render(board, "md")
    assert f"## Published reference results ({lb.PUBLISHED_MARK})" in md
    assert all(not r.published for r in board.rows)  # never mixed into ours or ranked
    assert {(r.algorithm, r.method) for r in board.ranks} == {
        ("alpha", "m1"),
        ("alpha", "m2"),
        ("beta_X", "b"),
    }

    bad = tmp_path / "pub"
    bad.mkdir()
    (bad / "x.yaml").write_text("source: {citation: c}\nrows:\n  - {algorithm: a, dataset: d, metircs: {}}\n")
    with pytest.raises(ValueError, match="unknown keys \\['metircs'\\]"):
        lb.load_published(bad)
    with pytest.raises(FileNotFoundError, match="no published reference files"):
        lb.load_published(tmp_path / "nothing")


def test_methods_filter_and_no_results(results: Path, tmp_path: Path) -> None:
    board = lb.build_leaderboard([results], methods=["alpha/m*"])
    assert {r.method for r in board.rows} == {"m1", "m2"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no readable results"):
        lb.build_leaderboard([empty])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_results([tmp_path / "missing"])


# ---------------------------------------------------------------- gallery


def write_heatmaps(
    epoch_dir: Path, image_dir: Path, n_novel: int = 3, n_regular: int = 2, size: int = 16
) -> Path:
    """A tiny heatmaps.pk (VisionAD's 4-tuple) whose paths point at real input images."""
    rng = np.random.default_rng(0)
    image_dir.mkdir(parents=True, exist_ok=True)
    paths_novel, paths_regular = [], []
    for i in range(n_novel):
        p = image_dir / f"defect_{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        paths_novel.append(str(p))
    for i in range(n_regular):
        paths_regular.append(str(image_dir / f"good_{i:03d}.png"))  # not on disk: input omitted for these
    targets = np.zeros((n_novel, 1, size, size), np.float32)
    targets[:, :, 4:9, 5:11] = 1
    heatmap_set = {
        "heatmap_set_regular": {m: rng.random((n_regular, 1, size, size)) for m in ("m1", "m2")},
        "heatmap_set_novel": {
            "m1": targets + 0.1 * rng.random(targets.shape),
            "m2": rng.random(targets.shape),
        },
    }
    scores = {
        "image_score_set_regular": {m: rng.random(n_regular) for m in ("m1", "m2")},
        "image_score_set_novel": {m: rng.random(n_novel) for m in ("m1", "m2")},
    }
    path = epoch_dir / "heatmaps.pk"
    with path.open("wb") as f:
        pickle.dump(
            (
                heatmap_set,
                scores,
                {"targets_novel": targets},
                {"paths_regular": paths_regular, "paths_novel": paths_novel},
            ),
            f,
        )
    return path


def test_gallery_from_heatmaps_pk(results: Path, tmp_path: Path) -> None:
    epoch_dir = results / RUN / "alpha_" / "ds1" / "2"
    pk = write_heatmaps(epoch_dir, tmp_path / "images")
    preds = load_predictions(pk)
    assert preds.heatmaps["novel"]["m1"].shape == (3, 16, 16) and preds.targets_novel.shape == (3, 16, 16)
    assert choose_images(preds, 2) == [("novel", preds.paths["novel"][0]), ("novel", preds.paths["novel"][2])]
    assert choose_images(preds, ["defect_001.png", "good_000"]) == [
        ("novel", preds.paths["novel"][1]),
        ("regular", preds.paths["regular"][0]),
    ]
    with pytest.raises(ValueError, match="not found"):
        choose_images(preds, ["nope.png"])
    broken = tmp_path / "broken.pk"
    broken.write_bytes(pk.read_bytes()[:100])
    with pytest.raises(ValueError, match="broken.pk: unreadable heatmap pickle"):
        load_predictions(broken)

    out = make_gallery(
        [("alpha", pk)], tmp_path / "g.png", images=["defect_001.png", "good_000"], use_registry=False
    )
    with Image.open(out) as im:
        wide = im.width
        assert im.height > 200
    out2 = make_gallery([("alpha", pk)], tmp_path / "g2.png", images=2, methods=["m1"], use_registry=False)
    with Image.open(out2) as im:
        assert im.width < wide  # one method column fewer

    # through the CLI: final epoch 2 holds heatmaps.pk
    cli_out = tmp_path / "cli_gallery.png"
    rc = main(["leaderboard", str(results), "--gallery", str(cli_out), "--gallery-images", "2",
               "--gallery-dataset", "ds1", "--out", str(tmp_path / "b.md")])  # fmt: skip
    assert rc == 0 and cli_out.read_bytes()[:8] == PNG_MAGIC


def test_gallery_without_saved_heatmaps_is_an_error(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["leaderboard", str(results), "--gallery", str(tmp_path / "g.png"), "--out", str(tmp_path / "b.md")]
    )
    assert rc == 1
    assert "no saved heatmaps" in capsys.readouterr().err


def test_cli_end_to_end(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "board.json"
    plot = tmp_path / "out" / "board.png"
    rc = main(["leaderboard", str(results), "--format", "json", "--out", str(out), "--plot", str(plot),
               "--epoch", "best", "--published", "--export", str(tmp_path / "out" / "sub.csv")])  # fmt: skip
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["epoch_selection"]["mode"] == "best" and doc["published"][0]["mark"] == lb.PUBLISHED_MARK
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "out" / "sub.csv").read_text().startswith("algorithm,label,")
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind
    assert str(out) in capsys.readouterr().err

    assert main(["leaderboard", str(results), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("kind,dataset,algorithm,method,epoch,Imagewise_AUC")


def test_gallery_finds_inputs_through_description_json(tmp_path: Path) -> None:
    """VisionAD's loaders give file names only: the input is found in description.json's test folders."""
    epoch_dir = tmp_path / "run" / "algo_" / "ds" / "0"
    epoch_dir.mkdir(parents=True)
    pk = write_heatmaps(epoch_dir, tmp_path / "novel_folder")
    with pk.open("rb") as f:
        heatmap_set, scores, targets, paths = pickle.load(f)
    paths = {k: [Path(p).name for p in v] for k, v in paths.items()}
    with pk.open("wb") as f:
        pickle.dump((heatmap_set, scores, targets, paths), f)
    preds = load_predictions(pk)
    assert find_input_image(preds.paths["novel"][0], preds.description, None, use_registry=False) is None
    description = {"dataset": {"folder_path_novel_test": str(tmp_path / "novel_folder"),
                               "folder_path_regular_test": str(tmp_path / "elsewhere")}}  # fmt: skip
    (epoch_dir / "description.json").write_text(json.dumps(description))
    preds = load_predictions(pk)
    found = find_input_image(preds.paths["novel"][0], preds.description, None, use_registry=False)
    assert found == tmp_path / "novel_folder" / "defect_000.png"


def test_published_row_with_our_dataset_key_joins_its_table(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "p.yaml").write_text(
        "source: {citation: 'Someone 2024'}\n"
        "rows:\n  - {algorithm: Ref, method: r, dataset: ds1, metrics: {Imagewise_AUC: 0.99}}\n"
    )
    board = lb.build_leaderboard([results], published=lb.load_published(pub))
    md = lb.render(board, "md")
    ds1 = md.split("## ds1")[1].split("## ds2")[0]
    assert "| Ref † | r | 0.9900 |" in ds1 and lb.PUBLISHED_MARK in ds1
    assert "**0.9900**" not in md and "| alpha | m1 | **0.9000** |" in ds1  # never bolded as best
    assert ("Ref", "r") not in {(r.algorithm, r.method) for r in board.ranks}

    assert main(["leaderboard", str(results), "--published-dir", str(pub), "--format", "json"]) == 0
    (ref,) = json.loads(capsys.readouterr().out)["published"]
    assert ref["algorithm"] == "Ref" and ref["mark"] == lb.PUBLISHED_MARK


def test_gallery_input_lookup_for_flattened_mvtec_names(tmp_path: Path) -> None:
    """Our loaders name anomalous images '<defect>_<file>' over a list of defect folders."""
    folder = tmp_path / "test" / "crack"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "003.png")
    description = {"dataset": {"folder_path_novel_test": [str(tmp_path / "test" / "hole"), str(folder)]}}
    assert find_input_image("crack_003.png", description, None, use_registry=False) == folder / "003.png"
    assert find_input_image("hole_003.png", description, None, use_registry=False) is None


def test_model_description_from_folder_when_data_json_lacks_it(tmp_path: Path) -> None:
    epoch_dir = write_epoch(tmp_path, RUN, "multicore", "MC4", "ds", 0, _m(0.9, 0.9, 0.9, 0.9, "m"))
    data = json.loads((epoch_dir / "data.json").read_text())
    del data["model_description"]
    (epoch_dir / "data.json").write_text(json.dumps(data))
    assert scan_results([tmp_path]).epochs[0].label == "multicore_MC4"
