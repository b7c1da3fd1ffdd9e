"""A minimal fake VisionAD checkout for tests (VisionAD is not on PyPI and tests cannot clone it).

``write_fake_visionad(root)`` writes a directory with VisionAD's module layout and entry points:

```
root/
  run.py                       argparse --config_file/--run_description/--device/--wandb; imports the config
                               by module name, loops models x datasets, calls get_algo + train_algo
  algos/model_wrapper.py       ModelWrapper base (enter_dataloaders, test, save_params, load_params)
  algos/algo_class_list.py     get_algo(name): an if-chain ending in ``else: raise NotImplementedError``
  algos/patchcore/algo_class.py  WrapperPatchCore: a tiny deterministic "baseline" (mean-colour distance)
  data/configure_dataset.py    MVTEC_PATH, RESULTS_DIRECTORY, datasets dict, load_dataset(key)
  data/load_image_data.py      create_dataloaders(...) and make_unnormalise(...) with VisionAD's item tuples
  wrapper/wrapper.py           train_algo(...): records its call, runs the hooks, writes metrics.pk/data.json
```

Like VisionAD, the folders have no ``__init__.py`` (namespace packages) and everything is imported relative
to the checkout root (``sys.path`` / working directory). Every ``train_algo`` call appends one JSON line to
``root / CALLS_FILE`` so tests (including subprocess ones) can check what VisionAD's loop was handed.
The module texts are written for these tests; they only mimic VisionAD's interfaces.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from pathlib import Path

CALLS_FILE = "fake_visionad_calls.jsonl"

_MODEL_WRAPPER = '''
"""Fake VisionAD ModelWrapper (interfaces only)."""
import json
import os

import torch


class ModelWrapper:
    def __init__(self):
        pass

    def enter_dataloaders(self, dataloader_train, dataloader_regular_test, dataloader_novel_test):
        self.dataloader_train = dataloader_train
        self.dataloader_regular_test = dataloader_regular_test
        self.dataloader_novel_test = dataloader_novel_test
        self.len_dataloader_train = len(dataloader_train)
        self.len_dataloader_regular_test = len(dataloader_regular_test)
        self.len_dataloader_novel_test = len(dataloader_novel_test)
        regular = [p for _, paths, _ in dataloader_regular_test for p in paths]
        novel = [p for _, _, paths, _ in dataloader_novel_test for p in paths]
        self.paths_required = {"regular_test": regular, "novel_test": novel}

    def _images_only(self, dataloader, holder, regular):
        holder["paths"], holder["targets"] = [], []
        for items in dataloader:
            if regular:
                images, paths, info = items
            else:
                images, targets, paths, info = items
                holder["targets"].append(targets)
            holder["paths"] += list(paths)
            yield images, info

    def test(self):
        reg, nov = {}, {}
        h_reg, s_reg = self.eval_outputs_dataloader(
            self._images_only(self.dataloader_regular_test, reg, True), self.len_dataloader_regular_test)
        h_nov, s_nov = self.eval_outputs_dataloader(
            self._images_only(self.dataloader_novel_test, nov, False), self.len_dataloader_novel_test)
        for group in (h_reg, h_nov):
            for key, value in group.items():
                if value.ndim == 3:
                    group[key] = value[:, None]
        targets = torch.cat(nov["targets"])
        if targets.shape[-2:] != (256, 256):
            targets = torch.nn.functional.interpolate(targets, size=256, mode="bilinear", align_corners=True)
        return (
            {"heatmap_set_regular": h_reg, "heatmap_set_novel": h_nov},
            {"image_score_set_regular": s_reg, "image_score_set_novel": s_nov},
            {"targets_novel": targets},
            {"paths_regular": reg["paths"], "paths_novel": nov["paths"]},
        )

    def save_params(self, location):
        os.makedirs(location, exist_ok=True)
        with open(os.path.join(location, "model_params.json"), "w") as f:
            json.dump(self.params, f)

    def load_params(self, location):
        with open(os.path.join(location, "model_params.json")) as f:
            return json.load(f)

    def pre_eval_processing(self):
        pass

    def eval_outputs_dataloader(self, dataloader, len_dataloader):
        raise NotImplementedError

    def train_one_epoch(self):
        raise NotImplementedError

    def save_model(self, location):
        raise NotImplementedError

    def load_model(self, location, **kwargs):
        raise NotImplementedError
'''

_ALGO_CLASS_LIST = """
def get_algo(algo_name):
    if algo_name.lower() == "patchcore":
        from algos.patchcore.algo_class import WrapperPatchCore
        return WrapperPatchCore
    if algo_name.lower() == "fastflow2d":
        from algos.fastflow2d.algo_class import WrapperFastFlow2d
        return WrapperFastFlow2d
    else:
        raise NotImplementedError("Algorithm not found")
