"""Dataset registry: presets, roots from arguments and environment, user entries, error messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import write_tiny_mvtec
from visionad_multicore.visionad import datasets as ds
from visionad_multicore.visionad.datasets import (
    DATASET_DICT_KEYS,
    DatasetRegistryError,
    UnknownDatasetError,
    known_dataset_keys,
    load_dataset,
)

ROOT_ENVS = (
    "VISIONAD_MVTEC_ROOT",
    "VISIONAD_VISA_ROOT",
    "VISIONAD_IDW_ROOT",
    "VISIONAD_DEMO_ROOT",
    "VISIONAD_DATA_ROOT",
    "VISIONAD_DATASETS_YAML",
    "VISIONAD_MULTICORE_SHARED_DATA",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ROOT_ENVS:
        monkeypatch.delenv(name, raising=False)


def _write_visa(cls: Path) -> Path:
    """VisionAD's VisA layout with one image per split."""
    src = write_tiny_mvtec(cls.parent / f"_{cls.name}_src", n_train=2, n_good=1, n_bad=1)
    for sub in ("train/good", "test/good", "test/bad", "ground_truth/bad"):
        (cls / sub).mkdir(parents=True)
    (cls / "train/good/000.png").write_bytes((src / "train/good/000.png").read_bytes())
    (cls / "test/good/000.png").write_bytes((src / "test/good/000.png").read_bytes())
    (cls / "test/bad/000.png").write_bytes((src / "test/defect/000.png").read_bytes())
    (cls / "ground_truth/bad/000.png").write_bytes((src / "ground_truth/defect/000_mask.png").read_bytes())
    return cls


def test_presets_counts_and_names() -> None:
    keys = known_dataset_keys()
    assert len([k for k in keys if k.startswith("mvtec_")]) == 15
    assert len([k for k in keys if k.startswith("visa_")]) == 12
    assert len([k for k in keys if k.startswith("idw_")]) == 7
    for key in (
        "mvtec_metal_nut",
        "visa_pipe_fryum",
        "idw_birdstrike",
        "idw_pooled",
        "demo_brick",
        "dev_mvtec_toothbrush",
        "dev_magnetic_tile",
        "dev_mvtec3d_tire",
        "dev_kolektor_sdd",
    ):
        assert key in keys


def test_mvtec_root_from_env_indexes_defect_folders_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = write_tiny_mvtec(tmp_path / "mvtec" / "bottle")
    (cls / "test" / "crack").mkdir()
    (cls / "ground_truth" / "crack").mkdir()
    monkeypatch.setenv("VISIONAD_MVTEC_ROOT", str(tmp_path / "mvtec"))
    d = load_dataset("mvtec_bottle")
    assert set(d) == set(DATASET_DICT_KEYS)
    assert d["dataset_key"] == "mvtec_bottle"
    assert d["folder_path_regular_train"] == str(cls / "train" / "good")
    assert d["folder_path_regular_test"] == str(cls / "test" / "good")
    assert d["folder_path_novel_test"] == [str(cls / "test" / "crack"), str(cls / "test" / "defect")]
    assert d["folder_path_novel_masks"] == [
        str(cls / "ground_truth" / "crack"),
        str(cls / "ground_truth" / "defect"),
    ]
    assert d["mean"] == [0.485, 0.456, 0.406] and d["std"] == [0.229, 0.224, 0.225]
    assert d["skip_test_novel"] == 1 and d["novel_test_start"] is None
    assert not any(p.name.endswith("_grouped") for p in cls.iterdir())  # nothing copied


def test_data_root_argument_beats_env_and_general_root_is_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_mvtec(tmp_path / "a" / "BirdStrike")
    write_tiny_mvtec(tmp_path / "b" / "BirdStrike")
    monkeypatch.setenv("VISIONAD_IDW_ROOT", str(tmp_path / "a"))
    assert load_dataset("idw_birdstrike")["folder_path_regular_train"].startswith(str(tmp_path / "a"))
    d = load_dataset("idw_birdstrike", data_root=tmp_path / "b")
    assert d["folder_path_regular_train"].startswith(str(tmp_path / "b"))
    monkeypatch.delenv("VISIONAD_IDW_ROOT")
    monkeypatch.setenv("VISIONAD_DATA_ROOT", str(tmp_path / "b"))
    assert load_dataset("idw_birdstrike")["folder_path_regular_train"].startswith(str(tmp_path / "b"))


