"""The report as one self-contained HTML page (figures embedded as base64 PNG)."""

from __future__ import annotations

from typing import Any

from ..report.history import is_number
from .report import esc, png_base64

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1020px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} .note{color:#666;font-size:.9em} img{max-width:100%;border:1px solid #eee}
.kv td{text-align:left}
"""


def _fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if is_number(v):
        return f"{v:.{nd}g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.{nd}f}".rstrip("0").rstrip(".")
    return esc(v)


def robust_summary(ph: dict) -> str:
    """'two plateaus: layers 1-11 (ID ~6.0), 12-20 (ID ~10.1); robust change point at 12 (x1.68, 4/6 scales)'."""
    pl = ph.get("plateaus") or []
    words = {1: "one plateau", 2: "two plateaus", 3: "three plateaus"}.get(len(pl), f"{len(pl)} plateaus")
    text = f"{words}: " + ", ".join(f"layers {a}-{b} (ID ~{m:.1f})" if a != b else f"layer {a} (ID ~{m:.1f})" for a, b, m in pl)
    cps = ph.get("change_points") or []
    if cps:
        text += "; robust change point" + ("s" if len(cps) > 1 else "") + " at " + ", ".join(
            f"{c} (x{j:.2f}, {s:.0%} of scales)" for c, j, s in zip(cps, ph.get("jumps", []), ph.get("change_support", []))
        )
    else:
        text += "; no change point that most scales agree on"
    return text + "."


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{png_base64(pngs[name])}"/></figure>' if name in pngs else ""


def render(report: Any, pngs: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lightning-geom probe report</title><style>{_CSS}</style></head><body>"]
    parts.append("<h1>Geometry report</h1>")
    models = "; ".join(
        f"<b>{esc(m['name'])}</b> ({esc(m.get('source', ''))}" + (f", step {m['step']}" if m.get("step") is not None else "") + ")"
        for m in report.models
    )
    when = report.settings.get("date", "")
    version = report.settings.get("lightning_geom", "")
    parts.append(f"<p class='note'>Data: {esc(report.data)}. Models: {models}. Made {esc(when)} with lightning-geom {esc(version)}.</p>")
    parts.append("<h2 id='summary'>Summary</h2><ul>")
    for m in report.models:
        ph = m.get("phase")
        line = f"<li><b>{esc(m['name'])}</b> ({m['n_samples']} samples, {len(m['layers'])} layers): "
        if ph:
            line += (
                f"first ID peak at layer {ph['peak1_layer']} ({_fmt(ph['peak1'])}), minimum at layer {ph['min_layer']} "
                f"({_fmt(ph['minimum'])}), "
                + (f"second peak at layer {ph['peak2_layer']} ({_fmt(ph['peak2'])}); " if ph.get("peak2_layer") is not None else "no rise after it; ")
                + f"three-phase: <b>{ph['is_three_phase']}</b> (depth {_fmt(ph['depth'])}, rebound {_fmt(ph['rebound'])}). "
                + (f"Layers {', '.join(map(str, ph['left_out']))} failed and are left out of this summary. " if ph.get("left_out") else "")
            )
        if ph and "plateaus" in ph:
            line += esc(robust_summary(ph)) + " "
        if m.get("best_retrieval_layer") is not None:
            r = next(x for x in m["layers"] if x["index"] == m["best_retrieval_layer"])
            line += f"Best layer for nearest-neighbour retrieval: <b>layer {m['best_retrieval_layer']}</b> ({_fmt(r['retrieval'])} of samples have a same-label nearest neighbour)."
        parts.append(line + "</li>")
    parts.append("</ul>")
    parts.append("<h2 id='id-profile'>Intrinsic-dimension profile</h2>")
    parts.append("<p class='note'>GRIDE (Denti et al. 2022) at one common stable scale, with its error bar; TwoNN (Facco et al. 2017) dashed. Phases as in Valeriani et al. 2023 (arXiv 2302.00294).</p>")
    parts.append(_img(pngs, "id_profile", "ID profile"))
    parts.append(
        "<h2 id='scales'>The ID at every scale</h2><p>Rows are layers, columns the GRIDE neighbour rank n1 "
        "(small n1 = small length scale) and TwoNN. A single scale is not the whole story: where the columns "
        "disagree, read the change points that most scales share (dashed).</p>" + _img(pngs, "id_scale_map", "layer x scale ID map")
    )
    parts.append("<h2 id='gride'>GRIDE scale curves</h2>" + _img(pngs, "gride_curves", "GRIDE scale curves"))
    if "token_profile" in pngs:
        parts.append(
            "<h2 id='tokens'>Token geometry</h2><p>Per prompt: each prompt's tokens at a layer form one point cloud "
            "(Viswanathan et al. 2025); the ID of each cloud, averaged over prompts. The dashed line, when present, is "
            "the control with each prompt's tokens shuffled in blocks of 4. The pooled token cloud: the tokens of all texts "
            "(a seeded subsample) form one cloud per layer.</p>" + _img(pngs, "token_profile", "token ID per layer")
        )
        parts.append(_token_cloud_table(report))
    parts.append("<h2 id='overlap'>Neighbourhood overlap between layers</h2><p class='note'>chi_k between every pair of layers (Doimo et al. 2020).</p>")
    parts.append(_img(pngs, "overlap_matrix", "overlap matrix"))
    parts.append("<h2 id='labels'>Label overlap and retrieval</h2>" + _img(pngs, "labels_retrieval", "label overlap and retrieval"))
    if "pullback" in pngs:
        used = ", ".join(f"{esc(m['name'])}: {m.get('pullback_samples_used', '?')}" for m in report.models if m.get("pullback"))
        parts.append(
            "<h2 id='pullback'>Pullback metric</h2><p class='note'>Fisher metric of the output pulled back to each layer "
            "(Benfenati et al., arXiv 2410.06019), mean over the first samples, each at its own length "
            f"(samples measured: {used}; at most <code>--pullback-samples</code>, within <code>--pullback-share</code> of the probe's time).</p>"
        )
        parts.append(_img(pngs, "pullback", "pullback statistics"))
    missing = [(m["name"], m["pullback_note"]) for m in report.models if not m.get("pullback") and m.get("pullback_note")]
    if missing:
        notes = "; ".join(f"{esc(nm)}: {esc(why)}" for nm, why in missing)
        parts.append(f"<p class='note' id='no-pullback'>No pullback metric for {notes}.</p>")
    parts.append("<h2 id='numbers'>Per-layer numbers</h2>")
    for m in report.models:
        parts.append(f"<h3>{esc(m['name'])}</h3><table><tr><th>layer</th><th>ID</th><th>± err</th><th>n1</th><th>TwoNN</th><th>label overlap</th><th>1-NN retrieval</th><th>overlap next</th><th>note</th></tr>")
        for r in m["layers"]:
            note = r.get("error") or r.get("warning") or ""
            parts.append(
                "<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in ("index", "id", "id_err", "id_n1", "twonn", "label_overlap", "retrieval", "overlap_next"))
                + f"<td style='text-align:left'>{esc(note)[:120]}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2 id='settings'>Settings</h2><table class='kv'>")
    for k, v in report.settings.items():
        parts.append(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>")
    for name, t in report.timings.items():
        parts.append(f"<tr><td>time ({esc(name)})</td><td>{esc(', '.join(f'{a} {b:.1f}s' for a, b in t.items()))}</td></tr>")
    parts.append("</table><p class='note'>Every number is also in metrics.json and layers.csv next to this page.</p></body></html>")
    return "\n".join(parts)


def _token_cloud_table(report: Any) -> str:
    """Per-layer numbers of the pooled token cloud (empty when none was measured)."""
    out = []
    for m in report.models:
        c = m.get("token_cloud")
        if not c:
            continue
        lossy = any(r.get("loss_neighbors") is not None for r in c["layers"])
        head = "<tr><th>layer</th><th>ID</th><th>TwoNN</th><th>overlap with next</th>" + ("<th>loss vs neighbours' loss (Spearman)</th>" if lossy else "") + "</tr>"
        rows = "".join(
            f"<tr><td>{r['index']}</td><td>{_fmt(r.get('id'))}</td><td>{_fmt(r.get('twonn'))}</td><td>{_fmt(r.get('overlap_next'))}</td>"
            + (f"<td>{_fmt(r.get('loss_neighbors'))}</td>" if lossy else "") + "</tr>"
            for r in c["layers"]
        )
        note = (
            f"{esc(m['name'])}: {c['n_tokens']} of {c['available']} tokens from {c['prompts']} texts"
            + (", special tokens left out" if c.get("special_tokens_dropped") else "")
            + (f"; mean next-token loss {_fmt(c['loss_mean'])}" if c.get("loss_mean") is not None else "")
        )
        out.append(f"<p class='note'>{note}</p><table>{head}{rows}</table>")
    return "".join(out)