"""

_FAKE_PATCHCORE = '''
"""A tiny deterministic stand-in for a VisionAD baseline: distance of each pixel to the mean train colour."""
import os

import torch

from algos.model_wrapper import ModelWrapper


class WrapperPatchCore(ModelWrapper):
    def __init__(self, device="cpu", wandb=False, **params):
        super().__init__()
        self.params = dict(params)
        self.device = device
        self.mean_colour = None

    def train_one_epoch(self):
        total, count = 0, 0
        for images, _, _ in self.dataloader_train:
            total = total + images.sum(dim=(0, 2, 3))
            count += images.shape[0] * images.shape[2] * images.shape[3]
        self.mean_colour = (total / count)[None, :, None, None]

    def pre_eval_processing(self):
        pass

    def eval_outputs_dataloader(self, dataloader, len_dataloader):
        maps = []
        for images, _ in dataloader:
            dist = (images - self.mean_colour).pow(2).sum(1)
            maps.append(torch.nn.functional.interpolate(dist[:, None], size=256, mode="bilinear")[:, 0])
        heatmaps = torch.cat(maps)
        return {"distance": heatmaps}, {"distance": heatmaps.flatten(1).amax(1)}

    def save_model(self, location):
        self.save_params(location)
        torch.save(self.mean_colour, os.path.join(location, "mean.pt"))

    def load_model(self, location, **kwargs):
        self.params = self.load_params(location)
        self.mean_colour = torch.load(os.path.join(location, "mean.pt"))
'''

_CONFIGURE_DATASET = '''
"""Fake VisionAD dataset registry. Edit MVTEC_PATH / RESULTS_DIRECTORY as a user would."""
import os
import shutil

MVTEC_PATH = {mvtec_path!r}
RESULTS_DIRECTORY = {results_directory!r}
MVTEC_CLASSES = {classes!r}

datasets = {{}}


def _grouped(class_dir):
    """Flatten test/<defect>/x.png and ground_truth/<defect>/x_mask.png into *_grouped folders."""
    images = os.path.join(class_dir, "anomaly_test_grouped")
    masks = os.path.join(class_dir, "ground_truth_grouped")
    if not os.path.isdir(images):
        os.makedirs(images)
        os.makedirs(masks)
        for defect in sorted(os.listdir(os.path.join(class_dir, "test"))):
            if defect == "good":
                continue
            for name in sorted(os.listdir(os.path.join(class_dir, "test", defect))):
                stem = os.path.splitext(name)[0]
                shutil.copy(os.path.join(class_dir, "test", defect, name), os.path.join(images, defect + "_" + name))
                shutil.copy(os.path.join(class_dir, "ground_truth", defect, stem + "_mask.png"),
                            os.path.join(masks, defect + "_" + stem + "_mask.png"))
    return images, masks


for name in MVTEC_CLASSES:
    class_dir = os.path.join(MVTEC_PATH, name)
    if os.path.isdir(class_dir):
        novel, masks = _grouped(class_dir)
    else:
        novel, masks = os.path.join(class_dir, "anomaly_test_grouped"), os.path.join(class_dir, "ground_truth_grouped")
    datasets["mvtec_" + name] = {{
        "folder_path_regular_train": os.path.join(class_dir, "train", "good"),
        "folder_path_regular_test": os.path.join(class_dir, "test", "good"),
        "folder_path_novel_test": novel,
        "folder_path_novel_masks": masks,
        "regular_train_start": None, "regular_train_end": None,
        "regular_test_start": None, "regular_test_end": None,
        "novel_test_start": None, "novel_test_end": None,
        "mean": {mean!r},
        "std": {std!r},
    }}


def load_dataset(key):
    return datasets[key]
'''

_LOAD_IMAGE_DATA = '''
"""Fake VisionAD loaders: flat folders, VisionAD item tuples, file names as paths."""
import os

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms


class ImageDataset(Dataset):
    def __init__(self, folder, start, end, skip, pre_pro, identical, training, mask_folder=None):
        self.folder = folder
        self.image_names = sorted(os.listdir(folder))[slice(start, end)][::skip]
        # VisionAD's attribute name for the normalisation; like VisionAD, no mean / std attributes
        self.pp_transforms, self.identical, self.training = pre_pro, identical, training
        self.mask_folder = mask_folder
        self.pre_normalisation_transform = None

    def __len__(self):
        return len(self.image_names)

    def __getitem__(self, idx):
        name = self.image_names[idx]
        image = Image.open(os.path.join(self.folder, name)).convert("RGB")
        if self.pre_normalisation_transform:
            image, info = self.pre_normalisation_transform(image)
        else:
            image, info = transforms.ToTensor()(image), 0
        image = self.pp_transforms(image)
        if self.identical:
            image = self.identical(image)
        if self.mask_folder is None:
            if self.training:
                image = self.training(image)
            return image, name, info
        stem = os.path.splitext(name)[0]
        mask = transforms.ToTensor()(Image.open(os.path.join(self.mask_folder, stem + "_mask.png")).convert("L"))
        mask = (mask > 0).float()
        mask = transforms.Resize(image.shape[-2:], antialias=True)(mask)
        return image, mask, name, info


def create_dataloaders(folder_path_regular_train, folder_path_regular_test, folder_path_novel_test,
                       pre_pro_transforms, training_transformations, identical_transforms, batch_size,
                       regular_train_start, regular_train_end, regular_test_start, regular_test_end,
                       novel_test_start, novel_test_end, shuffle, unnormalise, skip_train_regular=1,
                       skip_test_regular=1, skip_test_novel=1, **kwargs):
    test_batch_size = kwargs.get("test_batch_size", batch_size)
    train = ImageDataset(folder_path_regular_train, regular_train_start, regular_train_end, skip_train_regular,
                         pre_pro_transforms, identical_transforms, training_transformations)
    regular = ImageDataset(folder_path_regular_test, regular_test_start, regular_test_end, skip_test_regular,
                           pre_pro_transforms, identical_transforms, None)
    novel = ImageDataset(folder_path_novel_test, novel_test_start, novel_test_end, skip_test_novel,
                         pre_pro_transforms, identical_transforms, None, kwargs["folder_path_novel_masks"])
    return (DataLoader(train, batch_size, shuffle), DataLoader(regular, test_batch_size, shuffle),
            DataLoader(novel, test_batch_size, shuffle))


def make_unnormalise(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    return transforms.Normalize([-m / s for m, s in zip(mean, std)], [1 / s for s in std])
'''

_WRAPPER = '''
"""Fake VisionAD train loop: records the call, runs the algorithm hooks, writes metrics.pk and data.json."""
import json
import os
import pickle
import time

import numpy as np

from data.configure_dataset import RESULTS_DIRECTORY, load_dataset
from data.load_image_data import create_dataloaders, make_unnormalise

CALLS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), {calls_file!r})


def _auc(regular, novel):
    regular, novel = np.asarray(regular, dtype=float), np.asarray(novel, dtype=float)
    wins = (novel[:, None] > regular[None, :]).mean() + 0.5 * (novel[:, None] == regular[None, :]).mean()
    return float(max(wins, 1 - wins))


def train_algo(algo_class, dataset_key, metrics, run_time, model_dataset_path, run_description, model_arguments):
    record = {{
        "algo_class": type(algo_class).__module__ + "." + type(algo_class).__name__,
        "dataset_key": dataset_key,
        "metrics": list(metrics),
        "run_time": run_time,
        "model_dataset_path": model_dataset_path,
        "run_description": run_description,
        "results_directory": RESULTS_DIRECTORY,
        "cwd": os.getcwd(),
        "model_arguments": {{k: v for k, v in model_arguments.items()
                             if isinstance(v, (str, int, float, bool, list, dict, type(None)))}},
        "pre_pro_transforms": repr(model_arguments.get("pre_pro_transforms")),
        "hooks": [],
    }}
    dataset = load_dataset(dataset_key)
    loaders = create_dataloaders(
        pre_pro_transforms=model_arguments["pre_pro_transforms"],
        training_transformations=model_arguments["training_transformations"],
        identical_transforms=model_arguments["identical_transforms"],
        batch_size=model_arguments["batch_size"], shuffle=True,
        device=model_arguments["model_params"]["device"],
        unnormalise=make_unnormalise(mean=dataset["mean"], std=dataset["std"]),
        test_batch_size=model_arguments["test_batch_size"], **dataset)
    algo_class.enter_dataloaders(*loaders)
    record["hooks"].append("enter_dataloaders")
    total_train_time = 0.0
    for epoch in range(model_arguments["epochs"]):
        start = time.time()
        algo_class.train_one_epoch()
        total_train_time += time.time() - start
        record["hooks"].append("train_one_epoch")
        if (epoch + 1) < model_arguments["epochs"]:
            continue
        algo_class.pre_eval_processing()
        record["hooks"].append("pre_eval_processing")
        heatmap_set, image_score_set, targets_set, paths_set = algo_class.test()
        record["hooks"].append("test")
        results = {{"Imagewise_AUC": {{"metric_results": {{
            method: _auc(image_score_set["image_score_set_regular"][method],
                         image_score_set["image_score_set_novel"][method])
            for method in image_score_set["image_score_set_regular"]}}}}}}
        epoch_path = os.path.join(model_dataset_path, str(epoch))
        os.makedirs(epoch_path, exist_ok=True)
        with open(os.path.join(epoch_path, "metrics.pk"), "wb") as f:
            pickle.dump(results, f)
        data = {{"time": run_time, "run_description": run_description, "epoch": epoch,
                 "model": model_arguments["algo_class_name"], "train_time": total_train_time,
                 "dataset": dataset_key, "metrics": {{k: v["metric_results"] for k, v in results.items()}},
                 "batch_size": model_arguments["batch_size"]}}
        with open(os.path.join(epoch_path, "data.json"), "w") as f:
            json.dump(data, f)
        record["methods"] = sorted(results["Imagewise_AUC"]["metric_results"])
        record["n_paths"] = [len(paths_set["paths_regular"]), len(paths_set["paths_novel"])]
    with open(CALLS_FILE, "a") as f:
        f.write(json.dumps(record) + "\\n")
'''

_RUN = '''
"""Fake VisionAD run.py: same arguments and loop shape as VisionAD's."""
import argparse
import importlib
import os
import sys
import traceback
from datetime import datetime