def test_visa_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = _write_visa(tmp_path / "visa" / "pcb1")
    monkeypatch.setenv("VISIONAD_VISA_ROOT", str(tmp_path / "visa"))
    d = load_dataset("visa_pcb1")
    assert d["folder_path_novel_test"] == str(cls / "test" / "bad")
    assert d["folder_path_novel_masks"] == str(cls / "ground_truth" / "bad")


def test_no_root_given_names_the_env_variables() -> None:
    with pytest.raises(FileNotFoundError, match="VISIONAD_VISA_ROOT") as err:
        load_dataset("visa_candle")
    assert "visa_candle" in str(err.value) and "VISIONAD_DATA_ROOT" in str(err.value)


def test_dev_entries_use_shared_data_env_not_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tiny_mvtec(tmp_path / "shared" / "mvtec_toothbrush")
    monkeypatch.setenv("VISIONAD_DATA_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VISIONAD_MULTICORE_SHARED_DATA", str(tmp_path / "shared"))
    d = load_dataset("dev_mvtec_toothbrush", data_root=tmp_path / "elsewhere")
    assert d["folder_path_regular_train"] == str(tmp_path / "shared" / "mvtec_toothbrush" / "train" / "good")


def test_dev_entries_default_to_shared_data_beside_repo() -> None:
    reg = ds.load_registry()
    folder, origin = reg.resolve_root("shared_data")
    assert (
        folder == (ds.REPO_ROOT.parent / "shared" / "data")
        or folder.resolve() == (ds.REPO_ROOT.parent / "shared" / "data").resolve()
    )
    assert "default" in origin
    if (folder / "mvtec_toothbrush").is_dir():
        d = load_dataset("dev_mvtec_toothbrush")
        assert Path(d["folder_path_novel_test"][0]).name == "defective"


def test_user_yaml_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_mvtec(tmp_path / "parts" / "widget")
    _write_visa(tmp_path / "parts" / "gadget")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        "datasets:\n"
        "  my_widget:\n"
        "    path: parts/widget\n"  # relative to the YAML file
        "    skip_train_regular: 2\n"
        "    novel_test_end: 3\n"
        "    mean: [0.5, 0.5, 0.5]\n"
        "    std: [0.25, 0.25, 0.25]\n"
        "  my_gadget:\n"
        f"    path: {tmp_path / 'parts' / 'gadget'}\n"
        "    layout: visa\n"
        "  my_folders:\n"
        "    layout: folders\n"
        "    folder_path_regular_train: parts/widget/train/good\n"
        "    folder_path_regular_test: parts/widget/test/good\n"
        "    folder_path_novel_test: [parts/widget/test/defect]\n"
        "    folder_path_novel_masks: [parts/widget/ground_truth/defect]\n"
    )
    d = load_dataset("my_widget", registry_path=yaml_file)
    assert d["folder_path_regular_train"] == str(tmp_path / "parts" / "widget" / "train" / "good")
    assert d["skip_train_regular"] == 2 and d["novel_test_end"] == 3 and d["mean"] == [0.5, 0.5, 0.5]
    assert load_dataset("my_gadget", registry_path=yaml_file)["folder_path_novel_test"].endswith("bad")
    f = load_dataset("my_folders", registry_path=yaml_file)
    assert f["folder_path_novel_masks"] == [str(tmp_path / "parts" / "widget" / "ground_truth" / "defect")]
    assert "mvtec_bottle" in known_dataset_keys(yaml_file)  # built-ins stay
    monkeypatch.setenv("VISIONAD_DATASETS_YAML", str(yaml_file))
    assert load_dataset("my_widget")["dataset_key"] == "my_widget"


