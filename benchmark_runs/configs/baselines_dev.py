"""Benchmark run: anomalib's baselines (offline, EfficientNet-Lite0) on the three demo classes and both development
datasets, CPU-sized. Run by benchmarks/run_baselines.sh (which also builds the leaderboard):

    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run --config_file benchmark_runs/configs/baselines_dev.py \
        --run_description baselines_dev --results_dir benchmark_runs/results --data_root demo_data --device cpu \
        --threads 1

CPU-sized settings (chosen for a shared, busy 2-core machine), NOT anomalib's:
- trained models see about 96 training images per dataset, whatever its size: 4 epochs on the demo classes
  (24 training images), 2 on toothbrush (48), 1 epoch of 12 batches of 8 (max_train_batches) on Magnetic-Tile
  (700). anomalib trains for up to hundreds of epochs (STFPM 100, FastFlow 500, CFlow 50, RD 200): these trained
  models are far from converged, and their figures say how far a few CPU minutes take them, nothing more;
- GANomaly runs at 64 x 64 (image scores only); at 256 px one epoch of 24 images costs minutes on this CPU;
- PatchCore's coreset ratio is 0.01 (anomalib: 0.1), 0.0002 (143 points) on Magnetic-Tile: anomalib's greedy
  k-center makes one pass over all 716,800 patches per selected point, about 4 s per point on the busy machine;
- DRAEM is left out: its two UNets take seconds per 64 px image on this CPU, and anomalib trains it for 700 epochs.
Every other option is anomalib's default (learning rates, flow steps, PCA levels, ...). Memory-bank models
(PatchCore, PaDiM, DFM, DFKDE) see every training image. Entries are ordered dataset by dataset, so a run cut
short leaves whole datasets.
"""

from PIL import Image
from torchvision import transforms

image_size = 256
DEMO = ["demo_brick", "demo_grass", "demo_gravel"]
TOOTHBRUSH = ["dev_mvtec_toothbrush"]
TILE = ["dev_magnetic_tile"]


def entry(algo, params, epochs, datasets, batch_size=8):
    return {
        "algo_class_name": algo,
        "model_params": {"backbone": "efficientnet_lite0", "seed": 0, **params},
        "epochs": epochs,
        "training_transformations": transforms.Compose([]),
        "training_transformation_string": "transforms.Compose([])",
        "identical_transforms": transforms.Compose(
            [transforms.Resize((image_size, image_size), interpolation=Image.NEAREST)]
        ),
        "batch_size": batch_size,
        "test_batch_size": 8,
        "save_model_every_n_epochs": None,
        "save_heatmaps_n_epochs": None,
        "evaluate_n_epochs": epochs,
        "device": "cpu",
        "input_size": image_size,
        "model_description": "lite0_cpu",
        "model_long_description": f"anomalib {algo[9:]}, EfficientNet-Lite0, CPU-sized (see the config's docstring)",
        "save_metric_meta_data": False,
        "wandb": False,
        "dataset_list_override": datasets,
    }


MEMORY = ["anomalib_padim", "anomalib_dfm", "anomalib_dfkde"]
TRAINED = [
    ("anomalib_stfpm", {}),
    ("anomalib_fastflow", {}),
    ("anomalib_cflow", {}),
    ("anomalib_reverse_distillation", {}),
    ("anomalib_fre", {}),
    ("anomalib_ganomaly", {"image_size": 64}),
]
# dataset group -> (PatchCore coreset ratio, epochs of trained models, max_train_batches)
GROUPS = [
    (DEMO, 0.01, 4, None),
    (TOOTHBRUSH, 0.01, 2, None),
    (TILE, 0.0002, 1, 12),
]

model_list = []
for datasets, ratio, epochs, max_batches in GROUPS:
    model_list.append(
        entry("anomalib_patchcore", {"options": {"coreset_sampling_ratio": ratio}}, 1, datasets)
    )
    model_list += [entry(algo, {}, 1, datasets) for algo in MEMORY]
    model_list += [
        entry(algo, {**params, "max_train_batches": max_batches}, epochs, datasets)
        for algo, params in TRAINED
    ]

dataset_list = DEMO + TOOTHBRUSH + TILE

metrics = ["all"]