sys.path.append(os.getcwd())

from torchvision import transforms

from algos.algo_class_list import get_algo
from data.configure_dataset import RESULTS_DIRECTORY, load_dataset
from wrapper.wrapper import train_algo

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config_file")
    parser.add_argument("--run_description", default="")
    parser.add_argument("--device", type=str, default=None)
    parser.add_argument("--wandb", type=str, default="not entered")
    args = parser.parse_args()
    config = importlib.import_module(".".join(args.config_file.split(os.sep))[:-3])
    run_time = datetime.now().strftime("%Y_%m_%d_%H_%M_%S")
    failed = 0
    for model_arguments in config.model_list:
        model_arguments.setdefault("model_description", "")
        model_arguments.setdefault("model_long_description", "")
        model_path = os.path.join(RESULTS_DIRECTORY, run_time + "_" + args.run_description[:20].replace(" ", "_"),
                                  model_arguments["algo_class_name"] + "_" + model_arguments["model_description"])
        for dataset_key in config.dataset_list:
            try:
                dataset = load_dataset(dataset_key)
                if args.device:
                    model_arguments["device"] = str(args.device)
                model_arguments["model_params"]["device"] = model_arguments["device"]
                if args.wandb != "not entered":
                    model_arguments["wandb"] = bool(int(args.wandb))
                model_arguments["model_params"]["wandb"] = model_arguments.get("wandb", False)
                algo_class = get_algo(model_arguments["algo_class_name"].lower())(**model_arguments["model_params"])
                model_arguments["pre_pro_transforms"] = transforms.Compose(
                    [transforms.Normalize(mean=dataset["mean"], std=dataset["std"])])
                train_algo(algo_class, dataset_key, config.metrics, run_time=run_time,
                           model_dataset_path=os.path.join(model_path, dataset_key),
                           run_description=args.run_description, model_arguments=model_arguments)
            except Exception:
                failed += 1
                print(traceback.format_exc())
    sys.exit(1 if failed else 0)
