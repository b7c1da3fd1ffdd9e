"""VisionAD config: the chance-level `random` algorithm on the embedded demo datasets.

Write the demo data first, then run (CPU, about a minute):

    visionad-multicore demo-data demo_data
    visionad-multicore run --config_file algorithm_configs/random_demo.py --data_root demo_data --device cpu

(`--data_root` may be replaced by the environment variable VISIONAD_DEMO_ROOT.) Every metric should sit near
0.5 (AUC) / 0 (PL): anything else means the harness, not the algorithm, is wrong.
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
        "save_model_every_n_epochs": 1,
        "save_heatmaps_n_epochs": 1,
        "evaluate_n_epochs": 1,
        "device": "cpu",
        "input_size": image_size,
        "model_description": "demo",
        "model_long_description": "Seeded uniform random heatmaps and scores: the chance-level sanity check.",
        "save_metric_meta_data": False,
        "wandb": False,
        "seed": 0,
    }
]

dataset_list = ["demo_brick", "demo_grass", "demo_gravel"]

metrics = ["all"]
