#!/usr/bin/env bash
# Wheels that bench_gpu.py needs on the device machine beyond its image (torch, torchvision, timm, scipy,
# scikit-image, pyyaml, tqdm are there): polygenerator and pytorch-msssim, both pure Python. Run from the
# repository root; .whl/ must be git-ignored (e.g. `echo /.whl/ >> .git/info/exclude`) and carried.
set -euo pipefail
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
    polygenerator==0.2.0 pytorch-msssim==1.0.0
