"""Benchmark run: the Magnetic-Tile part of baselines_dev.py (same entries, same settings; see its docstring).

The committed baselines_dev run was stopped during its first Magnetic-Tile entry (PatchCore with coreset ratio
0.001 would have taken about 50 minutes on the busy machine); this config ran that part again with ratio 0.0002:

    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run --config_file benchmark_runs/configs/baselines_dev_tile.py \
        --run_description baselines_dev_tile --results_dir benchmark_runs/results --device cpu --threads 1

benchmarks/run_baselines.sh runs baselines_dev.py whole instead (it already holds the Magnetic-Tile entries).
"""

import baselines_dev

model_list = [m for m in baselines_dev.model_list if m["dataset_list_override"] == baselines_dev.TILE]

dataset_list = baselines_dev.TILE

metrics = ["all"]
