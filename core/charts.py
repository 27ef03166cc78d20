"""Plotly figures from DataFrames: the only module that imports plotly.

Every function takes a DataFrame (or array) and returns a ``plotly`` Figure;
pages only hand the figure to ``st.plotly_chart``.
"""
from __future__ import annotations

import plotly.graph_objects as go

TRAIN_COLOUR = "#2E7D6B"
VAL_COLOUR = "#E07A1F"
BEST_COLOUR = "#B63B6F"
PALETTE = ["#2E7D6B", "#E07A1F", "#3B6FB6", "#B63B6F", "#7A7A7A", "#8C6D1F", "#5B3BB6", "#1FA3A3"]
METRIC_TITLES = {"loss": "Loss", "accuracy": "Accuracy", "val_loss": "Validation loss", "val_accuracy": "Validation accuracy"}


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 320) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.0, xanchor="left"), height=height, margin=dict(l=50, r=20, t=50, b=45),
        xaxis_title=x, yaxis_title=y, template="plotly_white",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
    )
    return fig


def history_figure(history, metric: str = "loss", epochs: int | None = None, best_epoch: int | None = None,
                   best_note: str = "best epoch") -> go.Figure:
    """Train and validation curves of ``metric`` ("loss" or "accuracy") per epoch.

    ``best_epoch`` draws a dotted line and a ring on the validation point of
    the epoch whose weights were kept; a change of ``phase`` between epochs
    (e.g. head training, then fine-tuning) draws a dashed boundary labelled
    with the new phase.
    """
    fig = go.Figure()
    has = history is not None and len(history)
    if has:
        for col, name, colour, dash in ((metric, "train", TRAIN_COLOUR, "solid"),
                                        (f"val_{metric}", "validation", VAL_COLOUR, "dash")):
            if col in history and history[col].notna().any():
                fig.add_trace(go.Scatter(x=history["epoch"], y=history[col], mode="lines+markers", name=name,
                                         line=dict(color=colour, dash=dash)))
        for epoch, phase in phase_boundaries(history):
            fig.add_vline(x=epoch - 0.5, line=dict(color="#7A7A7A", dash="dash", width=1),
                          annotation_text=phase, annotation_position="top right")
        if best_epoch is not None and (history["epoch"] == best_epoch).any():
            col = f"val_{metric}" if f"val_{metric}" in history else metric
            y = history.loc[history["epoch"] == best_epoch, col].iloc[0]
            fig.add_vline(x=best_epoch, line=dict(color=BEST_COLOUR, dash="dot", width=1.5))
            if y == y and y is not None:  # not NaN
                fig.add_trace(go.Scatter(x=[best_epoch], y=[y], mode="markers", name=best_note,
                                         marker=dict(size=14, color="rgba(0,0,0,0)",
                                                     line=dict(color=BEST_COLOUR, width=2.5))))
    _layout(fig, METRIC_TITLES.get(metric, metric), "epoch", metric)
    if epochs:
        fig.update_xaxes(range=[0.5, max(epochs, 1) + 0.5], dtick=max(1, -(-epochs // 10)))
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def phase_boundaries(history) -> list[tuple[int, str]]:
    """(first epoch, phase) wherever the ``phase`` column changes between consecutive epochs."""
    if history is None or "phase" not in history or not len(history):
        return []
    out, prev = [], None
    for epoch, phase in zip(history["epoch"], history["phase"]):
        phase = phase if isinstance(phase, str) else ""
        if prev is not None and phase and phase != prev:
            out.append((int(epoch), phase))
        prev = phase
    return out


def compare_figure(curves, metric: str = "val_accuracy") -> go.Figure:
    """One line per run (column ``run``) of ``metric`` per epoch, overlaid."""
    fig = go.Figure()
    if curves is not None and len(curves):
        for i, (run, df) in enumerate(curves.groupby("run", sort=False)):
            fig.add_trace(go.Scatter(x=df["epoch"], y=df[metric], mode="lines+markers", name=str(run),
                                     line=dict(color=PALETTE[i % len(PALETTE)])))
    _layout(fig, METRIC_TITLES.get(metric, metric), "epoch", metric)
    if "accuracy" in metric:
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def class_balance_figure(counts) -> go.Figure:
    """Grouped bars of images per class; ``counts`` has columns class, split, images."""
    fig = go.Figure()
    if counts is not None and len(counts):
        for i, (split, df) in enumerate(counts.groupby("split", sort=False)):
            fig.add_trace(go.Bar(x=df["class"], y=df["images"], name=str(split), text=df["images"],
                                 textposition="auto", marker_color=PALETTE[i % len(PALETTE)]))
    _layout(fig, "Images per class", "class", "images", height=300)
    fig.update_layout(barmode="group")
    return fig


def confusion_figure(cm_frame, normalized: bool = False) -> go.Figure:
    """Heat map of a confusion matrix frame (rows true, columns predicted) with counts,
    or with ``normalized`` the share of each true class (rows sum to 1), as percentages."""
    z = cm_frame.to_numpy()
    labels_x = [str(c) for c in cm_frame.columns]
    labels_y = [str(c) for c in cm_frame.index]
    if normalized:
        text = [[f"{v:.0%}" for v in row] for row in z]
        hover = "true %{y}<br>predicted %{x}<br>%{z:.1%} of the true class<extra></extra>"
    else:
        text, hover = z, "true %{y}<br>predicted %{x}<br>%{z} image(s)<extra></extra>"
    fig = go.Figure(go.Heatmap(z=z, x=labels_x, y=labels_y, colorscale="Greens", showscale=False,
                               zmin=0, zmax=1 if normalized else None,
                               text=text, texttemplate="%{text}", hovertemplate=hover))
    size = 120 + 60 * max(2, len(labels_y))
    _layout(fig, "Confusion matrix" + (" (share of each true class)" if normalized else ""), "predicted", "true",
            height=min(700, size))
    fig.update_yaxes(autorange="reversed")
    return fig


def probability_figure(rows) -> go.Figure:
    """Horizontal bars of class probabilities for one image (columns class, probability)."""
    fig = go.Figure(go.Bar(x=rows["probability"], y=rows["class"], orientation="h", marker_color=TRAIN_COLOUR,
                           text=[f"{p:.1%}" for p in rows["probability"]], textposition="auto"))
    _layout(fig, "", "probability", "", height=60 + 40 * len(rows))
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed")
    return fig


# -- comparisons (core.compare) ------------------------------------------------------------------------

def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"


def _per_epoch(df, metric: str):
    """Mean, min and max of ``metric`` over a value's seeds, per epoch."""
    import pandas as pd

    values = pd.to_numeric(df[metric], errors="coerce")
    g = values.groupby(df["epoch"])
    return g.mean(), g.min(), g.max(), int(df["seed"].nunique()) if "seed" in df else 1


def compare_band_figure(curves, metric: str = "val_accuracy") -> go.Figure:
    """One colour per compared value: the mean of ``metric`` over its seeds per epoch, with the
    range over seeds shaded when there are several (the noise, shown)."""
    fig = go.Figure()
    if curves is not None and len(curves):
        for i, (run, df) in enumerate(curves.groupby("run", sort=False)):
            colour = PALETTE[i % len(PALETTE)]
            mean, lo, hi, seeds = _per_epoch(df, metric)
            if seeds > 1:
                fig.add_trace(go.Scatter(x=list(hi.index) + list(lo.index[::-1]), y=list(hi) + list(lo[::-1]),
                                         fill="toself", fillcolor=_rgba(colour, 0.15), line=dict(width=0),
                                         hoverinfo="skip", showlegend=False, name=f"{run} range"))
            fig.add_trace(go.Scatter(x=list(mean.index), y=list(mean), mode="lines+markers", line=dict(color=colour),
                                     name=str(run) + (f" (mean of {seeds} seeds)" if seeds > 1 else "")))
    _layout(fig, METRIC_TITLES.get(metric, metric), "epoch", metric, height=360)
    # below the plot: a legend of several settings would run into the title at half width
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0.0),
                      margin=dict(b=90))
    if "accuracy" in metric:
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    _whole_epochs(fig, curves)
    return fig


def small_multiples_figure(curves) -> go.Figure:
    """One panel per compared value: train accuracy re-scored without dropout (solid) against
    validation accuracy (dashed), so each value's gap is visible on its own."""
    from plotly.subplots import make_subplots

    groups = list(curves.groupby("run", sort=False)) if curves is not None and len(curves) else []
    n = max(1, len(groups))
    cols = min(4, n)
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[str(g[0]) for g in groups] or [""],
                        shared_yaxes=True, horizontal_spacing=0.04, vertical_spacing=0.16)
    for i, (run, df) in enumerate(groups):
        r, c = i // cols + 1, i % cols + 1
        for metric, name, colour, dash in (("train_eval_accuracy", "train (no dropout)", TRAIN_COLOUR, "solid"),
                                           ("val_accuracy", "validation", VAL_COLOUR, "dash")):
            mean, _, _, _ = _per_epoch(df, metric)
            fig.add_trace(go.Scatter(x=list(mean.index), y=list(mean), mode="lines", name=name, legendgroup=name,
                                     showlegend=i == 0, line=dict(color=colour, dash=dash)), row=r, col=c)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    _layout(fig, "Train vs validation accuracy, per setting", "", "", height=260 * rows + 110)
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.08, xanchor="left", x=0.0))
    _whole_epochs(fig, curves)
    return fig


