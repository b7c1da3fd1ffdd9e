"""Benchmark run: anomalib's SuperSimpleNet with the same CPU-sized budget as baselines_dev.py (whose docstring
explains the settings), added after that sweep had started. Run by benchmarks/run_baselines.sh:

    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run \
        --config_file benchmark_runs/configs/baselines_dev_supersimplenet.py --run_description baselines_dev_ssn \
        --results_dir benchmark_runs/results --data_root demo_data --device cpu --threads 1
"""

from baselines_dev import DEMO, GROUPS, TILE, TOOTHBRUSH, entry

model_list = [
    entry("anomalib_supersimplenet", {"max_train_batches": max_batches}, epochs, datasets)
    for datasets, _ratio, epochs, max_batches in GROUPS
]

dataset_list = DEMO + TOOTHBRUSH + TILE

metrics = ["all"]
