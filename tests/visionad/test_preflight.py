"""Checks before work: every bad input found before training, each with the file and what was expected."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from tests.conftest import write_tiny_mvtec
from tests.fake_visionad import write_visionad_config
from visionad_multicore import cli
from visionad_multicore.algorithms import get_algorithm
from visionad_multicore.visionad.datasets import load_dataset
from visionad_multicore.visionad.loaders import ImageDataset, create_dataloaders
from visionad_multicore.visionad.preflight import (
    check_dataset,
    check_device,
    check_results_folder,
    fixed_output_size,
)
from visionad_multicore.visionad.runner import PreflightError, check_config, run_config


def small_class(root: Path) -> Path:
    """A 32 px MVTec-layout class: 3 train, 2 good, 2 defective images with masks."""
    return write_tiny_mvtec(root, size=32, n_train=3, n_good=2, n_bad=2)


def registry_for(tmp_path: Path, cls: Path, extra: str = "") -> Path:
    path = tmp_path / "reg.yaml"
    path.write_text(f"datasets:\n  small:\n    path: {cls}\n{extra}")
    return path


def check(cls: Path, tmp_path: Path, fixed_size: bool = False, extra: str = "") -> list[str]:
    dataset = load_dataset("small", registry_path=registry_for(tmp_path, cls, extra))
    problems, _ = check_dataset("small", dataset, fixed_size=fixed_size, progress=False)
    return [str(p) for p in problems]


def test_clean_dataset_has_no_problem(tmp_path: Path) -> None:
    dataset = load_dataset("small", registry_path=registry_for(tmp_path, small_class(tmp_path / "c")))
    problems, n_files = check_dataset("small", dataset, progress=False)
    assert problems == [] and n_files == 3 + 2 + 2 + 2  # images and masks, each decoded once


def test_truncated_test_png_is_found_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cls = small_class(tmp_path / "c")
    broken = cls / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header intact, pixel data cut
    (cls / "test" / "good" / "002.png").write_bytes(b"")  # a zero-byte file too
    config = write_visionad_config(
        tmp_path / "cfg.py", dataset_list=["small"], metrics=["Imagewise_AUC"], size=32
    )
    args = ["run", "--config_file", str(config), "--registry", str(registry_for(tmp_path, cls)),
            "--results_dir", str(tmp_path / "res"), "--device", "cpu"]  # fmt: skip
    assert cli.main(args) == 2
    out = capsys.readouterr().out
    assert f"ERROR [small] 2 image(s) cannot be used: {broken} (cannot decode as an image" in out
    assert "002.png (empty file (0 bytes))" in out
    assert not (tmp_path / "res").exists()  # nothing trained, nothing written
    assert cli.main([*args, "--check"]) == 2  # --check runs only the checks, with the same answer
    assert "The run cannot start" in capsys.readouterr().out


def test_check_only_writes_nothing_and_passes_on_good_data(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cls = small_class(tmp_path / "c")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["small"], size=32)
    args = ["run", "--config_file", str(config), "--registry", str(registry_for(tmp_path, cls)),
            "--results_dir", str(tmp_path / "res"), "--device", "cpu", "--check"]  # fmt: skip
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Checked 1 dataset(s), 9 image and mask files: 0 error(s), 0 warning(s)" in out
    assert "OK: the run can start" in out and not (tmp_path / "res").exists()


def test_mixed_sizes_need_a_fixed_resize(tmp_path: Path) -> None:
    cls = small_class(tmp_path / "c")
    Image.new("RGB", (48, 40)).save(cls / "train" / "good" / "001.png")
    problems = check(cls, tmp_path)
    assert len(problems) == 1 and "images of 2 different sizes (width x height: 32x32" in problems[0]
    assert "48x40" in problems[0] and "transforms.Resize((256, 256))" in problems[0]
    assert check(cls, tmp_path, fixed_size=True) == []
    # without the check, the loader says the same instead of torch's bare stack error
    dataset = load_dataset("small", registry_path=registry_for(tmp_path, cls))
    train, _, _ = create_dataloaders(None, None, None, batch_size=3, shuffle=False, **dataset)
    with pytest.raises(
        ValueError, match=r"images of different sizes in one batch \(000.png 32x32, 001.png 48x40"
    ):
        next(iter(train))


def test_fixed_output_size_reads_the_transforms() -> None:
    nearest = transforms.InterpolationMode.NEAREST
    assert fixed_output_size(transforms.Compose([transforms.Resize((256, 128), interpolation=nearest)])) == (
        256,
        128,
    )
    assert fixed_output_size(transforms.Compose([transforms.Resize(256)])) is None  # keeps the aspect ratio
    assert fixed_output_size(transforms.Compose([transforms.Resize(300), transforms.CenterCrop(224)])) == (
        224,
        224,
    )
    assert fixed_output_size(transforms.Compose([])) is None
    assert fixed_output_size(None) is None


def test_mask_problems(tmp_path: Path) -> None:
    cls = small_class(tmp_path / "c")
    gt = cls / "ground_truth" / "defect"
    (gt / "001_mask.png").unlink()
    problems = check(cls, tmp_path)
    assert len(problems) == 1 and "no mask for 1 anomalous image(s)" in problems[0]
    assert str(cls / "test" / "defect" / "001.png") in problems[0] and "pixel_labels: false" in problems[0]

    wide = np.zeros((32, 64), np.uint8)
    wide[4:9, 4:9] = 255
    Image.fromarray(wide).save(gt / "001_mask.png")  # another aspect ratio: cannot be aligned
    grey = np.array(Image.open(gt / "000_mask.png"))
    grey[grey > 0] = 128
    grey[0, 0] = 255  # three values: thresholded, not binary
    Image.fromarray(grey).save(gt / "000_mask.png")
    problems = check(cls, tmp_path)
    assert any(
        p.startswith("ERROR") and "another aspect ratio" in p and "001_mask.png 64x32" in p for p in problems
    )
    assert any(p.startswith("WARNING") and "non-binary" in p and "000_mask.png" in p for p in problems)

    Image.fromarray(np.zeros((16, 16), np.uint8)).save(gt / "001_mask.png")  # same ratio, smaller, empty
    problems = check(cls, tmp_path)
    assert all(p.startswith("WARNING") for p in problems), problems
    assert any("resized with NEAREST" in p and "001_mask.png 16x16" in p for p in problems)
    assert any("empty mask" in p and "001_mask.png" in p for p in problems)


def test_loader_refuses_a_mask_of_another_aspect_ratio_and_warns_on_resize(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "gt" / "a_mask.png")
    Image.fromarray(np.full((16, 48), 255, np.uint8)).save(tmp_path / "gt" / "b_mask.png")
    ds = ImageDataset(tmp_path / "img", mask_folder_path=tmp_path / "gt")
    with caplog.at_level(logging.WARNING):
        assert ds[0][1].shape == (1, 32, 32) and ds[0][1].min() == 1
    assert "a_mask.png is 16x16, its image 32x32: resizing the mask" in caplog.text
    with pytest.raises(ValueError, match=r"b_mask.png is 48x16 .* a different aspect ratio"):
        ds[1]


def test_alpha_channel_is_reported_not_silently_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cls = small_class(tmp_path / "c")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(cls / "train" / "good" / "002.png")
    problems = check(cls, tmp_path)
    assert problems == [f"WARNING [small] 1 image(s) with an alpha channel, dropped as in VisionAD: "
                        f"{cls / 'train' / 'good' / '002.png'}"]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        ImageDataset(cls / "train" / "good")[2]
    assert "002.png has an alpha channel: it is dropped, as in VisionAD" in caplog.text


def test_train_and_test_must_not_share_files(tmp_path: Path) -> None:
    cls = small_class(tmp_path / "c")
    shutil.copy(cls / "train" / "good" / "000.png", cls / "test" / "good" / "copy.png")  # same content
    problems = check(cls, tmp_path)
    assert problems == [
        f"ERROR [small] 1 image(s) with the same content in train and regular_test: "
        f"{cls / 'train' / 'good' / '000.png'} = {cls / 'test' / 'good' / 'copy.png'}"
    ]
    (cls / "test" / "good" / "copy.png").unlink()
    extra = (
        f"    layout: folders\n    folder_path_regular_train: {cls / 'train' / 'good'}\n"
        f"    folder_path_regular_test: {cls / 'train' / 'good'}\n"  # the same folder twice
        f"    folder_path_novel_test: {cls / 'test' / 'defect'}\n"
        f"    folder_path_novel_masks: {cls / 'ground_truth' / 'defect'}\n"
    )
    registry = tmp_path / "folders.yaml"
    registry.write_text("datasets:\n  small:\n" + extra)
    problems, _ = check_dataset("small", load_dataset("small", registry_path=registry), progress=False)
    assert [str(p) for p in problems] == [
        "ERROR [small] 3 file(s) in both train and regular_test: "
        + ", ".join(str(cls / "train" / "good" / f"00{i}.png") for i in range(3))
    ]


def test_stray_files_and_zero_std(tmp_path: Path) -> None:
    cls = small_class(tmp_path / "c")
    (cls / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    dataset = load_dataset("small", registry_path=registry_for(tmp_path, cls, "    std: [0.2, 0.0, 0.2]\n"))
    problems = [str(p) for p in check_dataset("small", dataset, progress=False)[0]]
    assert problems[0] == "ERROR [small] std [0.2, 0.0, 0.2] has a zero: the loaders would divide by zero"
    assert (
        "WARNING [small] train: 1 file(s) that are not images" in problems[1] and ".DS_Store" in problems[1]
    )
    strict = check_dataset("small", dataset, progress=False, strict_listing=True)[0]  # VisionAD's loaders
    assert [p.level for p in strict] == ["error", "error"]


def test_device_cuda_without_cuda_is_a_clear_error_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (problem,) = check_device("cuda")
    assert problem.level == "error" and "CUDA is not available on this machine" in problem.message
    assert "--device cpu" in problem.message
    assert check_device("cpu") == [] and check_device(None) == []
    assert "not a torch device" in check_device("gpu0")[0].message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "1 CUDA device(s): cuda:0 to cuda:0" in check_device("cuda:3")[0].message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    cls = small_class(tmp_path / "c")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["small"], size=32)
    code = cli.main(["run", "--config_file", str(config), "--registry", str(registry_for(tmp_path, cls)),
                     "--results_dir", str(tmp_path / "res"), "--device", "cuda"])  # fmt: skip
    assert code == 2 and "ERROR [device cuda] CUDA is not available" in capsys.readouterr().out
    assert not (tmp_path / "res").exists()


def test_unwritable_results_folder_is_found_before_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (problem,) = check_results_folder(blocker / "results")
    assert problem.message == f"cannot create {blocker / 'results'}: {blocker} is a file, not a folder"
    assert check_results_folder(tmp_path / "new" / "deeper") == []
    assert not (tmp_path / "new").exists()  # checking creates nothing
    cls = small_class(tmp_path / "c")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["small"], size=32)
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        run_config(config, registry_path=registry_for(tmp_path, cls), results_dir=blocker / "results",
                   resolve_algorithm=get_algorithm, progress=False)  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_results_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert "cannot write into" in check_results_folder(folder)[0].message
        assert "no write permission" in check_results_folder(folder / "sub")[0].message
    finally:
        folder.chmod(0o700)


def test_check_config_reports_every_dataset(tmp_path: Path) -> None:
    good = small_class(tmp_path / "good")
    bad = small_class(tmp_path / "bad")
    (bad / "test" / "defect" / "000.png").write_bytes(b"not an image")
    registry = tmp_path / "two.yaml"
    registry.write_text(f"datasets:\n  good:\n    path: {good}\n  bad:\n    path: {bad}\n")
    config = write_visionad_config(tmp_path / "cfg.py", dataset_list=["good", "bad", "nope"], size=32)
    report = check_config(config, registry_path=registry, results_dir=tmp_path / "res",
                          resolve_algorithm=get_algorithm, progress=False)  # fmt: skip
    assert report.datasets == ["good", "bad", "nope"] and not report.ok
    assert [p.where for p in report.errors] == ["bad", "nope"]
    assert "000.png (cannot decode as an image: UnidentifiedImageError" in report.errors[0].message
