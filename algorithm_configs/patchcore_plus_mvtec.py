"""Patchcore+ predictor 1 of the paper (euclidean, patch size 3, stride 1) on the 15 MVTec AD classes, with
the paper's backbone and memory bank: WRN50-2 layer2 + layer3 at 256 px, fixed coreset of 25,000 patches.

Run: ``visionad-multicore run --config_file algorithm_configs/patchcore_plus_mvtec.py --run_description pc1``
Needs the torchvision WRN50-2 ImageNet weights (downloaded to $TORCH_HOME/hub/checkpoints on first use when
online). Methods reported: ``patchcore_plus`` (heatmap maximum) and ``patchcore_plus_reweighted``.
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
            "backbone": "wideresnet50",
            "feature_dim": 1024,
            "projection_dim": 128,
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
        "save_heatmaps_n_epochs": 1,
        "evaluate_n_epochs": 1,
        "device": "cuda:0",
        "input_size": image_size,
        "model_description": "pcplus_p3_s1_euc",
        "model_long_description": "Patchcore+ predictor 1 (euclidean, p=3, s=1), WRN50 layer2+3, coreset 25000",
        "save_metric_meta_data": False,
        "wandb": False,
    }
]

dataset_list = [
    "mvtec_bottle",
    "mvtec_cable",
    "mvtec_capsule",
    "mvtec_carpet",
    "mvtec_grid",
    "mvtec_hazelnut",
    "mvtec_leather",
    "mvtec_metal_nut",
    "mvtec_pill",
    "mvtec_screw",
    "mvtec_tile",
    "mvtec_toothbrush",
    "mvtec_transistor",
    "mvtec_wood",
    "mvtec_zipper",
]

metrics = ["all"]
