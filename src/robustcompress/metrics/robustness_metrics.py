"""Robustness metrics of Guo et al. (NeurIPS 2018): r_inf, r_2, CLEVER, and over-pruning detection.

``r_inf``   accuracy under the L-inf attacks FGS and rFGS (R+FGSM) at a fixed eps (paper: 0.1 on
            MNIST), :func:`r_inf`.
``r_2``     mean L2 norm of the minimal perturbations found by DeepFool and C&W-L2 on correctly
            classified points, :func:`r_2`.  Reported absolute (the paper's r_2) and relative to
            ``||x||_2`` (DeepFool's rho); whether the paper normalises is unspecified, so both.
            Points where the attack found no adversarial are excluded from the mean and counted
            in ``success_rate``.
``CLEVER``  Weng et al. (ICLR 2018) attack-agnostic estimate of the minimal distortion,
            :func:`clever_score`.  It is an *estimate*, not a bound, and gradient masking fools it.
Over-pruning (Guo et al. Sec. 4.3): robustness can fall sharply while clean accuracy still looks
fine; :func:`detect_over_pruning` finds that point on a progressive-pruning curve and
:func:`plot_robustness_vs_sparsity` marks it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from robustcompress.errors import UserInputError


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([model(x[s]).argmax(1) for s in _batches(x.shape[0], batch_size)])


def r_inf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.1, *,
          attacks: Sequence[str] = ("fgsm", "rfgsm"), bounds: tuple[float, float] = (0.0, 1.0),
          batch_size: int = 500, generator: Optional[torch.Generator] = None) -> dict[str, float]:
    """Accuracy under each L-inf attack at ``eps`` (input units), over all of ``x``.

    Uses :func:`robustcompress.attacks.run_attack` (so non-differentiable models are attacked
    through their straight-through surrogate by the engine).  Returns ``{attack: accuracy}``.
    """
    from robustcompress.attacks import ThreatModel, run_attack

    threat = ThreatModel(norm="linf", eps=float(eps), bounds=bounds)
    out = {}
    for name in attacks:
        correct = 0
        for s in _batches(x.shape[0], batch_size):
            res = run_attack(name, model, x[s], y[s], threat, generator=generator)
            correct += int((res.pred == y[s]).sum())
        out[name] = correct / max(x.shape[0], 1)
    return out


def _minimal_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str,
                         bounds: tuple[float, float], **kw) -> torch.Tensor:
    if attack == "deepfool":
        from robustcompress.attacks.deepfool import deepfool_perturb

        return deepfool_perturb(model, x, y, norm="l2", bounds=bounds, **kw).x_adv
    if attack == "cw":
        from robustcompress.attacks.cw import cw_l2_perturb

        return cw_l2_perturb(model, x, y, bounds=bounds, **kw).x_adv
    raise UserInputError(f"r_2 uses a minimal-perturbation attack: 'deepfool' or 'cw', not {attack!r}")


def r_2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str = "deepfool",
        bounds: tuple[float, float] = (0.0, 1.0), clip_to_box: bool = True,
        batch_size: int = 200, **attack_kw) -> dict[str, float]:
    """Mean L2 norm of the minimal adversarial perturbation on correctly classified points.

    Parameters
    ----------
    attack : ``"deepfool"`` (L2, overshoot 0.02 as in the paper) or ``"cw"`` (C&W-L2);
        ``attack_kw`` are passed on (e.g. ``steps=100, binary_search_steps=5`` for a CPU C&W).
    clip_to_box : keep adversarials inside ``bounds`` (default, valid inputs).  The original
        DeepFool does not clip; with clipping, DeepFool gets stuck on many MNIST points whose step
        points out of the box (``success_rate`` shows it), so ``False`` gives the paper's protocol.
        C&W always stays in the box (tanh space).

    Returns
    -------
    dict with ``r2`` (mean ||delta||_2), ``r2_rel`` (mean ||delta||_2 / ||x||_2),
    ``success_rate`` (over correctly classified points) and ``n_correct``.
    """
    pred = _predict(model, x)
    ok = pred == y
    xc, yc = x[ok], y[ok]
    norms, rels, fooled = [], [], 0
    box = bounds if clip_to_box or attack != "deepfool" else (-1e6, 1e6)
    for s in _batches(xc.shape[0], batch_size):
        x_adv = _minimal_adversarial(model, xc[s], yc[s], attack, box, **attack_kw)
        succ = _predict(model, x_adv) != yc[s]
        d = (x_adv - xc[s]).flatten(1).norm(dim=1)
        nx = xc[s].flatten(1).norm(dim=1).clamp_min(1e-12)
        norms.append(d[succ])
        rels.append((d / nx)[succ])
        fooled += int(succ.sum())
    d = torch.cat(norms) if norms else torch.zeros(0)
    r = torch.cat(rels) if rels else torch.zeros(0)
    return {"r2": float(d.mean()) if d.numel() else float("nan"),
            "r2_rel": float(r.mean()) if r.numel() else float("nan"),
            "success_rate": fooled / max(int(ok.sum()), 1), "n_correct": int(ok.sum())}


# ----------------------------------------------------------------------------- CLEVER

_DUAL = {"l2": 2.0, "linf": 1.0, "l1": float("inf")}


def sample_ball(center: torch.Tensor, n: int, radius: float, norm: str,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` points uniformly distributed in the L2 or L-inf ball around ``center``.

    L2: a Gaussian direction normalised to the sphere times ``radius * U^(1/d)`` (uniform in
    volume, not on the sphere); L-inf: uniform in the cube.
    """
    d = center.numel()
    shape = (n, *center.shape)
    dev, dt = center.device, center.dtype
    gdev = generator.device if generator is not None else "cpu"  # a CUDA generator draws on CUDA
    if norm == "l2":
        g = torch.randn((n, d), generator=generator, dtype=dt, device=gdev)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        r = torch.rand((n, 1), generator=generator, dtype=dt, device=gdev) ** (1.0 / d)
        delta = (g * r * radius).view(shape)
    elif norm == "linf":
        delta = (torch.rand(shape, generator=generator, dtype=dt, device=gdev) * 2 - 1) * radius
    else:
        raise UserInputError(f"CLEVER samples in an 'l2' or 'linf' ball, not {norm!r}")
    return center.unsqueeze(0) + delta.to(dev)


