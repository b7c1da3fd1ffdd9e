"""anomalib's baselines (algorithms ``anomalib_<model>``) on the 15 MVTec AD classes with their anomalib default
backbones, for a machine with internet and a GPU:

    visionad-multicore run --config_file algorithm_configs/baselines_mvtec.py --data_root /data/mvtec_ad --device cuda:0

``backbone="anomalib_default"`` + ``download_weights=True`` builds each model on the backbone anomalib uses by
default (PatchCore / CFlow / Reverse Distillation: WideResNet-50-2; PaDiM / STFPM / FastFlow / DFKDE: ResNet-18;
DFM / FRE: ResNet-50) and lets timm download its ImageNet weights, as anomalib does. Offline, set
``backbone="efficientnet_lite0"`` (bundled) or a timm name with ``backbone_weights="file.pth"`` instead.

Settings: every model option is anomalib's default (see RECIPES in visionad_multicore/algorithms/anomalib_baselines.py);
the epoch counts below are our choice, in the range the methods' papers train for (memory banks need one). They
have not been run here (no GPU, no MVTec AD, no internet on our machines): check them before quoting a figure.
Images are resized to 256 x 256 (NEAREST, as VisionAD's configs do), no centre crop.
"""

from PIL import Image
from torchvision import transforms

image_size = 256

ONLINE = {"backbone": "anomalib_default", "download_weights": True, "seed": 0}
# name -> (model_params, epochs, training batch size)
MODELS = {
    "anomalib_patchcore": (ONLINE, 1, 32),
    "anomalib_padim": (ONLINE, 1, 32),
    "anomalib_dfm": (ONLINE, 1, 32),
    "anomalib_dfkde": (ONLINE, 1, 32),
    "anomalib_stfpm": (ONLINE, 100, 32),
    "anomalib_fastflow": (ONLINE, 200, 32),
    "anomalib_cflow": (ONLINE, 50, 16),
    "anomalib_reverse_distillation": (ONLINE, 200, 8),
    "anomalib_fre": (ONLINE, 220, 32),
    "anomalib_ganomaly": ({"seed": 0}, 100, 32),
    "anomalib_draem": ({"seed": 0}, 700, 8),
}

model_list = [
    {
        "algo_class_name": name,
        "model_params": dict(params),
        "epochs": epochs,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize((image_size, image_size), interpolation=Image.NEAREST)]
        ),
        "batch_size": batch_size,
        "test_batch_size": 32,
        "save_model_every_n_epochs": epochs,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": epochs,
        "device": "cuda:0",
        "input_size": image_size,
        "model_description": "anomalib_default",
        "model_long_description": f"{name} on anomalib's default backbone and options",
        "save_metric_meta_data": False,
        "wandb": False,
    }
    for name, (params, epochs, batch_size) in MODELS.items()
]

dataset_list = [
    f"mvtec_{c}"
    for c in (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    )
]  # fmt: skip

metrics = ["all"]
