"""Measure, on the NumPy reference, the consequences of each departure from the paper
that SPEC.md section 12 lists (the numbers quoted there come from this script).

    python scripts/measure_departures.py          # about a minute on one CPU core
"""

from __future__ import annotations

import numpy as np

from turboquant import format as tqf
from turboquant import reference as ref
from turboquant.conformance import paper
from turboquant.reference import codebook as cbk
from turboquant.reference.qjl import qjl_matrix
from turboquant.reference.quantizer import InstanceParams, decode_instances, encode_instances
from turboquant.reference.rotation import rotation_matrices


def worst_case(d: int = 128, n_seeds: int = 200) -> None:
    print(f"## D_mse on worst-case unit inputs, d={d}, mean over {n_seeds} seeds (layers 0..{n_seeds - 1}) +- SE")
    seeds = paper.seeds_of_layers(n_seeds)
    xs = paper.worst_case_inputs(d)
    print("| rotation | b | bound | " + " | ".join(xs) + " | verdict |")
    for kind in paper.MEASURED_ROTATIONS:
        rots = paper.rotations(kind, d, seeds)
        for bits in tqf.SUPPORTED_BITS:
            dist = {name: paper.mse_distortions(rots, x, bits) for name, x in xs.items()}
            cells = [f"{v.mean():.4f} +- {v.std(ddof=1) / np.sqrt(v.size):.4f}" for v in dist.values()]
            print(f"| {kind} | {bits} | {paper.theorem1_bound(bits):.4f} | " + " | ".join(cells) +
                  f" | {paper.theorem1_verdict(dist, bits)} |")


def unbiasedness(d: int = 64, n_seeds: int = 2000) -> None:
    print(f"\n## <y, x~> of 9 fixed pairs, d={d}, {n_seeds} seeds: pooled slope, SE clustered by seed vs naive SE,"
          " spread of one seed's slope")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(d)
    x /= np.linalg.norm(x)
    ys = []
    for t in np.linspace(-0.9, 0.9, 9):
        z = rng.standard_normal(d)
        z -= (z @ x) * x
        ys.append(t * x + np.sqrt(1 - t * t) * z / np.linalg.norm(z))
    ys = np.asarray(ys)
    truth = ys @ x
    rots = rotation_matrices("haar", d, paper.seeds_of_layers(n_seeds)).astype(np.float32)
    qjls = [qjl_matrix(d, int(s)) for s in paper.seeds_of_layers(n_seeds, "qjl")]
    for bits in tqf.SUPPORTED_BITS:
        inst = tqf.Instance(0, d, bits - 1, True)
        est = np.empty((n_seeds, 9))
        for s in range(n_seeds):
            p = (InstanceParams(inst, np.arange(d), rots[s], cbk.load(d, bits - 1) if bits > 1 else None, qjls[s]),)
            est[s] = ys @ decode_instances(encode_instances(x[None].astype(np.float32), p), p)[0][0]
        slope, se, naive = paper.slope_clustered(est, truth)
        tc = truth - truth.mean()
        per_seed = (est - est.mean(1, keepdims=True)) @ tc / (tc @ tc)
        print(f"b={bits}: slope {slope:.4f}, clustered SE {se:.4f}, naive SE {naive:.4f} (ratio {se / naive:.2f}); "
              f"one seed's slope: SD {per_seed.std(ddof=1):.3f}; RMS error of one estimate "
              f"{np.sqrt(np.mean((est - truth) ** 2)):.4f}")


def group_values(d: int = 128, n: int = 20000) -> None:
    print(f"\n## values: relative MSE ||v - v~||^2 / ||v||^2 over {n} Gaussian tokens, d={d}")
    v = np.random.default_rng(1).standard_normal((n, d)).astype(np.float32)
    for name in ("tq4", "k4g4", "tq3", "k4v3"):
        fmt = tqf.LayerFormat(tqf.get_preset(name), d)
        _, vt = ref.decode_slots(ref.encode_slots(v, v, fmt), fmt)
        rel = np.sum((v - vt) ** 2, -1) / np.sum(v**2, -1)
        p = fmt.preset
        bits = 8 * sum(f.nbytes for f in fmt.fields if f.name.startswith("v_")) / d
        print(f"{name}: value {p.value_mode} {p.value_bits}b, {bits:.3f} bits/coord: {rel.mean():.5f}")


def outlier_split(d: int = 128, n: int = 20000) -> None:
    print(f"\n## keys with 16 high-magnitude channels (x8) at random positions, {n} tokens, d={d}: relative MSE")
    rng = np.random.default_rng(2)
    hot = np.sort(rng.choice(d, 16, replace=False))
    k = rng.standard_normal((n, d)).astype(np.float32)
    k[:, hot] *= 8
    for name in ("tq2.5", "tq3.5"):
        p = tqf.get_preset(name)
        n_out = tqf.LayerFormat(p, d).key_instances[0].dim
        energy = np.mean(k.astype(np.float64) ** 2, 0)
        calibrated = tuple(sorted(int(i) for i in np.argsort(-energy, kind="stable")[:n_out]))
        for label, chans in (("uncalibrated 0..n-1", None), ("top-energy channels", calibrated)):
            fmt = tqf.LayerFormat(p, d, key_outlier_channels=chans, value_outlier_channels=chans)
            kt, _ = ref.decode_slots(ref.encode_slots(k, k, fmt), fmt)
            rel = np.sum((k - kt) ** 2, -1) / np.sum(k**2, -1)
            print(f"{name} {label}: {rel.mean():.5f}")
    for name in ("tq2", "tq3", "tq4"):
        fmt = tqf.LayerFormat(tqf.get_preset(name), d)
        kt, _ = ref.decode_slots(ref.encode_slots(k, k, fmt), fmt)
        print(f"{name} (no split): {np.mean(np.sum((k - kt) ** 2, -1) / np.sum(k**2, -1)):.5f}")


if __name__ == "__main__":
    worst_case()
    unbiasedness()
    group_values()
    outlier_split()
