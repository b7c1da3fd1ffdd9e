"""Benchmark run: Patchcore+ predictor 1 (euclidean, p=3, s=1), EfficientNet-Lite0, coreset 10,000, default
patch features (local averaging, equal layer weights) and image score (PatchCore's re-weighted one), on the three
demo classes and the development data (MVTec AD toothbrush, Magnetic-Tile) read in place from ../shared/data.
CPU, offline.

    visionad-multicore demo-data demo_data
    OMP_NUM_THREADS=1 visionad-multicore run --config_file benchmark_runs/configs/patchcore_plus_dev.py \
        --run_description pcplus_dev --results_dir benchmark_runs/results --data_root demo_data --device cpu --threads 1

Coreset 10,000 (not 25,000) so the Magnetic-Tile bank (700 x 32 x 32 = 716,800 patches) is selected in
minutes on 2 CPU cores; toothbrush has 49,152 patches.
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
            "coreset_size": 10_000,
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
        "model_description": "pcplus_lite0_cs10k",
        "model_long_description": "Patchcore+ predictor 1 (euclidean, p=3, s=1), EfficientNet-Lite0, coreset 10000",
        "save_metric_meta_data": False,
        "wandb": False,
    }
]

dataset_list = ["demo_brick", "demo_grass", "demo_gravel", "dev_mvtec_toothbrush", "dev_magnetic_tile"]

metrics = ["all"]
