"""Comparisons: the same experiment with one setting varied, over one or more seeds.

One engine for every setting a user may compare (:data:`SETTINGS`): dropout
rate (the reason people come), pretrained vs from-scratch weights, locked vs
partly unlocked base, augmentation on vs off. :func:`plan_comparison` turns a
config and the values to try into planned runs that differ in that setting
only (and in the seed, when a value is repeated over seeds); every run re-scores
its training split in inference mode each epoch (``score_train``), since the
accuracy Keras logs during ``fit`` has dropout on and overstates the gap at
high rates.

Runs share the split (the data is split once, before) and, for one seed, the
initial weights: ``core.model`` seeds Keras with the config's seed just before
it builds the head, and a dropout layer has no weights, so two rates start from
the very same head. With a locked base and no augmentation the base features
are computed once and the heads of every rate train side by side on them, in
one fit (``core.train.train_together``).

:func:`summary_table` reduces the runs to one row per value (means and spread
over seeds) with a verdict from the numeric :data:`THRESHOLDS`; a difference
within the noise (the spread over seeds, and never less than one validation
image) gets no verdict of its own.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field, replace

from core.bases import base_label
from core.config import AUGMENTS, ConfigError, ExperimentConfig

DEFAULT_RATES = (0.0, 0.2, 0.5, 0.8)
PLACEMENTS = ("each", "output")  # dropout after each hidden dense layer, or before the output only
MAX_SEEDS = 10
MAX_VALUES = 8


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind the verdicts (shown on the page and written beside the table)."""

    overfit_gap: float = 0.10  # final train − validation accuracy at least this …
    gap_growth: float = 0.03  # … and grown by at least this since its smallest epoch: overfitting
    underfit_drop: float = 0.05  # train accuracy this far below the best value's, and validation
    #                              accuracy below the best beyond noise: under-fitting

    def text(self) -> list[str]:
        return [
            f"**overfitting**: the final train–validation gap is at least {self.overfit_gap:.0%} and grew by at "
            f"least {self.gap_growth:.0%} since its smallest epoch",
            f"**under-fitting**: train accuracy (re-scored without dropout) more than {self.underfit_drop:.0%} below "
            "the best setting's, and validation accuracy below the best's by more than the noise",
            "**best trade-off**: the highest mean validation accuracy (at each run's kept epoch), ahead of every other "
            "setting by more than the noise",
            "**noise**: the larger spread (standard deviation over seeds) of the two settings compared, and never "
            "less than one validation image; differences within it get no verdict",
        ]


THRESHOLDS = Thresholds()


# -- settings --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str  # dropout, weights, freeze, augment
    title: str  # a heading: "Dropout rate"
    column: str  # the table's value column: rate, weights, freeze, augment
    underfit_words: str = "under-fitting"


SETTINGS = {
    "dropout": Setting("dropout", "Dropout rate", "rate", "under-fitting: too much dropout"),
    "weights": Setting("weights", "Pretrained vs from-scratch weights", "weights"),
    "freeze": Setting("freeze", "Locked vs partly unlocked base", "freeze"),
    "augment": Setting("augment", "Augmentation on vs off", "augment"),
}


def get_setting(name: str) -> Setting:
    if name not in SETTINGS:
        raise ConfigError(f"setting: Expected one of {', '.join(SETTINGS)}. Received: {name!r}")
    return SETTINGS[name]


def default_values(setting: str, config: ExperimentConfig) -> list:
    """What a newcomer compares when they change nothing."""
    if setting == "dropout":
        return list(DEFAULT_RATES)
    if setting == "weights":
        return [config.weights, "none"] if config.weights != "none" else ["imagenet", "none"]
    if setting == "freeze":
        return ["all", "top:20"] if config.freeze == "all" else [config.freeze, "all"]
    return ["none", "default"]


def _items(values) -> list:
    if isinstance(values, (list, tuple)):
        return list(values)
    return [t for t in re.split(r"[,;\s]+", str(values)) if t.strip()]


