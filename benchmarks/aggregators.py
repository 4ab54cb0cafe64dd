"""Speed and solution quality of the aggregators, next to TorchJD's weightings.

Prints a markdown table: per method and number of tasks ``T``, the median call time (one
thread, warmed up, stateful methods reset before each call so every call is cold) over
seeded Gramians of random and of strongly conflicting gradients, with the Gramian validated
and with ``validate=False`` (as the bucket-MOO hook calls it); the same for TorchJD's
weighting of that name when ``torchjd`` is importable, and the ratios; and a solution-quality
figure (worst over the Gramians) where the method has a checkable optimality condition.

    python benchmarks/aggregators.py [--sizes 2 4 8] [--repeats 200] [--methods mgda cagrad]
        [--rounds 3]

With ``--rounds R`` every timing is the best of ``R`` medians, interleaved (ours, TorchJD,
ours, ...), so that load from other processes inflates neither side alone.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from lightning_bmoo.aggregators import available_aggregators, get_aggregator

_N = 40  # gradient dimension


def sample_gramians(T: int, seed: int = 0) -> list[Tensor]:
    """Float64 Gramians of random and of strongly conflicting gradients (as in the tests)."""
    g = torch.Generator().manual_seed(seed * 1000 + T)
    G = torch.randn(T, _N, generator=g, dtype=torch.float64)
    # Alternating signs and norms from 0.5 to 3 around one direction: cosines close to -1.
    base = torch.randn(1, _N, generator=g, dtype=torch.float64)
    signs = torch.tensor([(-1.0) ** i for i in range(T)], dtype=torch.float64)[:, None]
    norms = torch.linspace(0.5, 3.0, T, dtype=torch.float64)[:, None]
    C = signs * norms * base + 0.05 * torch.randn(T, _N, generator=g, dtype=torch.float64)
    return [G @ G.T, C @ C.T]


def median_us(fn: Callable[[Tensor], object], Ks: list[Tensor], repeats: int) -> float:
    """Median wall time of ``fn(M)`` in microseconds, pooled over the Gramians."""
    times = []
    for M in Ks:
        for _ in range(max(3, repeats // 10)):
            fn(M)
        for _ in range(repeats):
            start = time.perf_counter()
            fn(M)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def ours(name: str, validate: bool = True) -> Callable[[Tensor], Tensor]:
    agg = get_aggregator(name)
    if not agg.stateful:
        return functools.partial(agg, validate=validate)

    def cold(M: Tensor) -> Tensor:
        agg.reset()
        return agg(M, validate=validate)

    return cold


def torchjd_weighting(name: str) -> Callable[[Tensor], Tensor] | str:
    """TorchJD's weighting of the same name, or why there is none."""
    try:
        from torchjd import aggregation as jd
    except ImportError:
        return "n/a (no torchjd)"
    builders: dict[str, Callable[[], object]] = {
        "mean": jd.MeanWeighting,
        "mgda": jd.MGDAWeighting,
        "pcgrad": jd.PCGradWeighting,
        "cagrad": lambda: jd.CAGradWeighting(c=0.4),
        "gradvac": jd.GradVacWeighting,
        "imtl_g": jd.IMTLGWeighting,
        "aligned_mtl": jd.AlignedMTLWeighting,
        "upgrad": jd.UPGradWeighting,
        # Softmax of Gaussian draws (Lin et al.'s RLW) from the global RNG; ours is Dirichlet(1).
        "random": jd.RandomWeighting,
    }
    if name not in builders:
        # TorchJD's Nash-MTL weighting needs cvxpy and works on the Jacobian, not a Gramian.
        return "n/a"
    try:
        weighting = builders[name]()
        weighting(torch.eye(2, dtype=torch.float64))
    except Exception as error:  # e.g. a missing optional dependency
        return f"n/a ({type(error).__name__})"
    reset = getattr(weighting, "reset", None)
    if reset is None:
        return weighting

    def cold(M: Tensor) -> Tensor:
        reset()
        return weighting(M)

    return cold


def _project_simplex(v: Tensor) -> Tensor:
    u = v.sort(descending=True).values
    css = u.cumsum(0) - 1.0
    idx = torch.arange(1, v.shape[0] + 1, dtype=v.dtype)
    r = int((u - css / idx > 0).nonzero().max())
    return (v - css[r] / (r + 1)).clamp(min=0.0)