def fit_reverse_weibull(maxima: np.ndarray, max_ratio: float = 2.0) -> tuple[float, float]:
    """Location of a reverse Weibull (``scipy.stats.weibull_max``) fitted to batch maxima.

    Returns ``(location, ks_pvalue)``.  The location estimates the maximum of the gradient norm
    (the local Lipschitz constant).  Degenerate samples (all maxima equal, e.g. a linear model)
    return the observed maximum (pvalue nan); so do failed fits: a location below the observed
    maximum or above ``max_ratio`` times it (scipy's MLE occasionally runs off to a tiny shape and
    a huge location, which would make the score collapse to ~0).
    """
    from scipy import stats

    m = np.asarray(maxima, dtype=np.float64)
    top = float(m.max())
    if top <= 0 or float(m.max() - m.min()) <= 1e-9 * top:
        return top, float("nan")
    try:
        c, loc, scale = stats.weibull_max.fit(m, 2.0, loc=top * 1.01, scale=float(np.ptp(m)) + 1e-12)
        p = float(stats.kstest(m, "weibull_max", args=(c, loc, scale)).pvalue)
    except Exception:  # scipy's optimiser can fail on odd samples: fall back to the max
        return top, float("nan")
    if not math.isfinite(loc) or loc < top or loc > max_ratio * top:
        return top, float("nan")
    return float(loc), p


def clever_score(model: nn.Module, x: torch.Tensor, *, norm: str = "l2",
                 radius: Optional[float] = None, n_batches: int = 50, batch_size: int = 64,
                 targets: Union[str, int] = "all", bounds: Optional[tuple[float, float]] = (0.0, 1.0),
                 chunk: int = 1024, generator: Optional[torch.Generator] = None) -> dict:
    """Untargeted CLEVER score of one input ``x`` (no batch dimension), Weng et al. 2018.

    For the predicted class ``c`` and each target ``j``: ``g_j = f_c - f_j``; sample
    ``n_batches x batch_size`` points uniformly in the ``norm``-ball of ``radius`` (clipped to
    ``bounds`` as in the reference code), take the max of ``||grad g_j||_q`` (``q`` the dual norm)
    per batch, fit a reverse Weibull whose location estimates the Lipschitz constant ``L_j``.
    Score ``= min(min_j g_j(x) / L_j, radius)``.

    Deviations: defaults ``n_batches=50, batch_size=64`` instead of the paper's 500 x 1024 (CPU
    cost); the same sample points serve all targets; ``radius`` defaults to 2.0 (L2) or 0.1
    (L-inf) in input units; ``targets="all"`` (all wrong classes), ``"top2"`` (runner-up only) or
    an int (the k largest wrong logits).

    Returns
    -------
    dict with ``score``, ``target`` (arg-min class), ``lipschitz`` {j: L_j}, ``margin`` {j: g_j(x)}
    and ``ks_pvalue`` {j: p}.
    """
    if norm not in _DUAL:
        raise UserInputError(f"CLEVER norm must be 'l2' or 'linf', not {norm!r}")
    radius = float(radius if radius is not None else (2.0 if norm == "l2" else 0.1))
    q = _DUAL[norm]
    with torch.no_grad():
        logits = model(x.unsqueeze(0))[0]
    c = int(logits.argmax())
    others = [j for j in torch.argsort(logits, descending=True).tolist() if j != c]
    if targets == "top2":
        others = others[:1]
    elif isinstance(targets, int):
        others = others[:targets]
    elif targets != "all":
        raise UserInputError(f"targets must be 'all', 'top2' or an int, not {targets!r}")
    pts = sample_ball(x, n_batches * batch_size, radius, norm, generator)
    if bounds is not None:
        pts = pts.clamp(*bounds)
    gnorms = {j: [] for j in others}
    for s in _batches(pts.shape[0], chunk):
        p = pts[s].detach().requires_grad_(True)
        with torch.enable_grad():
            out = model(p)
            for i, j in enumerate(others):
                g = torch.autograd.grad((out[:, c] - out[:, j]).sum(), p,
                                        retain_graph=i < len(others) - 1)[0]
                gnorms[j].append(g.flatten(1).norm(p=q, dim=1).detach())
    lip, pvals, margins, scores = {}, {}, {}, {}
    for j in others:
        maxima = torch.cat(gnorms[j]).view(n_batches, batch_size).amax(dim=1).cpu().numpy()
        lip[j], pvals[j] = fit_reverse_weibull(maxima)
        margins[j] = float(logits[c] - logits[j])
        scores[j] = margins[j] / lip[j] if lip[j] > 0 else float("inf")
    j_min = min(scores, key=scores.get)
    return {"score": min(scores[j_min], radius), "target": j_min, "lipschitz": lip,
            "margin": margins, "ks_pvalue": pvals}