def split_rates(values) -> tuple[list[float], list[str]]:
    """'0, 0.2, 1.0, x' → ([0.0, 0.2], [problems with 1.0 and x]): the valid rates, in order,
    and one 'Expected … Received: …' line per value refused (0 <= rate < 1, each once)."""
    rates, problems = [], []
    for item in _items(values):
        try:
            r = float(item)
        except (TypeError, ValueError):
            problems.append(f"rates: Expected numbers separated by commas. Received: {str(item).strip()!r}")
            continue
        if not 0 <= r < 1:  # NaN fails this too
            problems.append(f"dropout: Expected a rate with 0 <= rate < 1. Received: {r!r}")
        elif r in rates:
            problems.append(f"rates: Expected each rate once. Received: {r!r} twice")
        else:
            rates.append(r)
    return rates, problems


def parse_rates(values) -> list[float]:
    """The rates, all of them valid, or ConfigError naming every one refused."""
    rates, problems = split_rates(values)
    if problems:
        raise ConfigError(problems)
    if not rates:
        raise ConfigError("rates: Expected one or more dropout rates, e.g. 0, 0.2, 0.5, 0.8. Received: nothing")
    return rates


def value_label(setting: str, value) -> str:
    if setting == "dropout":
        return f"dropout {float(value):g}"
    if setting == "weights":
        return "weights " + replace(ExperimentConfig(), weights=str(value)).weights_label()
    if setting == "freeze":
        return f"lock {value}"
    return f"augment {value}"


def folder_name(setting: str, value, seed_index: int = 0, seed: int = 0) -> str:
    """A run folder's name: rate_0.2, weights_none, freeze_top-20, augment_default (+ _seedN)."""
    if setting == "dropout":
        name = f"rate_{float(value):g}"
    else:
        text = replace(ExperimentConfig(), weights=str(value)).weights_label() if setting == "weights" else str(value)
        name = f"{setting}_" + (re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "value")
    return name + (f"_seed{seed}" if seed_index else "")


def _apply(setting: str, config: ExperimentConfig, value, placement: str) -> ExperimentConfig:
    if setting == "dropout":
        if placement == "output" and len(config.dense) > 1:
            # only the last hidden layer's dropout, the one feeding the output, varies
            return replace(config, dropout=[0.0] * (len(config.dense) - 1) + [float(value)])
        return replace(config, dropout=float(value))
    return replace(config, **{setting: value})


# -- plans -------------------------------------------------------------------------------------------

@dataclass
class PlannedRun:
    variant: int  # index into plan.values
    seed_index: int
    config: ExperimentConfig
    label: str  # "dropout 0.2" or "dropout 0.2 · seed 1"
    folder: str  # rate_0.2, rate_0.2_seed1, …
    meta: dict  # what the run store keeps: setting, value, label, variant, seed


@dataclass
class ComparePlan:
    setting: str
    values: list
    labels: list[str]
    seeds: list[int]
    placement: str
    config: ExperimentConfig  # what every run shares
    runs: list[PlannedRun] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # values left out, each with its reason

    def fixed_text(self) -> str:
        """Everything held fixed, in words."""
        c = self.config
        parts = [f"base {base_label(c)}"]
        if self.setting != "weights":
            parts.append(f"weights {c.weights_label()}")
        if self.setting != "freeze":
            parts.append(f"lock {c.freeze}" + (f", cut at {c.cut}" if c.cut else ""))
        head = f"head {c.pooling_label()} → " + (" → ".join(f"Dense {u}" for u in c.dense) if c.dense else "no hidden layer")
        if self.setting != "dropout":
            head += " with dropout " + "/".join(f"{r:g}" for r in c.dropout_rates())
        parts.append(head)
        if self.setting != "augment":
            parts.append(f"augmentation {c.augment}")
        parts.append(f"{c.optimizer} lr {c.lr:g}, {c.epochs} epoch(s), batch {c.batch_size}"
                     + (f", early stopping {c.early_stopping}" if c.early_stopping else "")
                     + (f", then fine-tune top {c.fine_tune_layers}" if c.fine_tunes() else ""))
        seeds = f"seed {self.seeds[0]}" if len(self.seeds) == 1 else f"seeds {', '.join(map(str, self.seeds))}"
        parts.append(f"the same split and {seeds} for every value")
        return "; ".join(parts)


