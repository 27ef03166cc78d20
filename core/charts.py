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
