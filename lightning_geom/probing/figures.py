"""Figures of a GeometryReport (matplotlib, Agg)."""

from __future__ import annotations

from typing import Any

from ..report.figures import colormap, subplots


def _nans(values: Any) -> list[float]:
    """Values for a plot: None (nothing measured there) as NaN, a gap in the line."""
    return [float("nan") if v is None else v for v in values]


def _colors(n: int):
    cmap = colormap("viridis")
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)] if n > 1 else ["tab:blue"]


def id_profile(report: Any):
    from matplotlib.ticker import MaxNLocator

    fig, ax = subplots(figsize=(7.5, 4.2), dpi=100)
    for m, c in zip(report.models, _colors(len(report.models))):
        rows = [r for r in m["layers"] if isinstance(r.get("id"), float)]
        xs = [r["index"] for r in rows]
        ax.errorbar(xs, [r["id"] for r in rows], yerr=[r["id_err"] for r in rows], fmt="-o", ms=4, capsize=3, color=c, label=f"{m['name']} (GRIDE)")
        ax.plot(xs, [r["twonn"] for r in rows], "--", color=c, alpha=0.5, lw=1, label=f"{m['name']} (TwoNN)")
        ph = m.get("phase")
        if ph:
            for key, mark in (("peak1_layer", "^"), ("min_layer", "v"), ("peak2_layer", "s")):
                if ph[key] in xs:
                    ax.plot([ph[key]], [rows[xs.index(ph[key])]["id"]], mark, ms=11, mfc="none", color="crimson")
            if ph["plateau_layers"]:
                ax.axvspan(min(ph["plateau_layers"]) - 0.3, max(ph["plateau_layers"]) + 0.3, color="crimson", alpha=0.06)
            for cp in ph.get("change_points", []):  # robust across scales
                ax.axvline(cp - 0.5, color=c, ls="--", lw=1, alpha=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("intrinsic dimension")
    ax.set_title("ID profile (red: first peak / minimum / second peak; shaded: plateau; dashed: robust change points)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def gride_curves(report: Any):
    m = report.models[-1]
    fig, ax = subplots(figsize=(7.5, 4.2), dpi=100)
    rows = [r for r in m["layers"] if r.get("gride")]
    cmap = colormap("plasma")
    for r in rows:
        g = r["gride"]
        ax.errorbar(g["scales"], g["dims"], yerr=g["errs"], fmt="-o", ms=3, capsize=2, lw=1, color=cmap(r["index"] / max(len(rows), 1)), label=f"layer {r['index']}")
    n1 = next((r.get("id_n1") for r in rows if r.get("id_n1") is not None), None)
    if n1 is not None:  # the scale the profile reports: one marker per layer curve
        pts = [(g["scales"][g["ranks"].index(n1)], g["dims"][g["ranks"].index(n1)]) for g in (r["gride"] for r in rows) if n1 in g["ranks"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "D", ms=7, mfc="none", color="black", ls="none", label=f"reported scale (n1 = {n1})")
    ax.set_xscale("log")
    ax.set_xlabel("scale (mean neighbour distance of the GRIDE ratio)")
    ax.set_ylabel("GRIDE ID")
    ax.set_title(f"GRIDE scale curves ({m['name']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    return fig


def overlap_matrix(report: Any):
    import numpy as np

    m = report.models[-1]
    mat = np.array([[np.nan if v is None else v for v in row] for row in m["overlap_matrix"]], dtype=float)
    fig, ax = subplots(figsize=(5.6, 4.8), dpi=100)
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", origin="lower")
    fig.colorbar(im, ax=ax, label=f"neighbourhood overlap (k = {report.settings.get('k')})")
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    ax.set_title(f"overlap between layers ({m['name']})")
    fig.tight_layout()
    return fig


def labels_retrieval(report: Any):
    fig, ax = subplots(figsize=(7.5, 3.8), dpi=100)
    for m, c in zip(report.models, _colors(len(report.models))):
        rows = [r for r in m["layers"] if isinstance(r.get("label_overlap"), float)]
        ax.plot([r["index"] for r in rows], [r["label_overlap"] for r in rows], "-o", ms=4, color=c, label=f"{m['name']} label overlap")
        rows = [r for r in m["layers"] if isinstance(r.get("retrieval"), float)]
        ax.plot([r["index"] for r in rows], [r["retrieval"] for r in rows], ":s", ms=4, color=c, label=f"{m['name']} 1-NN retrieval")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_title("label overlap and nearest-neighbour retrieval")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pullback(report: Any):
    fig, axes = subplots(1, 2, figsize=(10, 3.6), dpi=100)
    for m, c in zip(report.models, _colors(len(report.models))):
        rows = m.get("pullback") or []
        if not rows:
            continue
        xs = [r["index"] for r in rows]
        axes[0].semilogy(xs, [max(r.get("top", 0), 1e-30) for r in rows], "-o", ms=3, color=c, label=m["name"])
        axes[1].plot(xs, [r.get("effective_rank", 0) for r in rows], "-o", ms=3, color=c, label=m["name"])
    axes[0].set_title("pullback metric: top eigenvalue")
    axes[1].set_title("pullback metric: effective rank")
    for ax in axes:
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def id_scale_maps(report: Any):
    """One layer x scale ID map per model (GRIDE at every n1, TwoNN), robust change points dashed."""
    from ..report.figures import draw_scale_map

    n = len(report.models)
    fig, axes = subplots(1, n, figsize=(min(5.5 * n, 16), 4.6), dpi=100, squeeze=False)
    for ax, m in zip(axes[0], report.models):
        im = draw_scale_map(ax, m["layers"], m.get("phase"), title=m["name"])
        fig.colorbar(im, ax=ax, label="ID")
    fig.suptitle("ID at every scale (outlined: the reported scale; dashed: robust change points)", fontsize=10)
    fig.tight_layout()
    return fig


def token_profile(report: Any):
    """Per-prompt token ID per layer (mean +- std over prompts), the block-shuffled control when
    measured, and the ID of the pooled token cloud (all texts' tokens) when measured."""
    fig, ax = subplots(figsize=(7.5, 4.2), dpi=100)
    for m, c in zip(report.models, _colors(len(report.models))):
        cloud = m.get("token_cloud")
        if cloud:
            rows = [r for r in cloud["layers"] if isinstance(r.get("id"), float)]
            ax.plot([r["index"] for r in rows], [r["id"] for r in rows], "-D", ms=4, color=c, alpha=0.6, lw=2,
                    label=f"{m['name']}: pooled token cloud ({cloud['n_tokens']} tokens)")
        tok = m.get("tokens")
        if not tok:
            continue
        rows = tok["layers"]
        xs = [r["index"] for r in rows]
        ax.errorbar(xs, _nans(r["token_id"] for r in rows), yerr=_nans(r["token_id_std"] for r in rows), fmt="-o", ms=4, capsize=3, color=c, label=f"{m['name']} ({tok['prompts'] - tok['dropped']} prompts)")
        if "token_id_shuffled" in rows[0]:
            ax.plot(xs, _nans(r["token_id_shuffled"] for r in rows), "--s", ms=3, color=c, alpha=0.7, label=f"{m['name']}, tokens shuffled in blocks of 4")
    corr = [m for m in report.models if m.get("tokens") and "loss_spearman" in m["tokens"]["layers"][0]]
    if corr:  # causal LMs: the correlation of per-prompt ID with per-prompt loss, on a second axis
        ax2 = ax.twinx()
        for m, c in zip(corr, _colors(len(corr))):
            rows = m["tokens"]["layers"]
            ax2.plot([r["index"] for r in rows], [r["loss_spearman"] if r["loss_spearman"] is not None else float("nan") for r in rows], ":^", color=c, alpha=0.8, label=f"{m['name']}: Spearman(ID, loss)")
        ax2.set_ylabel("Spearman correlation of ID with next-token loss")
        ax2.set_ylim(-1, 1)
        ax2.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("layer (0 = embeddings)")
    per = any(m.get("tokens") for m in report.models)
    ax.set_ylabel("token ID (GRIDE)")
    ax.set_title("Token geometry" + (" (per prompt: mean +- std over prompts)" if per else ": the pooled token cloud"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def report_figures(report: Any) -> dict[str, Any]:
    figs = {"id_scale_map": id_scale_maps(report), "id_profile": id_profile(report), "gride_curves": gride_curves(report), "overlap_matrix": overlap_matrix(report), "labels_retrieval": labels_retrieval(report)}
    if any(m.get("pullback") for m in report.models):
        figs["pullback"] = pullback(report)
    if any(m.get("tokens") or m.get("token_cloud") for m in report.models):
        figs["token_profile"] = token_profile(report)
    return figs