def plan_comparison(config: ExperimentConfig, setting: str = "dropout", values=None, seeds: int = 1,
                    placement: str = "each", strict: bool = True, val_size: int | None = None) -> ComparePlan:
    """Plan one run per value (times ``seeds``) of ``config`` with only ``setting`` changed.

    Values are checked before anything runs. ``strict`` refuses the whole plan when any value
    is invalid (the command line); otherwise the valid values go on and ``plan.refused`` says
    what was left out and why (the page). Raises ConfigError when nothing valid is left.
    """
    spec = get_setting(setting)
    problems = []
    if not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS:
        problems.append(f"seeds: Expected an integer from 1 to {MAX_SEEDS}. Received: {seeds!r}")
    if placement not in PLACEMENTS:
        problems.append(f"placement: Expected one of {', '.join(PLACEMENTS)}. Received: {placement!r}")
    if problems:
        raise ConfigError(problems)
    config = copy.deepcopy(config)
    config.validate()
    raw = default_values(setting, config) if values is None else values
    if setting == "dropout":
        valid, refused = split_rates(raw)
    else:
        valid, refused = [], []
        for v in _items(raw):
            v = str(v).strip()
            if v in valid:
                refused.append(f"{setting}: Expected each value once. Received: {v!r} twice")
                continue
            if setting == "augment" and v not in AUGMENTS:
                refused.append(f"augment: Expected one of {', '.join(AUGMENTS)}. Received: {v!r}")
                continue
            try:
                _apply(setting, config, v, placement).validate()
            except ConfigError as e:
                refused.extend(e.problems)
                continue
            valid.append(v)
    if len(valid) > MAX_VALUES:
        refused.append(f"{spec.column}: Expected at most {MAX_VALUES} values. Received: {len(valid)}")
        valid = valid[:MAX_VALUES]
    if refused and strict:
        raise ConfigError(refused)
    if not valid:
        raise ConfigError(refused or [f"{spec.column}: Expected one or more values to compare. Received: nothing"])
    seed_list = [int(config.seed) + i for i in range(seeds)]
    labels = [value_label(setting, v) for v in valid]
    plan = ComparePlan(setting, valid, labels, seed_list, placement, config, refused=refused)
    for i, value in enumerate(valid):
        for j, seed in enumerate(seed_list):
            cfg = replace(_apply(setting, config, value, placement), seed=seed, score_train=True).validate()
            label = labels[i] + (f" · seed {seed}" if seeds > 1 else "")
            meta = {"setting": setting, "value": value, "label": labels[i], "variant": i, "seed": seed,
                    "seed_index": j, "placement": placement, "seeds": seeds, "values": list(valid),
                    "labels": labels, "val_size": val_size}
            plan.runs.append(PlannedRun(i, j, cfg, label, folder_name(setting, value, j, seed), meta))
    return plan


# -- results --------------------------------------------------------------------------------------------

@dataclass
class Member:
    """One finished (or stopped) run of a comparison and its place in it."""

    variant: int
    seed: int
    result: object  # core.train.RunResult or core.experiments.StoredResult
    label: str = ""


@dataclass
class CompareResult:
    setting: str
    values: list
    labels: list[str]
    seeds: list[int]
    members: list[Member]
    stopped: bool = False
    val_size: int | None = None
    thresholds: Thresholds = THRESHOLDS

    @property
    def runs(self) -> list:
        return [m.result for m in self.members]

    def per_run(self):
        return per_run_frame(self.members)

    def table(self):
        return summary_table(self)

    def curves(self):
        return curves_frame(self.members, self.labels)

    def best(self):
        """The kept run of the best value (its best seed), or None."""
        table = self.table()
        scored = table.dropna(subset=["best val accuracy"])
        if not len(scored):
            return None
        variant = int(scored.sort_values("best val accuracy", ascending=False, kind="stable").iloc[0]["variant"])
        pool = [m.result for m in self.members if m.variant == variant and m.result.best_val_accuracy is not None]
        return max(pool, key=lambda r: r.best_val_accuracy) if pool else None

    def csv_text(self, full: bool = True) -> str:
        return comparison_csv(self, full=full)


