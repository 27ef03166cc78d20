"""Experiment configuration: one validated dataclass that round-trips to JSON.

This module sits at the bottom of ``core``: it imports nothing heavy, so pages
and the command line can read, check and write configs without TensorFlow.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

POOLINGS = ("gap", "flatten")
POOLING_LABELS = {"gap": "GAP", "flatten": "Flatten"}  # how the pages and notes name them
AUGMENTS = ("none", "default")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
MONITORS = ("val_loss", "val_accuracy")  # what picks the best epoch (kept weights) and early stopping

# A Flatten head on a large feature map multiplies H*W*C by the units of the
# first dense layer; past this many head parameters we refuse and suggest GAP.
MAX_HEAD_PARAMS = 60_000_000


class ConfigError(ValueError):
    """A setting is invalid. The message says what was expected and received."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ExperimentConfig:
    base: str = "mobilenet_v2"
    alpha: float = 1.0
    image_size: int | None = None  # None: the base's default size
    weights: str = "imagenet"  # "imagenet", "none", or a path to a weights file
    freeze: str = "all"  # "all", "none", "up-to:LAYER", "top:N"
    cut: str | None = None  # attach the head at this layer of the base
    train_batchnorm: bool = False  # unlocked BatchNorm layers stay locked unless True
    pooling: str = "gap"
    dense: list[int] = field(default_factory=lambda: [128])
    dropout: float | list[float] = 0.2  # one rate for all dropout layers, or one per layer
    augment: str = "none"
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    epochs: int = 10
    batch_size: int = 32
    val_split: float = 0.2
    test_split: float = 0.0  # fraction held out for a final score when the data has no test/ folder
    class_weights: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    early_stopping: int = 0  # patience in epochs on the monitored metric; 0 is off
    monitor: str = "val_loss"  # the best epoch (whose weights are kept) and early stopping watch this
    seed: int = 0
    # Two-phase fine-tuning: after the head phase (``epochs``), unlock the top
    # ``fine_tune_layers`` layers of the base (BatchNorm stays locked unless
    # train_batchnorm) and train ``fine_tune_epochs`` more at ``fine_tune_lr``
    # (None: lr / 10). 0 layers: no second phase.
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 10
    fine_tune_lr: float | None = None
    # Re-score the training split in inference mode (no dropout, no augmentation) after each
    # epoch: the honest train accuracy for a train–validation gap (comparisons turn it on).
    score_train: bool = False

    def resolved_fine_tune_lr(self) -> float:
        return float(self.fine_tune_lr) if self.fine_tune_lr is not None else float(self.lr) / 10

    def total_epochs(self) -> int:
        """The last epoch number a run of this config reaches: the first phase's, then fine-tuning's."""
        return int(self.epochs) + (int(self.fine_tune_epochs) if self.fine_tunes() else 0)

    def fine_tunes(self) -> bool:
        """Whether a second, fine-tuning phase follows the head phase."""
        return bool(self.fine_tune_layers) and bool(self.fine_tune_epochs)

    # -- derived -------------------------------------------------------------
    def resolved_image_size(self) -> int:
        if self.image_size is not None:
            return int(self.image_size)
        from core.bases import get_spec

        return get_spec(self.base).default_size

    def dropout_rates(self) -> list[float]:
        """One rate per dropout layer: after each dense layer, or one before the output."""
        n = max(1, len(self.dense))
        if isinstance(self.dropout, (list, tuple)):
            return [float(r) for r in self.dropout]
        return [float(self.dropout)] * n

    def pooling_label(self) -> str:
        """The pooling as the pages and notes name it (GAP, Flatten)."""
        return POOLING_LABELS.get(self.pooling, self.pooling)

    def weights_label(self) -> str:
        if self.weights == "none":
            return "none (from scratch)"
        if self.weights == "imagenet":
            return "imagenet"
        return f"file: {Path(self.weights).name}"

    # -- validation ----------------------------------------------------------
    def problems(self) -> list[str]:
        """Every invalid setting, each as 'name: Expected … Received: …'."""
        from core.bases import BASES, get_spec
        from core.freeze import FreezeSpec

        out: list[str] = []

        def bad(name, expected, received):
            out.append(f"{name}: Expected {expected}. Received: {received!r}")

        if not isinstance(self.base, str) or self.base not in BASES:
            bad("base", f"one of {', '.join(BASES)}", self.base)
            spec = None
        else:
            spec = get_spec(self.base)
        if not _is_number(self.alpha) or self.alpha <= 0:
            bad("alpha", "a positive width multiplier", self.alpha)
        elif spec and spec.alphas and float(self.alpha) not in spec.alphas:
            bad("alpha", f"one of {', '.join(str(a) for a in spec.alphas)} for {self.base}", self.alpha)
        elif spec and not spec.alphas and float(self.alpha) != 1.0:
            bad("alpha", f"1.0 ({self.base} has no width multiplier)", self.alpha)
        if self.image_size is not None:
            lo = spec.min_size if spec else 32
            if not _is_int(self.image_size) or self.image_size < lo or self.image_size > 1024:
                bad("image_size", f"an integer from {lo} to 1024", self.image_size)
        if not isinstance(self.weights, str) or not self.weights or "\0" in self.weights:
            bad("weights", "'imagenet', 'none' or a path to a weights file", self.weights)
        elif self.weights not in ("imagenet", "none") and not Path(self.weights).is_file():
            bad("weights", "'imagenet', 'none' or an existing weights file", self.weights)
        try:
            FreezeSpec.parse(self.freeze)
        except ConfigError as e:
            out.extend(e.problems)
        if self.cut is not None and (not isinstance(self.cut, str) or not self.cut):
            bad("cut", "a layer name of the base", self.cut)
        if not isinstance(self.pooling, str) or self.pooling not in POOLINGS:
            bad("pooling", f"one of {', '.join(POOLINGS)}", self.pooling)
        if not isinstance(self.dense, (list, tuple)) or not all(_is_int(u) and u > 0 for u in self.dense):
            bad("dense", "a list of positive unit counts (empty for no hidden layer)", self.dense)
        rates = self.dropout if isinstance(self.dropout, (list, tuple)) else [self.dropout]
        for r in rates:
            if not _is_number(r) or not 0 <= r < 1:
                bad("dropout", "a rate with 0 <= rate < 1", r)
        if isinstance(self.dropout, (list, tuple)) and isinstance(self.dense, (list, tuple)):
            n = max(1, len(self.dense))
            if len(self.dropout) != n:
                bad("dropout", f"{n} rate(s), one per dropout layer", list(self.dropout))
        if not isinstance(self.augment, str) or self.augment not in AUGMENTS:
            bad("augment", f"one of {', '.join(AUGMENTS)}", self.augment)
        if not isinstance(self.optimizer, str) or self.optimizer not in OPTIMIZERS:
            bad("optimizer", f"one of {', '.join(OPTIMIZERS)}", self.optimizer)
        if not _is_number(self.lr) or not 0 < self.lr <= 10:
            bad("lr", "a learning rate with 0 < lr <= 10", self.lr)
        if not _is_int(self.epochs) or not 1 <= self.epochs <= 1000:
            bad("epochs", "an integer from 1 to 1000", self.epochs)
        if not _is_int(self.batch_size) or not 1 <= self.batch_size <= 4096:
            bad("batch_size", "an integer from 1 to 4096", self.batch_size)
        if not _is_number(self.val_split) or not 0 < self.val_split < 1:
            bad("val_split", "a fraction with 0 < val_split < 1", self.val_split)
        val_ok = _is_number(self.val_split) and 0 < self.val_split < 1
        if not _is_number(self.test_split) or not 0 <= self.test_split < 1 or (
                val_ok and self.val_split + self.test_split >= 1):
            bad("test_split", "a fraction with 0 <= test_split and val_split + test_split < 1", self.test_split)
        if not isinstance(self.class_weights, bool):
            bad("class_weights", "true or false", self.class_weights)
        if not _is_int(self.early_stopping) or self.early_stopping < 0:
            bad("early_stopping", "a patience of 0 (off) or more epochs", self.early_stopping)
        if not isinstance(self.monitor, str) or self.monitor not in MONITORS:
            bad("monitor", f"one of {', '.join(MONITORS)}", self.monitor)
        if not _is_int(self.fine_tune_layers) or not 0 <= self.fine_tune_layers <= 10_000:
            bad("fine_tune_layers", "0 (no fine-tuning) or the number of top base layers to unlock", self.fine_tune_layers)
        if not _is_int(self.fine_tune_epochs) or not 0 <= self.fine_tune_epochs <= 1000:
            bad("fine_tune_epochs", "an integer from 0 to 1000", self.fine_tune_epochs)
        if self.fine_tune_lr is not None and (not _is_number(self.fine_tune_lr) or not 0 < self.fine_tune_lr <= 10):
            bad("fine_tune_lr", "a learning rate with 0 < lr <= 10, or null for lr / 10", self.fine_tune_lr)
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            bad("seed", "an integer with 0 <= seed < 2**32", self.seed)
        if not isinstance(self.train_batchnorm, bool):
            bad("train_batchnorm", "true or false", self.train_batchnorm)
        if not isinstance(self.score_train, bool):
            bad("score_train", "true or false", self.score_train)
        return out

    def mended(self) -> tuple["ExperimentConfig", list[str]]:
        """This config with each setting that fails its check back at its default, and the names
        of those settings (all of them: ``["all"]`` when the problems name no setting)."""
        names = {f.name for f in fields(self)}
        default = type(self)()
        config, reset = self, []
        for _ in range(3):  # a reset base can make its alpha or image size invalid: check again
            bad = sorted({p.split(":", 1)[0] for p in config.problems()})
            if not bad:
                return config, sorted(reset)
            if not set(bad) <= names:
                break
            config = replace(config, **{name: getattr(default, name) for name in bad})
            reset += [name for name in bad if name not in reset]
        return default, ["all"]

    def validate(self) -> "ExperimentConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("dense", "dropout"):
            if isinstance(d[key], tuple):
                d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config: Expected a JSON object. Received: {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"config: Expected only the keys {', '.join(sorted(known))}. "
                f"Received unknown key(s): {', '.join(unknown)}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ExperimentConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"config: Expected valid JSON. Received: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        try:
            text = Path(path).read_text(encoding="utf-8-sig")  # a BOM from Notepad is fine
        except UnicodeDecodeError:
            raise ConfigError(f"config: Expected a JSON text file. Received: {path} (binary data)") from None
        except OSError as e:
            raise ConfigError(f"config: Expected a readable JSON file. Received: {path} ({e.strerror})") from None
        return cls.from_json(text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
