"""Figures of the monitor's history (matplotlib, Agg, outside pyplot): the emergence picture, the layer x step
heatmap, and the overlap profiles. Each function takes the history and returns a Figure."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "emergence_figure", "heatmap_figure", "overlap_figure", "spectra_figure", "all_figures",
    "subplots", "render", "draw", "png_bytes",
]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], dpi: int = 100, **kw: Any) -> tuple[Any, Any]:
    """``(Figure, axes)`` as ``pyplot.subplots`` gives them, but outside pyplot: nothing global holds
    the figure (no ``close`` to forget in a long training run) and any one thread may draw it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **kw)


def colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name]


def color_bar(fig: Any, norm: Any, cmap: Any, **kw: Any) -> Any:
    """A colour bar for ``norm`` / ``cmap`` (lines coloured by step have no image of their own)."""
    from matplotlib.cm import ScalarMappable

    return fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), **kw)


def render(fig: Any) -> Any:
    """``fig`` drawn once by Agg: an (H, W, 3) uint8 RGB array, for the dashboards and the PNG files alike
    (``savefig`` and TensorBoard's ``add_figure`` would each draw it again)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def png_bytes(image: Any) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


_DRAWING = threading.Lock()


def draw(make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``{name: (H, W, 3) uint8 image}`` of the figures ``make()`` returns, each rendered once, under one
    process-wide lock: matplotlib is not thread-safe, and two monitors may draw in their worker threads at once."""
    with _DRAWING:
        return {name: render(fig) for name, fig in make().items()}