def result_from_plan(plan: ComparePlan, results: list, stopped: bool = False, val_size: int | None = None) -> CompareResult:
    members = [Member(r.variant, r.config.seed, res, r.label) for r, res in zip(plan.runs, results)
               if res is not None and res.history]
    return CompareResult(plan.setting, list(plan.values), list(plan.labels), list(plan.seeds), members,
                         stopped=stopped, val_size=val_size)


def result_from_records(records: list, stored) -> CompareResult:
    """A comparison read back from the run store (``stored``: record → StoredResult)."""
    meta = next((r.meta for r in records if r.meta), {})
    setting = meta.get("setting", "dropout")
    if meta:
        values, labels = list(meta.get("values") or []), list(meta.get("labels") or [])
        seeds = sorted({int(r.meta.get("seed", 0)) for r in records if r.meta})
    else:  # a comparison stored before runs carried their place: one run per rate
        values = [ExperimentConfig.from_dict(r.config).dropout for r in records]
        labels = [value_label("dropout", v if not isinstance(v, list) else v[-1]) for v in values]
        seeds = [int(ExperimentConfig.from_dict(records[0].config).seed)] if records else [0]
    members = []
    for i, rec in enumerate(records):
        if rec.status not in ("finished", "stopped") or not rec.history:
            continue
        m = rec.meta or {"variant": i, "seed": seeds[0], "label": labels[i] if i < len(labels) else rec.label}
        members.append(Member(int(m["variant"]), int(m.get("seed", 0)), stored(rec), rec.label))
    return CompareResult(setting, values, labels, seeds, members,
                         stopped=any(r.status == "stopped" for r in records), val_size=meta.get("val_size"))


# -- numbers ---------------------------------------------------------------------------------------------

def run_numbers(result) -> dict:
    """One run's numbers: the kept epoch's validation accuracy, the last epoch's inference-mode
    train accuracy, validation accuracy, their gap and how far it grew since its smallest."""
    hist = list(result.history or [])
    last = hist[-1] if hist else {}

    def train_acc(row):
        v = row.get("train_eval_accuracy")
        return None if v is None or v != v else float(v)

    gaps = [train_acc(r) - float(r["val_accuracy"]) for r in hist
            if train_acc(r) is not None and r.get("val_accuracy") is not None]
    final_train = train_acc(last) if last else None
    final_val = float(last["val_accuracy"]) if last.get("val_accuracy") is not None else None
    gap = final_train - final_val if final_train is not None and final_val is not None else None
    return {
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "final_train_accuracy": final_train,
        "final_fit_accuracy": float(last["accuracy"]) if last.get("accuracy") is not None else None,
        "final_val_accuracy": final_val,
        "final_gap": gap,
        "gap_growth": gap - min(gaps) if gap is not None and gaps else None,
        "epochs": len(hist),
        "status": result.status,
    }


def per_run_frame(members: list[Member]):
    import pandas as pd

    rows = []
    for m in members:
        rows.append({"variant": m.variant, "label": m.label, "seed": m.seed, **run_numbers(m.result)})
    return pd.DataFrame(rows, columns=["variant", "label", "seed", "best_val_accuracy", "best_epoch",
                                       "final_train_accuracy", "final_fit_accuracy", "final_val_accuracy",
                                       "final_gap", "gap_growth", "epochs", "status"])


def _mean(xs):
    xs = [float(x) for x in xs if x is not None and x == x]
    return sum(xs) / len(xs) if xs else float("nan")