def _whole_epochs(fig: go.Figure, curves) -> None:
    """Epoch axes tick at whole epochs (no 1.5) when there are few."""
    if curves is not None and len(curves) and curves["epoch"].max() <= 20:
        fig.update_xaxes(dtick=1)


def compare_bars_figure(table, column: str = "rate") -> go.Figure:
    """Bars of best validation accuracy and of the final train–validation gap for each compared
    value, with the spread over seeds as error bars."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["Best validation accuracy", "Final train–validation gap"],
                        horizontal_spacing=0.12)
    if table is not None and len(table):
        x = [str(lbl) for lbl in table["label"]]
        for col, (metric, sd, colour) in enumerate((("best val accuracy", "best val accuracy sd", VAL_COLOUR),
                                                     ("final gap", "final gap sd", TRAIN_COLOUR)), start=1):
            err = [0 if v != v else v for v in table[sd]]
            fig.add_trace(go.Bar(x=x, y=table[metric], marker_color=colour, showlegend=False,
                                 error_y=dict(type="data", array=err, visible=any(err)),
                                 text=[f"{v:.1%}" if v == v else "" for v in table[metric]], textposition="outside"),
                          row=1, col=col)
    fig.update_yaxes(tickformat=".0%", row=1, col=1, range=[0, 1.1])
    fig.update_yaxes(tickformat=".1%", row=1, col=2)  # gaps are often a few points: no "1%, 1%, 2%"
    _layout(fig, "", "", "", height=340)
    return fig


def comparison_figures(result) -> dict:
    """Every chart of a comparison (a core.compare.CompareResult), by name."""
    from core.compare import get_setting

    curves, table = result.curves(), result.table()
    return {
        "val_accuracy": compare_band_figure(curves, "val_accuracy"),
        "val_loss": compare_band_figure(curves, "val_loss"),
        "panels": small_multiples_figure(curves),
        "bars": compare_bars_figure(table, get_setting(result.setting).column),
    }


def comparison_html(result) -> str:
    """A standalone HTML page (plotly.js inside, no network needed) with the comparison's
    table, verdict thresholds and charts."""
    import html

    from core.compare import get_setting

    spec = get_setting(result.setting)
    table = result.table().drop(columns=["variant"])
    figs = comparison_figures(result)
    parts = []
    for i, fig in enumerate(figs.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=i == 0))
    rules = "".join(f"<li>{html.escape(t).replace('**', '')}</li>" for t in result.thresholds.text())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Transfer Lab: "
            f"{html.escape(spec.title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style></head><body>"
            f"<h1>{html.escape(spec.title)}</h1>"
            + table.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")
            + f"<p>Verdicts:</p><ul>{rules}</ul>" + "".join(parts) + "</body></html>")