def _profile(rec: dict[str, Any], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for layer in rec["layers"]:
        v = layer.get(key)
        if isinstance(v, (int, float)):
            xs.append(layer["index"])
            ys.append(float(v))
    return xs, ys


def _step_colors(history: Sequence[dict[str, Any]]):
    import matplotlib.colors as mcolors

    steps = [max(r["step"], 0) for r in history]
    norm = mcolors.SymLogNorm(linthresh=1, vmin=0, vmax=max(max(steps), 1))
    cmap = colormap("viridis")
    return norm, cmap


def emergence_figure(history: Sequence[dict[str, Any]], *, key: str = "id", title: str = "Intrinsic dimension profile over training"):
    """The ID profile (layer on x) at every checkpoint, coloured by step: how the profile emerges."""
    fig, ax = subplots(figsize=(7, 4.2), dpi=100)
    norm, cmap = _step_colors(history)
    for rec in history:
        xs, ys = _profile(rec, key)
        if xs:
            ax.plot(xs, ys, "-o", ms=3, lw=1.4, color=cmap(norm(max(rec["step"], 0))), alpha=0.9)
    color_bar(fig, norm, cmap, ax=ax, label="training step")
    if history and history[-1].get("phase"):
        ph = history[-1]["phase"]
        xs, ys = _profile(history[-1], key)
        for name, mark, label in (("peak1_layer", "^", "first peak"), ("min_layer", "v", "minimum"), ("peak2_layer", "s", "second peak")):
            if ph.get(name) in xs:
                ax.plot([ph[name]], [ys[xs.index(ph[name])]], mark, color="crimson", ms=9, mfc="none", ls="none", label=f"{label} (step {history[-1]['step']})")
        for cp in ph.get("change_points", []):
            ax.axvline(cp - 0.5, color="grey", ls="--", lw=1)
        if ph.get("change_points"):
            ax.plot([], [], color="grey", ls="--", lw=1, label="robust change point")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("ID (GRIDE)" if key == "id" else key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap_figure(history: Sequence[dict[str, Any]], *, key: str = "id"):
    """Layer x checkpoint heatmap of ``key`` (ID by default)."""
    import numpy as np

    n_layers = max((len(r["layers"]) for r in history), default=0)
    grid = np.full((n_layers, len(history)), np.nan)
    for j, rec in enumerate(history):
        for layer in rec["layers"]:
            v = layer.get(key)
            if isinstance(v, (int, float)):
                grid[layer["index"], j] = v
    fig, ax = subplots(figsize=(7, 4.2), dpi=100)
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, label=key)
    steps = [r["step"] for r in history]
    ticks = list(range(0, len(steps), max(1, len(steps) // 8)))
    ax.set_xticks(ticks, [str(steps[t]) for t in ticks], rotation=45)
    ax.set_xlabel("checkpoint (training step)")
    ax.set_ylabel("layer")
    ax.set_title(f"{key} per layer over training")
    fig.tight_layout()
    return fig


def draw_scale_map(ax: Any, layers: Sequence[dict[str, Any]], phase: dict[str, Any] | None, *, title: str = "") -> Any:
    """Layer x scale map of the ID on ``ax``: GRIDE at every n1 (columns) and TwoNN, one row per layer.

    The reported scale's column is outlined; robust change points are drawn as white lines between
    layers. Returns the image (for a colour bar). Shared by the monitor's and the probe's figures.
    """
    import numpy as np

    rows = [r for r in layers if r.get("gride")]
    ranks = list(rows[0]["gride"]["ranks"]) if rows else []
    grid = np.full((len(layers), len(ranks) + 1), np.nan)
    for r in rows:
        if list(r["gride"]["ranks"]) == ranks:
            grid[r["index"], : len(ranks)] = r["gride"]["dims"]
        if isinstance(r.get("twonn"), (int, float)):
            grid[r["index"], -1] = r["twonn"]
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(ranks) + 1), [f"n1={k}" for k in ranks] + ["TwoNN"], rotation=45, fontsize=8)
    ax.set_ylabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    n1 = next((r.get("id_n1") for r in rows if r.get("id_n1") is not None), None)
    if n1 in ranks:
        j = ranks.index(n1)
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((j - 0.5, -0.5), 1, len(layers), fill=False, ec="white", lw=1.5))
    for cp in (phase or {}).get("change_points", []):
        ax.axhline(cp - 0.5, color="white", lw=1.2, ls="--")
    ax.set_title(title or "ID at every scale (outlined: the reported scale; dashed: robust change points)", fontsize=9)
    return im


def scale_map_figure(history: Sequence[dict[str, Any]]):
    """The latest checkpoint's layer x scale ID map (issue 11: no single scale is the whole story)."""
    fig, ax = subplots(figsize=(7, 4.6), dpi=100)
    last = history[-1] if history else {"layers": [], "phase": None, "step": 0}
    im = draw_scale_map(ax, last["layers"], last.get("phase"), title=f"ID at every scale, step {last.get('step', 0)} (outlined: logged scale)")
    fig.colorbar(im, ax=ax, label="intrinsic dimension")
    fig.tight_layout()
    return fig


def overlap_figure(history: Sequence[dict[str, Any]]):
    """Label overlap and overlap with the next layer per layer, at every checkpoint (coloured by step)."""
    fig, axes = subplots(1, 2, figsize=(10, 3.8), dpi=100)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.92, wspace=0.15)  # the colour bar then takes its share
    norm, cmap = _step_colors(history)
    for ax, key, title in zip(axes, ("label_overlap", "overlap_next"), ("label overlap", "overlap with next layer")):
        for rec in history:
            xs, ys = _profile(rec, key)
            if xs:
                ax.plot(xs, ys, "-o", ms=3, lw=1.2, color=cmap(norm(max(rec["step"], 0))))
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(__import__("matplotlib.ticker").ticker.MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    color_bar(fig, norm, cmap, ax=list(axes), label="training step")
    return fig


def spectra_figure(history: Sequence[dict[str, Any]], *, max_panels: int = 16):
    """Mean pullback-metric spectrum (eigenvalue vs index, log scale) per layer, coloured by step."""
    n_layers = max((len(r["layers"]) for r in history), default=0)
    layers = list(range(n_layers))
    if n_layers > max_panels:  # evenly spaced layers, always the first and the last
        layers = sorted({round(i * (n_layers - 1) / (max_panels - 1)) for i in range(max_panels)})
    cols = min(4, len(layers)) or 1
    rows = (len(layers) + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(max(3.2 * cols, 5.0), max(2.5 * rows, 3.4)), dpi=100, squeeze=False, sharey=True)
    norm, cmap = _step_colors(history)
    axes.flat[0].set_yscale("log")  # once: the panels share y (semilogy per line re-set the scale of all 16)
    for ax, li in zip(axes.flat, layers):
        for rec in history:
            spec = next((layer.get("spectrum") for layer in rec["layers"] if layer["index"] == li), None)
            if spec:
                vals = [max(v, 1e-30) for v in spec]
                ax.plot(range(1, len(vals) + 1), vals, lw=1.2, color=cmap(norm(max(rec["step"], 0))))
        ax.set_title(f"layer {li}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.supxlabel("eigenvalue index")
    fig.supylabel("eigenvalue of g (mean over probe)")
    # fixed margins in inches (tight_layout measured every log-scale tick of up to 16 panels: 1.7 s of 2.2)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.95 / w, right=1 - 0.15 / w, bottom=0.6 / h, top=1 - 0.3 / h, wspace=0.08, hspace=0.5)
    color_bar(fig, norm, cmap, ax=list(axes.flat), label="training step", shrink=0.8)
    return fig


def all_figures(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{name: Figure}`` for the monitor: id_scale_map, id_profile, id_heatmap, overlaps, and with
    ``tokens="pooled"`` the pooled token cloud's ID profile over training (token_cloud_profile)."""
    figs = {
        "id_scale_map": scale_map_figure(history),
        "id_profile": emergence_figure(history),
        "id_heatmap": heatmap_figure(history),
        "overlaps": overlap_figure(history),
    }
    clouds = [
        {"step": r["step"], "layers": r["token_cloud"]["layers"], "phase": r["token_cloud"].get("phase")}
        for r in history if r.get("token_cloud")
    ]
    if clouds:
        figs["token_cloud_profile"] = emergence_figure(clouds, title="Pooled token cloud: ID profile over training")
    return figs