def _std(xs):
    xs = [float(x) for x in xs if x is not None and x == x]
    if len(xs) < 2:
        return float("nan")
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summary_table(result: CompareResult):
    """One row per value: means (and spread over seeds) of the run numbers, and a verdict."""
    import pandas as pd

    spec = get_setting(result.setting)
    runs = per_run_frame(result.members)
    rows = []
    for i, (value, label) in enumerate(zip(result.values, result.labels)):
        part = runs[runs["variant"] == i]
        if not len(part):
            continue
        rows.append({
            "variant": i, spec.column: value, "label": label, "seeds": len(part),
            "best val accuracy": _mean(part["best_val_accuracy"]), "best val accuracy sd": _std(part["best_val_accuracy"]),
            "epoch of best": _mean(part["best_epoch"]),
            "final train accuracy": _mean(part["final_train_accuracy"]),
            "final val accuracy": _mean(part["final_val_accuracy"]),
            "final gap": _mean(part["final_gap"]), "final gap sd": _std(part["final_gap"]),
            "gap growth": _mean(part["gap_growth"]),
            "epochs": _mean(part["epochs"]),
        })
    columns = ["variant", spec.column, "label", "seeds", "best val accuracy", "best val accuracy sd", "epoch of best",
               "final train accuracy", "final val accuracy", "final gap", "final gap sd", "gap growth", "epochs",
               "verdict"]
    table = pd.DataFrame(rows, columns=columns[:-1])
    numbers = [c for c in columns[4:-1] if c != "epochs"]
    # float32 logs against exact counts leave gaps like -1e-8: no "-0%" for a gap of zero
    values = table[numbers].astype(float)
    table[numbers] = values.mask(values.abs() < 1e-6, 0.0)
    table["verdict"] = verdicts(table, spec, result.val_size, result.thresholds) if len(table) else []
    return table[columns]


def noise(a: dict, b: dict, val_size: int | None) -> float:
    """The smallest difference in validation accuracy between two settings that is not noise."""
    floor = 1.0 / val_size if val_size else 0.01
    spreads = [s for s in (a.get("best val accuracy sd"), b.get("best val accuracy sd")) if s is not None and s == s]
    return max([floor] + spreads) + 1e-9  # 0.73 - 0.72 is a hair over 0.01 in floating point


def verdicts(table, spec: Setting, val_size: int | None = None, t: Thresholds = THRESHOLDS) -> list[str]:
    """A verdict in words per row of a summary table (see :class:`Thresholds`)."""
    rows = table.to_dict("records")
    scored = [r for r in rows if r["best val accuracy"] == r["best val accuracy"]]
    if not scored:
        return ["" for _ in rows]
    best = max(scored, key=lambda r: r["best val accuracy"])
    out = []
    for r in rows:
        if r["best val accuracy"] != r["best val accuracy"]:
            out.append("no finished epoch")
            continue
        gap, growth, train = r["final gap"], r["gap growth"], r["final train accuracy"]
        overfit = gap == gap and growth == growth and gap >= t.overfit_gap and growth >= t.gap_growth
        if r is best:
            ties = [o["label"] for o in scored if o is not r
                    and r["best val accuracy"] - o["best val accuracy"] <= noise(r, o, val_size)]
            if ties:
                out.append("no clear winner: within noise of " + ", ".join(ties))
            else:
                out.append("best trade-off" + (f" (but overfitting: gap {gap:.0%})" if overfit else ""))
            continue
        behind = best["best val accuracy"] - r["best val accuracy"]
        held_down = train == train and best["final train accuracy"] == best["final train accuracy"] and \
            best["final train accuracy"] - train > t.underfit_drop
        more_dropout = spec.name != "dropout" or _first_rate(r[spec.column]) > _first_rate(best[spec.column])
        if held_down and behind > noise(r, best, val_size) and more_dropout:
            out.append(spec.underfit_words)
        elif overfit:
            out.append("overfitting")
        elif behind <= noise(r, best, val_size):
            out.append("within noise of the best")
        else:
            out.append(f"{behind:.0%} behind the best")
    return out


def _first_rate(value) -> float:
    return float(value[-1] if isinstance(value, (list, tuple)) else value)


CSV_COLUMNS = ["best_val_accuracy", "best_epoch", "final_train_accuracy", "final_gap", "verdict"]


