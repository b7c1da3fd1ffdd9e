"""Fuzzing the loaders and the metrics with odd files, masks and maps (hypothesis).

Every case must give a result or a clear error: an exception raised by this package's own code, naming the
file or the argument, never one from deep inside PIL, numpy or torch.
"""

from __future__ import annotations

import io
import re
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from visionad_multicore.visionad.loaders import ImageDataset
from visionad_multicore.visionad.metrics import aupro, image_auroc, pixel_auroc, run_metrics
from visionad_multicore.visionad.preflight import check_dataset

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = (
    "rgb", "gray", "rgba", "la", "16bit", "palette", "palette_transparent", "cmyk_jpeg", "bilevel",
    "truncated", "empty", "text", "ds_store",
)  # fmt: skip
NAMES = ("image", "ünïcødé_画像", "with space", "x.y.z")


# How this package's own error messages begin: the argument or file they are about.
OURS = re.compile(
    r"^(maps|masks|scores|scores_regular|scores_anomalous|maps_anomalous|maps_regular|positives|negatives|labels"
    r"|targets|num_thresholds|fpr_limit): |^cannot read image |^mask |^no images in |^ROC AUC needs both classes"
)


def raised_by_us(err: BaseException) -> bool:
    """True when this package raised ``err`` itself (its frame, its message), not numpy / torch / PIL inside it."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "visionad_multicore" in frames[-1].filename and bool(OURS.search(str(err)))


def encode(kind: str, width: int, height: int, seed: int) -> tuple[str, bytes]:
    """File suffix and bytes of an image of the given kind."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    if kind == "ds_store":
        return ".DS_Store", b"\x00\x00\x00\x01Bud1" + rgb.tobytes()[:20]
    if kind == "text":
        return ".png", b"this is not an image\n"
    if kind == "empty":
        return ".png", b""
    if kind == "cmyk_jpeg":
        Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
        return ".jpg", buf.getvalue()
    image = {
        "rgb": lambda: Image.fromarray(rgb),
        "gray": lambda: Image.fromarray(rgb[..., 0]),
        "rgba": lambda: Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode="RGBA"),
        "la": lambda: Image.fromarray(rgb[..., 0]).convert("LA"),
        "16bit": lambda: Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "palette": lambda: Image.fromarray(rgb).convert("P"),
        "palette_transparent": lambda: Image.fromarray(rgb).convert("P"),
        "bilevel": lambda: Image.fromarray(rgb[..., 0]).convert("1"),
        "truncated": lambda: Image.fromarray(rgb),
    }[kind]()
    options = {"transparency": 0} if kind == "palette_transparent" else {}
    image.save(buf, format="PNG", **options)
    payload = buf.getvalue()
    return ".png", payload[: max(len(payload) // 2, 30)] if kind == "truncated" else payload


@FUZZ
@given(
    kind=st.sampled_from(KINDS),
    name=st.sampled_from(NAMES),
    width=st.integers(1, 24),
    height=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_loader_and_check_on_odd_image_files(
    kind: str, name: str, width: int, height: int, seed: int
) -> None:
    suffix, payload = encode(kind, width, height, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name + suffix if kind != "ds_store" else suffix)
        path.write_bytes(payload)
        try:
            dataset = ImageDataset(folder)
        except ValueError as err:  # nothing indexable (a .DS_Store alone)
            assert kind == "ds_store" and "no images in" in str(err)
        else:
            try:
                image, item_name, info = dataset[0]
            except (OSError, ValueError) as err:
                assert raised_by_us(err) and str(path) in str(err), err
                assert kind in ("truncated", "empty", "text")
            else:
                assert image.shape == (3, height, width) and image.dtype == torch.float32
                assert torch.isfinite(image).all() and item_name == path.name and info == 0
        split = {"folder_path_regular_train": folder, "folder_path_regular_test": folder,
                 "folder_path_novel_test": folder, "pixel_labels": False}  # fmt: skip
        problems, _ = check_dataset("fuzz", split, progress=False)  # never raises
        messages = " ".join(str(p) for p in problems if p.level == "error")
        if kind in ("truncated", "empty", "text"):
            assert "cannot be used" in messages and str(path) in messages


@FUZZ
@given(
    mask_kind=st.sampled_from(("empty", "full", "binary", "non_binary", "rgb", "rgba", "16bit", "bilevel")),
    scale=st.sampled_from(((1, 1), (2, 2), (1, 2), (3, 1))),
    seed=st.integers(0, 2**16),
)
def test_odd_masks_through_loader_and_metrics(mask_kind: str, scale: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 16
    values = {
        "empty": np.zeros((size, size), np.uint8),
        "full": np.full((size, size), 255, np.uint8),
        "binary": (rng.random((size, size)) > 0.7).astype(np.uint8) * 255,
        "non_binary": rng.integers(0, 256, (size, size), dtype=np.uint8),
    }
    base = values.get(mask_kind, values["binary"])
    mask_image = {
        "rgb": lambda: Image.fromarray(np.dstack([base, base * 0, base * 0])),
        "rgba": lambda: Image.fromarray(np.dstack([base] * 3 + [np.full_like(base, 255)]), mode="RGBA"),
        "16bit": lambda: Image.fromarray(base.astype(np.uint16) * 257),
        "bilevel": lambda: Image.fromarray(base).convert("1"),
    }.get(mask_kind, lambda: Image.fromarray(base))()
    mask_image = mask_image.resize((size * scale[1] // scale[0], size), Image.Resampling.NEAREST)
    with tempfile.TemporaryDirectory() as root:
        images, masks = Path(root) / "img", Path(root) / "gt"
        images.mkdir()
        masks.mkdir()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(images / "a.png")
        mask_image.save(masks / "a_mask.png")
        try:
            _, mask, _, _ = ImageDataset(images, mask_folder_path=masks)[0]
        except ValueError as err:
            assert raised_by_us(err) and "a_mask.png" in str(err) and "aspect ratio" in str(err)
            assert scale[0] != scale[1]
            return
        assert mask.shape == (1, size, size) and set(mask.unique().tolist()) <= {0.0, 1.0}
        maps = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
        for compute in (lambda: pixel_auroc(maps, mask[None]), lambda: aupro(maps, mask[None])):
            try:
                value = compute()
            except ValueError as err:  # one class only / no anomalous region: said plainly
                assert raised_by_us(err) and mask_kind in ("empty", "full", "binary", "non_binary", "rgb", "rgba",
                                                            "16bit", "bilevel")  # fmt: skip
                assert mask.min() == mask.max() or "region" in str(err), err
            else:
                assert 0.0 <= value <= 1.0


odd_values = st.sampled_from([np.nan, np.inf, -np.inf])


@FUZZ
@given(
    maps=hnp.arrays(np.float32, (3, 6, 6), elements=st.floats(-2, 2, width=32) | st.sampled_from([0.0, 1.0])),
    masks=hnp.arrays(np.float32, (3, 6, 6), elements=st.sampled_from([0.0, 1.0])),
    scores=hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32) | st.just(0.5)),
    bad_map=st.none() | st.tuples(st.integers(0, 107), odd_values),
    bad_mask=st.none() | st.tuples(st.integers(0, 107), st.sampled_from([0.5, 2.0, -1.0, np.nan])),
    bad_score=st.none() | st.tuples(st.integers(0, 2), odd_values),
)
def test_metrics_on_odd_maps_masks_and_scores(
    maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, bad_map, bad_mask, bad_score
) -> None:
    for array, bad in ((maps, bad_map), (masks, bad_mask), (scores, bad_score)):
        if bad is not None:  # one odd value: NaN, inf, or a non-binary mask value
            array.reshape(-1)[bad[0]] = bad[1]
    for compute in (
        lambda: image_auroc(scores[:1], scores[1:]),
        lambda: pixel_auroc(maps, masks, maps),
        lambda: aupro(maps, masks),
    ):
        try:
            value = compute()
        except (ValueError, TypeError) as err:
            assert raised_by_us(err) and str(err), err
        else:
            assert 0.0 <= value <= 1.0
    heatmap_set = {"heatmap_set_novel": {"m": torch.from_numpy(maps)[:, None]},
                   "heatmap_set_regular": {"m": torch.from_numpy(maps)[:, None]}}  # fmt: skip
    score_set = {"image_score_set_novel": {"m": torch.from_numpy(scores)},
                 "image_score_set_regular": {"m": torch.from_numpy(scores[::-1].copy())}}  # fmt: skip
    out = run_metrics(
        ["all"],
        heatmap_set,
        score_set,
        {"targets_novel": torch.from_numpy(masks)[:, None]},
        {},
        progress=False,
    )  # fmt: skip  -- never raises: a number, a failure, or skipped
    for metric, item in out.items():
        for value in item["metric_results"].values():
            assert (isinstance(value, float) and 0.0 <= value <= 1.0) or value.startswith("failed: "), (
                metric,
                value,
            )
    n_bad_maps = int((~np.isfinite(maps.reshape(3, -1))).any(axis=1).sum()) * 2
    if n_bad_maps:
        assert (
            out["Pixelwise_AUC"]["metric_results"]["m"] == f"failed: non-finite values in {n_bad_maps} maps"
        )


@pytest.mark.parametrize("kind", ["rgba", "16bit", "cmyk_jpeg", "palette_transparent", "la"])
def test_each_odd_kind_gives_three_finite_channels(kind: str, tmp_path: Path) -> None:
    """The cases the fuzzing draws at random, each at least once."""
    suffix, payload = encode(kind, 7, 5, 0)
    (tmp_path / ("x" + suffix)).write_bytes(payload)
    image = ImageDataset(tmp_path)[0][0]
    assert image.shape == (3, 5, 7) and torch.isfinite(image).all()