def clever(model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`clever_score` of every input of the batch ``x``; a float tensor ``[B]``."""
    return torch.tensor([clever_score(model, xi, **kw)["score"] for xi in x])


# ----------------------------------------------------------------------------- over-pruning

def detect_over_pruning(curve: Sequence[dict], *, robustness_key: str = "r2_deepfool",
                        acc_key: str = "clean_acc", rob_tol: float = 0.1, relative: bool = True,
                        acc_tol: float = 0.01) -> dict:
    """Where robustness has dropped from its peak while clean accuracy still looks fine.

    Parameters
    ----------
    curve : rows ordered by sparsity (round 0 = dense), each with ``robustness_key`` and
        ``acc_key``.
    rob_tol : drop from the peak that counts, relative to the peak (``relative=True``) or absolute.
    acc_tol : clean accuracy counts as "still fine" when within ``acc_tol`` (absolute) of round 0.

    Returns
    -------
    dict ``peak`` (index of the robustness maximum among rounds with fine clean accuracy), ``over_pruned`` (first index after the peak
    where robustness fell by more than the tolerance while clean accuracy is still fine, or None),
    and ``acc_drop`` (first index where clean accuracy fell by more than ``acc_tol``, or None).
    """
    if not curve:
        raise UserInputError("over-pruning detection needs a non-empty curve")
    rob = [float(r[robustness_key]) for r in curve]
    acc = [float(r[acc_key]) for r in curve]
    fine = [a >= acc[0] - acc_tol for a in acc]
    # the peak is taken over rounds whose clean accuracy is still fine: a collapsed model's r_2 is
    # measured on its few remaining correct points and is meaningless
    peak = max((i for i in range(len(rob)) if fine[i] and math.isfinite(rob[i])),
               key=lambda i: rob[i], default=int(np.nanargmax(rob)))
    limit = rob[peak] * (1 - rob_tol) if relative else rob[peak] - rob_tol
    over = next((i for i in range(peak + 1, len(rob)) if rob[i] < limit and fine[i]), None)
    acc_drop = next((i for i, f in enumerate(fine) if not f), None)
    return {"peak": peak, "over_pruned": over, "acc_drop": acc_drop}


def plot_robustness_vs_sparsity(curve: Sequence[dict], path, *,
                                keys: Sequence[str] = ("r_inf_fgsm", "r2_deepfool"),
                                acc_key: str = "clean_acc", detect_key: Optional[str] = None,
                                title: Optional[str] = None, **detect_kw) -> dict:
    """Robustness metrics and clean accuracy vs weight sparsity, marking over-pruning.

    The x axis is the compression ratio ``1 / (1 - sparsity)`` on a log scale (progressive
    pruning spaces rounds evenly there), labelled with the sparsity.  Each metric in ``keys`` gets
    its own panel; the over-pruning point found on ``detect_key`` (default: the last key) is a
    red dashed line.  Returns the detection result.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    det = detect_over_pruning(curve, robustness_key=detect_key or keys[-1], acc_key=acc_key,
                              **detect_kw)
    xs = [1.0 / max(1.0 - float(r["sparsity"]), 1e-6) for r in curve]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot(xs, [r[key] for r in curve], "o-", color="C0", label=key)
        ax.set_xscale("log")
        ax.set_xlabel("weight sparsity")
        ticks = xs[:: max(1, len(xs) // 6)]
        ax.set_xticks(ticks, [f"{100 * (1 - 1 / t):.1f}%" for t in ticks], rotation=30)
        ax.set_ylabel(key, color="C0")
        ax2 = ax.twinx()
        ax2.plot(xs, [r[acc_key] for r in curve], "s--", color="C2", ms=3, label=acc_key)
        ax2.set_ylabel(acc_key, color="C2")
        if det["over_pruned"] is not None:
            ax.axvline(xs[det["over_pruned"]], color="red", ls="--", lw=1,
                       label="over-pruning")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "Robustness vs sparsity (progressive magnitude pruning)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return det
