#!/usr/bin/env bash
# anomalib's baselines (offline, EfficientNet-Lite0, CPU-sized: benchmark_runs/configs/baselines_dev*.py) on the
# three demo classes and both development datasets, then the leaderboard over everything in benchmark_runs/results.
# One thread, niced: about an hour on a busy 2-core machine. Needs the [baselines] extra.
#
#   bash benchmarks/run_baselines.sh            # run + leaderboard
#   bash benchmarks/run_baselines.sh --leaderboard-only
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmark_runs
DEMO=scratch/demo_data
if [[ "${1:-}" != "--leaderboard-only" ]]; then
    [[ -d $DEMO/demo_brick ]] || visionad-multicore demo-data $DEMO
    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run --config_file $R/configs/baselines_dev.py \
        --run_description baselines_dev --results_dir $R/results --data_root $DEMO --device cpu --threads 1
    OMP_NUM_THREADS=1 nice -n 10 visionad-multicore run --config_file $R/configs/baselines_dev_supersimplenet.py \
        --run_description baselines_dev_ssn --results_dir $R/results --data_root $DEMO --device cpu --threads 1
fi
visionad-multicore leaderboard $R/results --data_root $DEMO --published --out $R/leaderboard.md \
    --plot $R/leaderboard.png --export $R/submission.json
visionad-multicore leaderboard $R/results --data_root $DEMO --format csv --out $R/leaderboard.csv
visionad-multicore leaderboard $R/results --data_root $DEMO --format json --out $R/leaderboard.json \
    --export $R/submission.csv
