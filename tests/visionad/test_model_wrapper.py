"""ModelWrapper: VisionAD's test() output layout, output checks, params files; WrapperRandom save/load."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch

from visionad_multicore.algorithms.random import WrapperRandom
from visionad_multicore.visionad.model_wrapper import ModelWrapper, OutputCheckError


def make_loaders(n_train: int = 3, n_regular: int = 5, n_novel: int = 4, size: int = 8, batch: int = 2):
    """Lists of VisionAD item batches standing in for DataLoaders (iterable, with len)."""
    gen = torch.Generator().manual_seed(0)

    def batches(n: int, prefix: str, novel: bool) -> list[tuple]:
        out = []
        for start in range(0, n, batch):
            b = min(batch, n - start)
            images = torch.rand((b, 3, size, size), generator=gen)
            paths = [f"{prefix}{start + i}.png" for i in range(b)]
            info = torch.zeros(b)
            if novel:
                masks = (torch.rand((b, 1, size, size), generator=gen) > 0.5).float()
                out.append((images, masks, paths, info))
            else:
                out.append((images, paths, info))
        return out

    return batches(n_train, "train", False), batches(n_regular, "good", False), batches(n_novel, "bad", True)


class Scripted(ModelWrapper):
    """Returns whatever ``outputs(n_images, split_index)`` gives; records what the generator yielded."""

    def __init__(
        self, outputs: Callable[[int, int], tuple[dict, dict]], consume: Callable[[list], list] = list
    ):
        super().__init__()
        self.params = {}
        self.outputs = outputs
        self.consume = consume
        self.calls = 0
        self.yielded: list[tuple] = []

    def train_one_epoch(self) -> None:
        pass

    def pre_eval_processing(self) -> None:
        pass

    def eval_outputs_dataloader(self, dataloader, len_dataloader):
        items = self.consume(dataloader)
        self.yielded += items
        n = sum(images.shape[0] for images, _ in items)
        out = self.outputs(n, self.calls)
        self.calls += 1
        return out

    def save_model(self, location) -> None:
        self.save_params(location)

    def load_model(self, location, **kwargs) -> None:
        self.params = self.load_params(location)


def per_image(n: int, _: int, size: int = 256) -> tuple[dict, dict]:
    return {"a": torch.rand(n, size, size), "b": torch.rand(n, 1, size, size)}, {
        "a": torch.rand(n),
        "b": torch.rand(n),
    }


def test_test_output_layout_and_target_resize():
    train, regular, novel = make_loaders(size=8)
    algo = Scripted(per_image)
    algo.enter_dataloaders(train, regular, novel)
    assert algo.len_dataloader_train == 2 and algo.len_dataloader_regular_test == 3
    assert algo.paths_required == {"regular_test": [f"good{i}.png" for i in range(5)],
                                   "novel_test": [f"bad{i}.png" for i in range(4)]}  # fmt: skip
    heatmaps, scores, targets, paths = algo.test()
    # the algorithm only ever sees (image_batch, callback_info_batch)
    assert all(len(item) == 2 and item[0].ndim == 4 for item in algo.yielded)
    assert set(heatmaps) == {"heatmap_set_regular", "heatmap_set_novel"}
    assert set(scores) == {"image_score_set_regular", "image_score_set_novel"}
    for method in ("a", "b"):  # 3-D heatmaps gain a channel dimension
        assert heatmaps["heatmap_set_regular"][method].shape == (5, 1, 256, 256)
        assert heatmaps["heatmap_set_novel"][method].shape == (4, 1, 256, 256)
        assert scores["image_score_set_novel"][method].shape == (4,)
    assert paths == {"paths_regular": [f"good{i}.png" for i in range(5)],
                     "paths_novel": [f"bad{i}.png" for i in range(4)]}  # fmt: skip
    raw = torch.cat([masks for _, masks, _, _ in novel])  # (4, 1, 8, 8)
    assert targets["targets_novel"].shape == (4, 1, 256, 256)
    expected = np.stack([bilinear_align_corners(m[0].numpy(), 256) for m in raw])[:, None]
    np.testing.assert_allclose(targets["targets_novel"].numpy(), expected, atol=1e-6)


def bilinear_align_corners(image: np.ndarray, size: int) -> np.ndarray:
    """Separable linear interpolation with corner pixels aligned (output i samples input i * (n-1)/(size-1)),
    written with np.interp as an independent reference for torch's ``align_corners=True``."""
    rows = np.linspace(0, image.shape[0] - 1, size)
    cols = np.linspace(0, image.shape[1] - 1, size)
    across = np.stack([np.interp(cols, np.arange(image.shape[1]), row) for row in image])  # (h, size)
    return np.stack([np.interp(rows, np.arange(image.shape[0]), col) for col in across.T]).T  # (size, size)


def test_bilinear_reference_by_hand():
    # 2 x 2 -> 3 x 3 with aligned corners: the middle row / column are the means of their neighbours
    out = bilinear_align_corners(np.array([[0.0, 1.0], [2.0, 3.0]]), 3)
    np.testing.assert_allclose(out, [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]])


def test_targets_already_256_are_not_resampled():
    train, regular, novel = make_loaders(size=256, n_regular=2, n_novel=2)
    algo = Scripted(per_image)
    algo.enter_dataloaders(train, regular, novel)
    _, _, targets, _ = algo.test()
    assert torch.equal(targets["targets_novel"], torch.cat([m for _, m, _, _ in novel]))