def test_unknown_key_lists_closest_first() -> None:
    with pytest.raises(UnknownDatasetError) as err:
        load_dataset("mvtec_botle")
    msg = str(err.value)
    assert msg.startswith("unknown dataset key 'mvtec_botle'. Did you mean: mvtec_bottle")
    assert "visa_candle" in msg  # the full list follows
    assert isinstance(err.value, KeyError)


def test_missing_folder_names_key_and_folder(tmp_path: Path) -> None:
    cls = write_tiny_mvtec(tmp_path / "hazelnut")
    (cls / "test" / "crack").mkdir()  # a defect folder without ground truth
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mvtec_hazelnut", data_root=tmp_path)
    assert "'mvtec_hazelnut'" in str(err.value) and str(cls / "ground_truth" / "crack") in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mvtec_bottle", data_root=tmp_path)
    assert "'mvtec_bottle'" in str(err.value) and str(tmp_path / "bottle") in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("datasets:\n  x:\n    path: a\n    pth_typo: 1\n", "pth_typo"),
        ("datasets:\n  x:\n    path: a\n    layout: kolektor\n", "unknown layout 'kolektor'"),
        ("datasets:\n  x:\n    path: a\n    root: nowhere\n", "names root 'nowhere'"),
        ("datasets:\n  x:\n    layout: visa\n", "needs a 'path'"),
        ("datasets:\n  x:\n    path: a\n    skip_test_novel: 0\n", "skip_test_novel"),
        ("dataset:\n  x:\n    path: a\n", "unknown key(s) ['dataset']"),
        ("families:\n  f:\n    classes: [a]\n    prefix: f_\n", "prefix"),
    ],
)
def test_malformed_yaml_errors(tmp_path: Path, text: str, needle: str) -> None:
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text(text)
    with pytest.raises(DatasetRegistryError) as err:
        load_dataset("x", registry_path=yaml_file)
    assert needle in str(err.value) and str(yaml_file) in str(err.value)


def test_unknown_entry_key_lists_valid_keys(tmp_path: Path) -> None:
    yaml_file = tmp_path / "bad.yaml"
    yaml_file.write_text("datasets:\n  x:\n    path: a\n    folder: b\n")
    with pytest.raises(DatasetRegistryError, match=r"valid keys: path, root, layout, mean, std"):
        load_dataset("x", registry_path=yaml_file)


def test_missing_registry_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_dataset("mvtec_bottle", registry_path=tmp_path / "nope.yaml")


def test_image_level_only_entries_need_no_masks(tmp_path: Path) -> None:
    cls = write_tiny_mvtec(tmp_path / "part", n_train=2, n_good=1, n_bad=2)
    shutil.rmtree(cls / "ground_truth")  # image-level labels only: no mask anywhere
    yaml_file = tmp_path / "reg.yaml"
    yaml_file.write_text(
        f"datasets:\n  labels_only:\n    path: {cls}\n    pixel_labels: false\n"
        f"  with_masks:\n    path: {cls}\n"
        "  folders_only:\n    layout: folders\n    pixel_labels: false\n"
        f"    folder_path_regular_train: {cls / 'train' / 'good'}\n"
        f"    folder_path_regular_test: {cls / 'test' / 'good'}\n"
        f"    folder_path_novel_test: {cls / 'test' / 'defect'}\n"
    )
    d = load_dataset("labels_only", registry_path=yaml_file)
    assert d["pixel_labels"] is False and d["folder_path_novel_masks"] is None
    assert d["folder_path_novel_test"] == [str(cls / "test" / "defect")]
    f = load_dataset("folders_only", registry_path=yaml_file)
    assert f["pixel_labels"] is False and f["folder_path_novel_masks"] is None
    with pytest.raises(FileNotFoundError, match=r"mask \(ground_truth/defect\) folder not found"):
        load_dataset("with_masks", registry_path=yaml_file)  # pixel labels expected by default
    yaml_file.write_text(f"datasets:\n  x:\n    path: {cls}\n    pixel_labels: 'no'\n")
    with pytest.raises(DatasetRegistryError, match="pixel_labels must be true or false, got 'no'"):
        load_dataset("x", registry_path=yaml_file)