'''


def write_fake_visionad(
    root: Path,
    mvtec_path: Path | None = None,
    results_directory: Path | None = None,
    mvtec_classes: Mapping[str, object] | list[str] | None = None,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
) -> Path:
    """Write a minimal fake VisionAD checkout under ``root`` and return ``root``.

    Args:
        root: directory to create (parents too); existing files are overwritten.
        mvtec_path: the ``MVTEC_PATH`` a user would set in ``data/configure_dataset.py``: a folder holding
            MVTec-layout classes. Its classes get ``*_grouped`` folders written into them on import, like
            VisionAD's, so point it at a copy. Default ``root / "mvtec"`` (may not exist).
        results_directory: the ``RESULTS_DIRECTORY`` to write; default ``root / "results"``.
        mvtec_classes: class folder names under ``mvtec_path`` registered as ``mvtec_<name>``;
            default VisionAD's 15 MVTec classes.
        mean, std: the normalisation statistics of every dataset (VisionAD's own entries use ImageNet's).

    Returns:
        ``root``; ``root / CALLS_FILE`` receives one JSON line per ``train_algo`` call.
    """
    root = Path(root)
    classes = list(mvtec_classes) if mvtec_classes is not None else [
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
        "tile", "toothbrush", "transistor", "wood", "zipper",
    ]  # fmt: skip
    files = {
        "run.py": _RUN,
        "algos/model_wrapper.py": _MODEL_WRAPPER,
        "algos/algo_class_list.py": _ALGO_CLASS_LIST,
        "algos/patchcore/algo_class.py": _FAKE_PATCHCORE,
        "data/configure_dataset.py": _CONFIGURE_DATASET.format(
            mvtec_path=str(mvtec_path if mvtec_path is not None else root / "mvtec"),
            results_directory=str(results_directory if results_directory is not None else root / "results"),
            classes=classes,
            mean=list(mean),
            std=list(std),
        ),
        "data/load_image_data.py": _LOAD_IMAGE_DATA,
        "wrapper/wrapper.py": _WRAPPER.format(calls_file=CALLS_FILE),
        "requirements.txt": "numpy\ntorch\ntorchvision\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def read_calls(root: Path) -> list[dict]:
    """The ``train_algo`` calls recorded by the fake checkout at ``root``, oldest first."""
    path = Path(root) / CALLS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_CONFIG_TEMPLATE = '''
