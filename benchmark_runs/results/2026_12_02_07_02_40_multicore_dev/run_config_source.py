"""Benchmark run: MultiCore MC2 with the settings of algorithm_configs/multicore_dev.py (read from it, so the two
cannot drift apart) on MVTec AD toothbrush and Magnetic-Tile, read in place from ../shared/data. CPU, offline.

    OMP_NUM_THREADS=1 visionad-multicore run --config_file benchmark_runs/configs/multicore_dev.py \\
        --run_description multicore_dev --results_dir benchmark_runs/results --device cpu --threads 1

The demo classes' MultiCore rows come from the README's demo command (algorithm_configs/multicore_demo.py),
run with --results_dir benchmark_runs/results --run_description multicore_demo.
"""

import runpy
from pathlib import Path

_base = runpy.run_path(str(Path(__file__).resolve().parents[2] / "algorithm_configs" / "multicore_dev.py"))

model_list = [model for model in _base["model_list"] if model["model_params"]["preset"] == "mc2"]

dataset_list = ["dev_mvtec_toothbrush", "dev_magnetic_tile"]

metrics = ["all"]
