"""Benchmark run: MultiCore MC2 and MC4 on the development data (MVTec AD toothbrush, Magnetic-Tile), offline, CPU.

    OMP_NUM_THREADS=1 visionad-multicore run --config_file benchmark_runs/configs/multicore_dev.py \
        --run_description multicore_dev --results_dir benchmark_runs/results --device cpu

The settings of algorithm_configs/multicore_dev.py (CPU-sized, see its docstring), for both presets.
Every evaluation reports `multicore`, `ensemble_mean` and each member side by side.
"""

import copy

from PIL import Image
from torchvision import transforms

image_size = 256
EPOCHS = 20

model_list = [
    {
        "algo_class_name": "multicore",
        "model_params": {
            "preset": "mc2",
            "backbone": "efficientnet_lite0",
            "coreset_size": 1000,
            "feature_dim": 256,
            "k": 1,
            "bank_share": 0.8,
            "synthetic_size": 96,
            "ssa": {},
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "momentum": 0.9,
            "grad_clip": 1.0,
            "hfm_batch_size": 4,
            "cldice_weight": 0.25,
            "unet_depth": 3,
            "unet_width": 16,
            "work_size": 64,
            "validation_fraction": 0.2,
            "seed": 0,
        },
        "epochs": EPOCHS,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize((image_size, image_size), interpolation=Image.NEAREST)]
        ),
        "batch_size": 8,
        "test_batch_size": 8,
        "save_model_every_n_epochs": EPOCHS,
        "save_heatmaps_n_epochs": EPOCHS,
        "evaluate_n_epochs": EPOCHS,
        "device": "cpu",
        "input_size": image_size,
        "model_description": "multicore_mc2_dev",
        "model_long_description": "MultiCore MC2, EfficientNet-Lite0, CPU-sized settings (see the config's docstring)",
        "save_metric_meta_data": False,
        "wandb": False,
    }
]

_mc4 = copy.deepcopy(model_list[0])
_mc4["model_params"]["preset"] = "mc4"
_mc4["model_description"] = "multicore_mc4_dev"
_mc4["model_long_description"] = _mc4["model_long_description"].replace("MC2", "MC4")
model_list.append(_mc4)

dataset_list = ["dev_mvtec_toothbrush", "dev_magnetic_tile"]

metrics = ["all"]