"""VisionAD config written by tests.fake_visionad.write_visionad_config."""
from PIL import Image
from torchvision import transforms

model_list = []
for overrides, drop in {models!r}:
    model = {{
        "algo_class_name": "random",
        "model_params": {{}},
        "epochs": 1,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize(({size}, {size}), interpolation=Image.NEAREST)]
        ),
        "batch_size": 4,
        "test_batch_size": 4,
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": 1,
        "device": "cpu",
        "input_size": {size},
        "model_description": "test",
        "model_long_description": "written by a test",
        "save_metric_meta_data": False,
        "wandb": False,
    }}
    model.update(overrides)
    for key in drop:
        del model[key]
    model_list.append(model)

dataset_list = {dataset_list!r}
metrics = {metrics!r}
'''


def write_visionad_config(
    path: Path,
    models: list[dict] | None = None,
    dataset_list: list[str] | None = None,
    metrics: list[str] | None = None,
    drop: Mapping[int, list[str]] | None = None,
    size: int = 256,
) -> Path:
    """Write a VisionAD config file (``random`` on CPU, resized to ``size`` with NEAREST) and return its path.

    Args:
        path: the .py file to write.
        models: one dict of overrides per model (plain Python literals), applied to the defaults above.
        dataset_list: the config's ``dataset_list``.
        metrics: the config's ``metrics``.
        drop: model index -> keys to delete from that model dict (to test missing keys).
        size: ``identical_transforms`` size.
    """
    models = models if models is not None else [{}]
    pairs = [(m, list((drop or {}).get(i, []))) for i, m in enumerate(models)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(_CONFIG_TEMPLATE).format(
            models=pairs, dataset_list=list(dataset_list or []), metrics=list(metrics or ["all"]), size=size
        )
    )
    return path