def _mgda_reference(M: Tensor, iters: int = 20000) -> float:
    """min over the simplex of w^T M w by projected gradient (step 1 / (2 lambda_max))."""
    step = 0.5 / float(torch.linalg.eigvalsh(M)[-1])
    w = torch.full((M.shape[0],), 1.0 / M.shape[0], dtype=torch.float64)
    for _ in range(iters):
        w = _project_simplex(w - step * 2.0 * (M @ w))
    return float(w @ M @ w)


def _cagrad_dual(M: Tensor, w: Tensor, c: float) -> float:
    b = M.mean(1)
    return float(w @ b + c * math.sqrt(float(b.mean())) * (w @ M @ w).clamp(min=0).sqrt())


def _cagrad_reference(M: Tensor, c: float, iters: int = 20000) -> float:
    """Best iterate of projected subgradient descent on CAGrad's dual."""
    b, s = M.mean(1), c * math.sqrt(float(M.mean()))
    w = torch.full((M.shape[0],), 1.0 / M.shape[0], dtype=torch.float64)
    best = _cagrad_dual(M, w, c)
    for k in range(iters):
        grad = b + s * (M @ w) / (w @ M @ w).sqrt().clamp(min=1e-300)
        w = _project_simplex(w - 0.5 / math.sqrt(k + 10) * grad)
        best = min(best, _cagrad_dual(M, w, c))
    return best


def quality(name: str, Ks: list[Tensor]) -> str:
    """Worst solution-quality figure over the Gramians (scaled to a unit largest diagonal)."""
    if name not in ("mgda", "cagrad", "nash_mtl", "upgrad"):
        return "-"
    worst = -math.inf
    for M in Ks:
        M = M / M.diagonal().max()
        w = get_aggregator(name)(M)
        if name == "mgda":
            value = float(w @ M @ w) - _mgda_reference(M)
        elif name == "cagrad":
            c = 0.4
            z = w * (1 + c * c) - 1.0 / M.shape[0]
            value = _cagrad_dual(M, z / z.sum(), c) - _cagrad_reference(M, c)
        elif name == "nash_mtl":
            # Back to the paper's alpha: g_i . d = 1 / alpha_i fixes the scale of w.
            alpha = w * (1.0 / (w * (M @ w))).mean().sqrt()
            value = float((M @ alpha - 1.0 / alpha).abs().max())
        else:
            # The KKT conditions checkable from the summed weights: w >= 1/T (primal) and
            # g_i . d >= 0 (dual), relative to |g_i| |d|.
            d_norm = float(w @ M @ w) ** 0.5
            dual = -(M @ w) / (M.diagonal().sqrt() * d_norm).clamp(min=1e-300)
            value = max(0.0, float((1.0 / M.shape[0] - w).max()), float(dual.max()))
        worst = max(worst, value)
    return f"{worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--methods", nargs="+", default=available_aggregators())
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(
        f"torch {torch.__version__}, 1 thread; median of {args.repeats} calls x 2 Gramians, "
        f"best of {args.rounds} round(s)\n"
    )
    print(
        "| method | T | ours (us) | ours, validate=False (us) | TorchJD (us) | ours/TorchJD "
        "| no-validation/TorchJD | quality |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.methods:
        for T in args.sizes:
            Ks = sample_gramians(T)
            try:
                theirs = torchjd_weighting(name)
                candidates = {"v": ours(name), "nv": ours(name, validate=False)}
                if not isinstance(theirs, str):
                    candidates["jd"] = theirs
                best = dict.fromkeys(candidates, math.inf)
                for _ in range(args.rounds):
                    for label, fn in candidates.items():
                        try:
                            best[label] = min(best[label], median_us(fn, Ks, args.repeats))
                        except Exception as error:  # report TorchJD's failures, keep going
                            if label != "jd":
                                raise
                            theirs = f"error: {type(error).__name__}"
                            del candidates["jd"]
                            break
                mine, fast = best["v"], best["nv"]
                if isinstance(theirs, str):
                    jd = f"{theirs} | - | -"
                else:
                    t = best["jd"]
                    jd = f"{t:.1f} | {mine / t:.2f} | {fast / t:.2f}"
                row = f"{mine:.1f} | {fast:.1f} | {jd} | {quality(name, Ks)}"
            except Exception as error:  # one failing method must not stop the rest
                row = f"error: {type(error).__name__}: {error} | | | | | |"
            print(f"| {name} | {T} | {row} |", flush=True)


if __name__ == "__main__":
    main()
