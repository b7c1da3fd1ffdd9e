"""Benchmark run: Magnetic-Tile entries of baselines_dev.py for Reverse Distillation, FRE and GANomaly (same
settings; see its docstring).

The committed baselines_dev run was stopped during its first Magnetic-Tile entry (PatchCore with coreset ratio
0.001 would have taken about 50 minutes on the busy machine); this config ran the memory-bank models on
Magnetic-Tile again, PatchCore with ratio 0.0002; this config and baselines_dev_tile_trained2.py (Reverse
Distillation, FRE, GANomaly) the trained ones beside it (three processes, to finish in time):

    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run --config_file benchmark_runs/configs/baselines_dev_tile_trained2.py \
        --run_description baselines_dev_tile_tr2 --results_dir benchmark_runs/results --device cpu --threads 1

benchmarks/run_baselines.sh runs baselines_dev.py whole instead (it already holds the Magnetic-Tile entries).
"""

import baselines_dev

model_list = [
    m
    for m in baselines_dev.model_list
    if m["dataset_list_override"] == baselines_dev.TILE
    and m["algo_class_name"] in ("anomalib_reverse_distillation", "anomalib_fre", "anomalib_ganomaly")
]

dataset_list = baselines_dev.TILE

metrics = ["all"]
