"""VisionAD config: the chance-level `random` algorithm on the development datasets (read in place).

    visionad-multicore run --config_file algorithm_configs/random_dev.py --device cpu

The keys `dev_mvtec_toothbrush` and `dev_magnetic_tile` resolve to <repo>/../shared/data (or the folder in
VISIONAD_MULTICORE_SHARED_DATA); see algorithm_configs/datasets.yaml.
"""

from PIL import Image
from torchvision import transforms

image_size = 256

model_list = [
    {
        "algo_class_name": "random",
        "model_params": {"seed": 0, "methods": ["random"]},
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
        "model_description": "dev",
        "model_long_description": "Seeded uniform random heatmaps and scores on the development datasets.",
        "save_metric_meta_data": False,
        "wandb": False,
        "seed": 0,
    }
]

dataset_list = ["dev_mvtec_toothbrush", "dev_magnetic_tile"]

metrics = ["all"]