def test_method_with_wrong_count_is_dropped_with_a_message(caplog):
    def outputs(n: int, split: int) -> tuple[dict, dict]:
        heat, score = per_image(n, split)
        heat["batch_mean"] = torch.rand(max(n - 1, 1), 256, 256)  # one heatmap short
        score["batch_mean"] = torch.rand(1)  # one score for the whole set
        return heat, score

    train, regular, novel = make_loaders()
    algo = Scripted(outputs)
    algo.enter_dataloaders(train, regular, novel)
    with caplog.at_level(logging.WARNING, logger="visionad_multicore.visionad.model_wrapper"):
        heatmaps, scores, _, _ = algo.test()
    assert set(heatmaps["heatmap_set_regular"]) == {"a", "b"} == set(heatmaps["heatmap_set_novel"])
    assert set(scores["image_score_set_regular"]) == {"a", "b"} == set(scores["image_score_set_novel"])
    dropped = [r.getMessage() for r in caplog.records if "'batch_mean'" in r.getMessage()]
    assert len(dropped) == 2  # once for the heatmaps, once for the scores
    assert any("heatmaps" in m and "4 heatmaps for 5 regular test images" in m for m in dropped)
    assert any("image scores" in m and "1 image scores for 5 regular" in m for m in dropped)


def test_method_missing_from_one_split_or_wrong_size_is_dropped(caplog):
    def outputs(n: int, split: int) -> tuple[dict, dict]:
        heat, score = per_image(n, split)
        if split == 1:
            heat["only_regular"] = torch.rand(n, 256, 256)
        else:
            heat["small"] = torch.rand(n, 64, 64)
        heat.setdefault("small", torch.rand(n, 64, 64))
        return heat, score

    train, regular, novel = make_loaders()
    algo = Scripted(outputs)
    algo.enter_dataloaders(train, regular, novel)
    with caplog.at_level(logging.WARNING):
        heatmaps, _, _, _ = algo.test()
    assert set(heatmaps["heatmap_set_novel"]) == {"a", "b"}
    text = caplog.text
    assert "'only_regular'" in text and "no heatmaps for the regular test set" in text
    assert "'small'" in text and "(64, 64), expected (256, 256)" in text and "must be 256 x 256" in text


def test_consuming_part_of_the_test_set_raises():
    def first_batch_only(generator) -> list:
        return [next(iter(generator))]

    train, regular, novel = make_loaders()
    algo = Scripted(per_image, consume=first_batch_only)
    algo.enter_dataloaders(train, regular, novel)
    with pytest.raises(
        OutputCheckError, match="regular_test: the algorithm consumed 2 images but the test set has 5"
    ):
        algo.test()


def test_run_error_test_rejects_different_paths():
    train, regular, novel = make_loaders()
    algo = Scripted(per_image)
    algo.enter_dataloaders(train, regular, novel)
    heatmaps, scores, targets, paths = algo.test()
    paths["paths_novel"] = [p.replace("bad0", "intruder") for p in paths["paths_novel"]]
    with pytest.raises(OutputCheckError, match="novel_test: the paths consumed differ"):
        algo.run_error_test(heatmaps, scores, targets, paths)
    assert issubclass(OutputCheckError, AssertionError)  # VisionAD raises AssertionError here


def test_save_and_load_params(tmp_path):
    algo = Scripted(per_image)
    algo.params = {"k": 3, "name": "x"}
    algo.save_model(tmp_path / "m")
    assert (tmp_path / "m" / "model_params.json").is_file()
    assert not list((tmp_path / "m").glob("*.tmp"))
    assert algo.load_params(tmp_path / "m") == {"k": 3, "name": "x"}
    with pytest.raises(FileNotFoundError, match="model_params.json"):
        algo.load_params(tmp_path / "missing")


def test_hooks_are_abstract():
    class Incomplete(ModelWrapper):
        def train_one_epoch(self) -> None:
            pass

    with pytest.raises(TypeError, match="eval_outputs_dataloader"):
        Incomplete()


def test_random_is_seeded_and_survives_save_load(tmp_path):
    train, regular, novel = make_loaders()
    algo = WrapperRandom(seed=3, methods=["m1", "m2"])
    algo.enter_dataloaders(train, regular, novel)
    algo.train_one_epoch()
    algo.pre_eval_processing()
    first = algo.test()
    assert set(first[0]["heatmap_set_novel"]) == {"m1", "m2"}
    assert not torch.equal(first[1]["image_score_set_novel"]["m1"], first[1]["image_score_set_novel"]["m2"])
    algo.save_model(tmp_path / "model")

    fresh = WrapperRandom(seed=99)  # no training loader attached
    fresh.load_model(tmp_path / "model")
    assert fresh.params == algo.params and fresh.epochs_trained == 1
    fresh.enter_dataloaders(train, regular, novel)
    second = fresh.test()
    for a, b in zip(first[:2], second[:2]):
        for split in a:
            for method in a[split]:
                assert torch.equal(a[split][method], b[split][method])

    other = WrapperRandom(seed=4)
    other.enter_dataloaders(train, regular, novel)
    assert not torch.equal(
        other.test()[1]["image_score_set_regular"]["random"][:1],
        first[1]["image_score_set_regular"]["m1"][:1],
    )


def test_random_rejects_bad_methods():
    with pytest.raises(ValueError, match="methods"):
        WrapperRandom(methods="random")