def comparison_csv(result: CompareResult, full: bool = False) -> str:
    """``rate,best_val_accuracy,best_epoch,final_train_accuracy,final_gap,verdict``, means over
    seeds (the first column is the setting's own name); ``full`` adds the spread and the rest."""
    import io

    spec = get_setting(result.setting)
    t = summary_table(result)
    out = t.rename(columns={"best val accuracy": "best_val_accuracy", "epoch of best": "best_epoch",
                            "final train accuracy": "final_train_accuracy", "final gap": "final_gap",
                            "final val accuracy": "final_val_accuracy", "best val accuracy sd": "best_val_accuracy_sd",
                            "final gap sd": "final_gap_sd", "gap growth": "gap_growth"})
    cols = [spec.column] + CSV_COLUMNS
    if full:
        cols += ["seeds", "best_val_accuracy_sd", "final_gap_sd", "final_val_accuracy", "gap_growth", "label"]
    if spec.name == "dropout":
        out[spec.column] = [f"{_first_rate(v):g}" for v in out[spec.column]]
    buf = io.StringIO()
    out[cols].to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


def curves_frame(members: list[Member], labels: list[str]):
    """Long frame: one row per run and epoch (variant label, seed, metrics, inference-mode gap)."""
    import pandas as pd

    frames = []
    for m in members:
        df = m.result.history_frame().copy()
        if "train_eval_accuracy" not in df:
            df["train_eval_accuracy"] = float("nan")
        df["run"] = labels[m.variant] if m.variant < len(labels) else m.label
        df["variant"] = m.variant
        df["seed"] = m.seed
        df["gap"] = pd.to_numeric(df["train_eval_accuracy"], errors="coerce") - pd.to_numeric(df["val_accuracy"], errors="coerce")
        frames.append(df)
    cols = ["run", "variant", "seed", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "train_eval_accuracy", "gap"]
    if not frames:
        return pd.DataFrame(columns=cols)
    return pd.concat(frames, ignore_index=True)


# -- running in this process (the command line) -------------------------------------------------------

def run_comparison(plan: ComparePlan, data, listeners=(), stop=None, out_dir=None, on_run_begin=None,
                   on_run_end=None, strategy=None, listeners_for=None) -> CompareResult:
    """Train every planned run; with ``out_dir`` each gets its run folder there (the same format
    as ``train``) and the comparison's CSV and charts are written beside them.

    Runs that differ in dropout only, on a locked base without augmentation, train side by side
    (:func:`core.train.train_together`: base features once, one fit for all their heads); any
    others one after another. ``listeners_for(run)`` gives a run listeners of its own."""
    from pathlib import Path

    from core.train import StopFlag, train_together, together_groups

    stop = stop or StopFlag()
    results: list = [None] * len(plan.runs)
    for group in together_groups([r.config for r in plan.runs]):
        if stop.is_set():
            break
        runs = [plan.runs[i] for i in group]
        for i in group:
            if on_run_begin:
                on_run_begin(i, plan.runs[i])
        done = train_together([r.config for r in runs], data,
                              listeners=[list(listeners) + list(listeners_for(r) if listeners_for else []) for r in runs],
                              stop=stop, strategy=strategy,
                              run_dirs=[Path(out_dir) / r.folder if out_dir is not None else None for r in runs])
        for i, res in zip(group, done):
            results[i] = res
            if on_run_end:
                on_run_end(i, plan.runs[i], res)
    result = result_from_plan(plan, results, stopped=stop.is_set(), val_size=len(data.validation))
    if out_dir is not None:
        write_comparison(result, out_dir)
    return result


def write_comparison(result: CompareResult, out_dir) -> list:
    """Into ``out_dir``: comparison.csv (the table, means over seeds), comparison_runs.csv (each
    run's numbers) and comparison.html (table and charts, standalone)."""
    from pathlib import Path

    from core.charts import comparison_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "comparison.csv", out / "comparison_runs.csv", out / "comparison.html"]
    files[0].write_text(comparison_csv(result), encoding="utf-8")
    files[1].write_text(result.per_run().to_csv(index=False, float_format="%.4f"), encoding="utf-8")
    files[2].write_text(comparison_html(result), encoding="utf-8")
    return files
