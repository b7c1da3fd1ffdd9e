"""anomalib's own PatchCore on tensors written by ``bench_vs_anomalib.py``; run with a Python that has anomalib.

Not part of the package and never imported by it: ``bench_vs_anomalib.py`` runs this file in a separate
interpreter (``--anomalib_python``), so anomalib stays out of our dependencies. Input: a ``torch.save`` file
with ``train`` (N, 3, H, W), ``test`` (M, 3, H, W) normalised images and ``backbone_state`` (the state dict of
timm's classifier model carrying the weights to use). Output: a ``torch.save`` file with ``anomaly_maps``
(M, H, W), ``pred_scores`` (M,), ``timings`` and the anomalib / timm versions.

    python benchmarks/anomalib_patchcore_side.py IN.pt OUT.pt --backbone tf_efficientnet_lite0 \
        --layers blocks.2 blocks.4 --coreset_ratio 0.01 --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs")
    parser.add_argument("output")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.4"])
    parser.add_argument("--coreset_ratio", type=float, default=0.01)
    parser.add_argument("--num_neighbors", type=int, default=9)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import anomalib
    import timm
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # anomalib's coreset projection draws its column indices with scikit-learn's sample_without_replacement
    # (random_state=None: NumPy's global generator); unseeded, its results change from run to run
    np.random.seed(args.seed)  # noqa: NPY002 (the global generator is what scikit-learn draws from)
    random.seed(args.seed)
    data = torch.load(args.inputs, weights_only=True)
    model = PatchcoreModel(
        layers=list(args.layers), backbone=args.backbone, pre_trained=False, num_neighbors=args.num_neighbors
    )
    # the features_only model holds a subset of the classifier's tensors under the same names
    missing, _ = model.feature_extractor.feature_extractor.load_state_dict(
        data["backbone_state"], strict=False
    )
    if missing:
        raise SystemExit(
            f"backbone weights lack {len(missing)} tensors of the feature extractor: {missing[:3]}"
        )

    start = time.perf_counter()
    model.train()
    with torch.no_grad():
        for s in range(0, len(data["train"]), args.batch_size):
            model(data["train"][s : s + args.batch_size])
    features_s = time.perf_counter() - start
    model.subsample_embedding(args.coreset_ratio)
    fit_s = time.perf_counter() - start

    start = time.perf_counter()
    model.eval()
    maps, scores = [], []
    with torch.no_grad():
        for s in range(0, len(data["test"]), args.batch_size):
            out = model(data["test"][s : s + args.batch_size])
            maps.append(out.anomaly_map.reshape(out.anomaly_map.shape[0], *out.anomaly_map.shape[-2:]))
            scores.append(out.pred_score.reshape(-1))
    inference_s = time.perf_counter() - start
    torch.save(
        {
            "anomaly_maps": torch.cat(maps).float(),
            "pred_scores": torch.cat(scores).float(),
            "timings": {
                "features_s": features_s,
                "coreset_s": fit_s - features_s,
                "fit_s": fit_s,
                "inference_s": inference_s,
            },
            "memory_bank_size": int(model.memory_bank.shape[0]),
            "feature_dim": int(model.memory_bank.shape[1]),
            "versions": {
                "anomalib": anomalib.__version__,
                "timm": timm.__version__,
                "torch": str(torch.__version__),
            },
        },
        args.output,
    )


if __name__ == "__main__":
    main()
