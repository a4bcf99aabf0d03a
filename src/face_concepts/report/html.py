"""The atlas as one self-contained HTML page (inline CSS, images as data URIs, no script).

Structure (tests and readers rely on it): one ``<article class="run">`` per run, in it one
``<section class="concept">`` per concept, by decreasing importance.
"""

from __future__ import annotations

import json
from collections import defaultdict
from html import escape
from typing import Any

from face_concepts.report.analysis import RunView
from face_concepts.report.glossary import (
    METRIC_HELP,
    format_value,
    importance_fact,
    percent,
    solver_summary,
)
from face_concepts.report.images import data_uri, figure_png
from face_concepts.report.shared import (
    class_importance_table,
    class_metrics_table,
    shared_concept_line,
)

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
header,main,footer{max-width:1100px;margin:0 auto;padding:0 20px}
header{padding-top:24px}h1{margin:0 0 6px}h2{margin-top:0}
.lead{color:#404a5c;max-width:820px}
nav ul{columns:2;padding-left:18px}
article.run,section.panel{background:#fff;border:1px solid #dde1e8;border-radius:8px;
padding:18px 22px;margin:22px 0}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border-bottom:1px solid #e4e7ec;padding:4px 10px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}article.run,section.panel{min-width:0;overflow-wrap:anywhere}
th{background:#f0f2f5}.help{color:#596275;font-size:13px}
section.concept{border-top:1px solid #e4e7ec;padding:12px 0}
section.concept h4{margin:4px 0}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.strip img{border-radius:4px;border:1px solid #ccd1da}
figure{margin:0}figcaption{font-size:12px;color:#596275;max-width:180px}
img.chart{max-width:100%;height:auto}
.bar{display:inline-block;height:10px;background:#3b74c9;border-radius:2px;vertical-align:middle}
.note{background:#fff7e0;border-left:4px solid #e0b040;padding:6px 10px;margin:6px 0;font-size:14px}
pre{background:#f3f4f7;padding:10px;overflow:auto;font-size:12px;max-height:420px}
footer{color:#6b7385;font-size:12px;padding-bottom:30px}
"""

_INTRO = (
    "A concept is a direction in the model's feature space that the decomposition found in the "
    "training crops of one class. Each concept below shows the image crops that contain it most, "
    "where it lies in example images (warm colours: strong), its importance (Sobol total index: "
    "how much the class score depends on it) and its share of the prediction (its part of the "
    "class logit, exact for a linear head). The metrics say how faithful the concepts are to the "
    "model: can the model still recognise the class from the concepts alone, and does removing "
    "the important concepts first destroy that?"
)


_CROPS_HELP = "Image crops with the largest code of this concept:"
_HEAT_HELP = (
    "Where the concept lies in the example images that use it most "
    "(warm and opaque: strong; one colour scale per concept):"
)


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "chart") -> str:
    return f'<img class="{cls}" alt="{escape(alt)}" src="{data_uri(data, mime)}">'


def _run_title(view: RunView) -> str:
    if view.shared:
        model = view.metadata.get("model", {})
        return (
            f"concepts shared by {len(view.classes)} classes · {view.method.upper()} · "
            f"{model.get('model', '?')}"
        )
    cls = f"class {view.class_id}" + (f" “{view.class_name}”" if view.class_name else "")
    model = view.metadata.get("model", {})
    return f"{cls} · {view.method.upper()} · {model.get('model', '?')}"


def _metrics_table(view: RunView) -> str:
    splits = view.metrics
    if not splits:
        return '<p class="note">No metrics were saved with this run (run “evaluate --save”).</p>'
    head = "".join(f"<th>{escape(s)} images</th>" for s in splits)
    rows = []
    for key, (name, better, text) in METRIC_HELP.items():
        if not any(key in m for m in splits.values()):
            continue
        cells = "".join(f'<td class="num">{format_value(m.get(key))}</td>' for m in splits.values())
        rows.append(
            f"<tr><td><b>{escape(name)}</b> {better}</td>{cells}"
            f'<td class="help">{escape(text)}</td></tr>'
        )
    counts = ", ".join(f"{escape(s)}: {m.get('n_images', '?')} images" for s, m in splits.items())
    return (
        '<div class="scroll">'
        f"<table><tr><th>metric</th>{head}<th>what it measures</th></tr>{''.join(rows)}</table>"
        f'</div><p class="help">{counts}. ↑: higher is better, ↓: lower is better.</p>'
    )


def _importance_table(view: RunView) -> str:
    top = max((c.importance for c in view.concepts), default=0.0) or 1.0
    rows = []
    for c in view.concepts:
        width = max(0.0, 120 * c.importance / top)
        rows.append(
            f'<tr><td class="num">{c.rank}</td><td><a href="#{_concept_id(view, c.index)}">'
            f"concept {c.index}</a></td>"
            f'<td class="num">{c.importance:.3f}</td><td><span class="bar" style="width:{width:.0f}px">'
            f'</span> {percent(c.importance_share)}</td><td class="num">{format_value(c.contribution)}</td>'
            f'<td class="num">{percent(c.contribution_share)}</td></tr>'
        )
    if view.shared:  # means over the classes, each on its own images and its own logit
        tail = "<th>mean contribution to the class logits</th><th>mean share of prediction</th>"
    else:
        tail = "<th>contribution to class logit</th><th>share of prediction</th>"
    return (
        '<div class="scroll"><table><tr><th>rank</th><th>concept</th><th>importance</th>'
        f"<th>share of importance</th>{tail}</tr>" + "".join(rows) + "</table></div>"
    )


def _concept_id(view: RunView, index: int) -> str:
    return f"{view.anchor}-concept-{index}"


def _concept_section(view: RunView, c: Any) -> str:
    crops = "".join(
        _img(b, f"crop {i + 1} of concept {c.index}{_crop_class(c, i)}", "image/jpeg", "crop")
        for i, b in enumerate(c.crops)
    )
    heat = "".join(
        f"<figure>{_img(b, f'heatmap of concept {c.index} on {cap}', 'image/jpeg', 'heat')}"
        f"<figcaption>{escape(cap)}</figcaption></figure>"
        for cap, b in c.heatmaps
    )
    contribution = (
        ""
        if c.contribution is None
        else f"; contribution to the class logit {c.contribution:.3g} "
        f"(<b>{percent(c.contribution_share)}</b> of the prediction)"
    )
    return (
        f'<section class="concept" id="{_concept_id(view, c.index)}">'
        f"<h4>#{c.rank} · concept {c.index}</h4>"
        f"<p>importance {c.importance:.3f} (<b>{percent(c.importance_share)}</b> of the total)"
        f"{contribution}</p>"
        + (shared_concept_line(view, c) if view.shared else "")
        + (f'<p class="help">{_CROPS_HELP}</p><div class="strip">{crops}</div>' if crops else "")
        + (f'<p class="help">{_HEAT_HELP}</p><div class="strip">{heat}</div>' if heat else "")
        + "</section>"
    )


def _crop_class(c: Any, i: int) -> str:
    return f" (class {c.crop_captions[i]})" if i < len(c.crop_captions) else ""


def _config_block(view: RunView) -> str:
    meta = view.metadata
    keep: tuple[str, ...]
    keep = ("model", "class_id", "class_name", "config", "fit", "patch_settings", "n_images")
    keep += ("classes",) if view.shared else ()
    record = {k: meta[k] for k in keep if k in meta}
    record.update({k: meta[k] for k in ("created", "versions") if k in meta})
    if view.sidecar:
        record["command"] = view.sidecar
    text = json.dumps(record, indent=2, sort_keys=False, default=str)
    return f"<details><summary>Run configuration</summary><pre>{escape(text)}</pre></details>"


def _figure(view: RunView, key: str, caption: str) -> str:
    if key not in view.figures:
        return ""
    return f"<h3>{escape(caption)}</h3>{_img(view.figures[key], caption)}"


def _auto_kl_weight_card(view: RunView) -> str:
    """The card of a ``kl_weight="auto"`` fit: the choice, why, and the Pareto plot."""
    search = (view.metadata.get("fit") or {}).get("auto_kl_weight")
    if not isinstance(search, dict) or "auto_kl_weight" not in view.figures:
        return ""
    grid = ", ".join(f"{v:g}" for v in search.get("grid", []))
    tried = ", ".join(f"{p['kl_weight']:g}" for p in search["points"])
    text = (
        f"kl_weight='auto' chose λ = {search.get('chosen'):g}: {search.get('reason', '')} "
        f"(held out: {search.get('n_heldout_images', '?')} of the fitting images; grid {grid}; "
        f"tried {tried}). Each point is the held-out reconstruction error against the held-out "
        "KL at one λ; the ring marks the chosen λ."
    )
    caption = "λ chosen for you: reconstruction against KL over the tried λ"
    return f'{_figure(view, "auto_kl_weight", caption)}<p class="help">{escape(text)}</p>'


def concept_bank_fact(fit: dict[str, Any]) -> str:
    """The run card's line on the concept bank (``fit["bank"]``, recorded since issue 16)."""
    bank = fit.get("bank")
    if bank == "signed":
        return (
            "concept bank: signed (the layer's activations are signed: Semi-NMF, codes ≥ 0, "
            "each concept a signed direction of the layer rather than a part)"
        )
    return "concept bank: nonnegative (NMF)" if bank == "nonnegative" else ""


def _run_article(view: RunView) -> str:
    meta = view.metadata
    fit = meta.get("fit") or {}
    extra = [fact for fact in (concept_bank_fact(fit), importance_fact(fit)) if fact]
    facts = (
        f"{meta.get('n_images', '?')} images, {len(view.concepts)} concepts, layer "
        f"{escape(str((meta.get('model') or {}).get('layer')))}; "
        + "; ".join(escape(fact) for fact in [solver_summary(fit), *extra])
    )
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in view.notes)
    concepts = "".join(_concept_section(view, c) for c in view.concepts)
    if view.shared:
        return _shared_article(view, facts, notes, concepts)
    return (
        f'<article class="run" id="{view.anchor}"><h2>{escape(_run_title(view))}</h2>'
        f'<p class="help">run <code>{escape(str(view.path))}</code> · {facts}</p>{notes}'
        f"<h3>Metrics</h3>{_metrics_table(view)}"
        f"<h3>Concepts by importance</h3>{_importance_table(view)}"
        + _figure(view, "overview_heatmaps", "Where the top concepts are in one example image")
        + f"{concepts}"
        + _figure(view, "curves", f"Deletion and insertion curves ({view.curves_split} images)")
        + _figure(view, "loss", "Loss history")
        + _auto_kl_weight_card(view)
        + _config_block(view)
        + "</article>"
    )


def _shared_article(view: RunView, facts: str, notes: str, concepts: str) -> str:
    title = "Importance of each shared concept for each class"
    return (
        f'<article class="run shared" id="{view.anchor}"><h2>{escape(_run_title(view))}</h2>'
        f'<p class="help">run <code>{escape(str(view.path))}</code> · {facts}</p>{notes}'
        f"<h3>Metrics per class</h3>{class_metrics_table(view)}"
        f"<h3>{title}</h3>"
        + _img(view.figures["class_importance"], title)
        + class_importance_table(view)
        + f"<h3>Concepts by mean importance over classes</h3>{_importance_table(view)}"
        + _figure(view, "overview_heatmaps", "Where the top concepts are in one example image")
        + concepts
        + _figure(
            view, "curves", f"Deletion and insertion curves per class ({view.curves_split} images)"
        )
        + _figure(view, "loss", "Loss history")
        + _config_block(view)
        + "</article>"
    )


def _comparisons(views: list[RunView]) -> str:
    from face_concepts import viz

    by_class: dict[Any, list[RunView]] = defaultdict(list)
    for v in views:
        if v.curves is not None:
            by_class[v.class_id].append(v)
    out = []
    for cid, group in by_class.items():
        if len({v.method for v in group}) < 2:
            continue
        results = {f"{v.method} ({v.name})": v.curves for v in group if v.curves is not None}
        fig = viz.curves(results, class_name=group[0].class_name)
        splits = ", ".join(sorted({v.curves_split for v in group}))
        out.append(
            f"<h3>Class {escape(str(cid))} ({escape(splits)} images)</h3>"
            + _img(figure_png(fig), "curves")
        )
    if not out:
        return ""
    return '<section class="panel"><h2>Methods compared</h2>' + "".join(out) + "</section>"


def _overview(views: list[RunView]) -> str:
    keys = ("acc", "kl", "c_deletion", "c_insertion", "c_gini")
    head = "".join(f"<th>{METRIC_HELP[k][0]}</th>" for k in keys)
    rows = []
    for v in views:
        # A shared bank gives one row per class (its metrics are per class).
        entries = v.classes or [
            {"class_id": v.class_id, "class_name": v.class_name, "metrics": v.metrics}
        ]
        bank = f"shared by {len(v.classes)} classes" if v.shared else "own"
        for e in entries:
            metrics = {k: m for k, m in (e.get("metrics") or {}).items() if isinstance(m, dict)}
            # Held-out images say more than the fitting ones; fall back to what the run holds.
            split = next((k for k in ("heldout", "fit") if k in metrics), next(iter(metrics), ""))
            m = metrics.get(split, {})
            cells = "".join(f'<td class="num">{format_value(m.get(k))}</td>' for k in keys)
            # a shared bank's row names its class's own run, not the bank's folder each time
            label = f"{v.name}/{e['run']}" if v.shared and e.get("run") else v.name
            n = m.get("n_images")
            on = f"{split} ({n})" if split and n is not None else (split or "n/a")
            rows.append(
                f'<tr><td><a href="#{v.anchor}">{escape(label)}</a></td>'
                f"<td>{escape(str(e.get('class_id')))} {escape(e.get('class_name') or '')}</td>"
                f"<td>{escape(v.method)}</td><td>{escape(bank)}</td><td>{len(v.concepts)}</td>"
                f"<td>{escape(on)}</td>{cells}</tr>"
            )
    return (
        '<section class="panel"><h2>Runs</h2><div class="scroll"><table><tr><th>run</th>'
        "<th>class</th><th>method</th><th>concept bank</th><th>concepts</th>"
        f"<th>metrics on (images)</th>{head}</tr>{''.join(rows)}</table></div>"
        '<p class="help">Metrics on the held-out images where the run has them, else on the '
        "fitting images; each run's section below explains every metric.</p></section>"
    )


def render_atlas(views: list[RunView], *, title: str = "Concept atlas", generator: str = "") -> str:
    """The HTML page of an atlas of one or more analysed runs.

    Examples
    --------
    >>> "<!DOCTYPE html>" in render_atlas([])
    True
    """
    for i, v in enumerate(views):
        v.anchor = f"run-{i + 1}"
    models = sorted({str((v.metadata.get("model") or {}).get("model")) for v in views})
    sub = f"{len(views)} run(s) · model {', '.join(models)}" if views else "no runs"
    body = "".join(_run_article(v) for v in views)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{escape(title)}</h1><p><b>{escape(sub)}</b></p>"
        f'<p class="lead">{escape(_INTRO)}</p></header><main>'
        + (_overview(views) if views else "")
        + _comparisons(views)
        + body
        + f"</main><footer>{escape(generator)}</footer></body></html>"
    )
