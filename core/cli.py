"""The headless command: ``python -m core train …``, ``compare-dropout …``, ``predict …`` and more.

The same core the app calls: this file only parses arguments, prints
progress and maps errors to exit codes (2: wrong command line or setting,
1: data, weights or model problems). A user mistake is one ``error: …`` line,
never a traceback.
"""
from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
from pathlib import Path

from core.config import ConfigError, ExperimentConfig


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        words = self.prog.split()
        cmd = f"python -m core {words[-1]} --help" if words[-1] in ("train", "compare-dropout", "compare", "continue", "scan", "predict", "evaluate", "export") else "python -m core --help"
        print(f"error: {message} (see: {cmd})", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m core", description="Transfer Lab: transfer learning from the command line.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    t = sub.add_parser("train", help="train a model on a folder or zip of class folders")
    t.add_argument("--data", required=True, help="folder or .zip with class folders, or train/ + validation/")
    t.add_argument("--out", required=True, help="run folder to write model.keras, config.json, … into")
    t.add_argument("--config", help="a config.json (as written into a run folder); flags override it")
    _add_experiment_flags(t)
    _add_run_flags(t)

    for name, text in (("compare-dropout", "train the same experiment at several dropout rates and compare them"),
                       ("compare", "train the same experiment with one other setting varied and compare")):
        cd = sub.add_parser(name, help=text)
        cd.add_argument("--data", required=True, help="folder or .zip with class folders, or train/ + validation/")
        cd.add_argument("--out", required=True, help="folder for one run folder per value and comparison.csv / .html")
        cd.add_argument("--config", help="a config.json (as written into a run folder); flags override it")
        if name == "compare-dropout":
            cd.add_argument("--rates", default="0,0.2,0.5,0.8", help="dropout rates, 0 <= rate < 1 (default 0,0.2,0.5,0.8)")
            cd.add_argument("--placement", choices=("each", "output"), default="each",
                            help="the rate after each hidden dense layer (default) or only before the output")
        else:
            cd.add_argument("--setting", required=True, choices=("weights", "freeze", "augment"),
                            help="weights (e.g. imagenet,none), freeze (e.g. all,top:20) or augment (none,default)")
            cd.add_argument("--values", help="the values to compare, separated by commas (default: the setting's pair)")
        cd.add_argument("--seeds", type=int, default=1, help="repeat each value over N seeds (seed, seed+1, …; default 1)")
        _add_experiment_flags(cd)
        _add_run_flags(cd)

    c = sub.add_parser("continue", help="train a finished or stopped run further (more epochs or fine-tuning), in its folder")
    c.add_argument("run", help="a run folder written by train (model.keras, config.json, history.csv, run.json)")
    c.add_argument("--epochs", type=int, default=0, help="more epochs of the run's last phase (default 0)")
    c.add_argument("--fine-tune", type=int, metavar="N", dest="fine_tune", help="then unlock the top N base layers and fine-tune")
    c.add_argument("--fine-tune-epochs", type=int, metavar="E", help="epochs of that fine-tuning (default: the config's)")
    c.add_argument("--fine-tune-lr", type=float, metavar="LR", help="its learning rate (default: the config's, lr / 10)")
    _add_run_flags(c)

    sc = sub.add_parser("scan", help="check a dataset: usable images per class, skipped files and why")
    sc.add_argument("path", help="folder or .zip with class folders, or train/ + validation/")
    sc.add_argument("--report", help="write the skipped files as CSV (file,reason)")
    sc.add_argument("--val-split", type=float, default=0.2)
    sc.add_argument("--test-split", type=float, default=0.0)
    sc.add_argument("--seed", type=int, default=0)

    pr = sub.add_parser("predict", help="predict the classes of images with a trained model.keras")
    pr.add_argument("model", help="a model.keras written by train")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--top", type=int, default=1, help="rows per image, best first (default 1)")

    ev = sub.add_parser("evaluate", help="score a run folder's model: per-class table, evaluation.json")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train")
    ev.add_argument("--data", help="score this folder or zip of class folders instead of the run's own "
                                   "test (else validation) files listed in run.json")

    ex = sub.add_parser("export", help="write model.keras, model.tflite, train.py into a run folder")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train")
    ex.add_argument("--format", default="keras,tflite,script",
                    help="comma-separated: keras, tflite, script (default: all three)")
    ex.add_argument("--quantize", action="store_true",
                    help="also write model_quant.tflite (dynamic-range quantised, about 4x smaller)")
    return p


def _add_experiment_flags(t) -> None:
    """The experiment's settings, as train and the compare commands take them."""
    t.add_argument("--base", help="mobilenet, mobilenet_v2 (default), inception_v3, efficientnet_b0, resnet50, …")
    t.add_argument("--alpha", type=float, help="width of MobileNet families (default 1.0)")
    t.add_argument("--image-size", type=int, help="square input size (default: the base's)")
    t.add_argument("--weights", help="imagenet (default), none, or a weights file (.h5 / .weights.h5)")
    t.add_argument("--freeze", help="all (default), none, up-to:LAYER, top:N")
    t.add_argument("--cut", help="attach the head at this layer of the base (default: its last)")
    t.add_argument("--train-batchnorm", action="store_true", default=None,
                   help="let unlocked BatchNorm layers train too (off by default)")
    t.add_argument("--pooling", help="gap (default) or flatten")
    t.add_argument("--dense", type=int, action="append", help="units of a hidden dense layer; repeat for several; 0 for none (default 128)")
    t.add_argument("--dropout", type=float, action="append", help="rate after each hidden dense layer, 0 <= rate < 1 (default 0.2); repeat for one per layer")
    t.add_argument("--augment", help="none (default) or default (flip, rotation, zoom, shift, contrast)")
    t.add_argument("--optimizer", help="rmsprop (default), adam or sgd")
    t.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    t.add_argument("--epochs", type=int, help="default 10")
    t.add_argument("--batch-size", type=int, help="default 32")
    t.add_argument("--val-split", type=float, help="validation fraction when the data has no validation/ (default 0.2)")
    t.add_argument("--test-split", type=float, help="fraction held out as a test split when the data has no test/ (default 0)")
    t.add_argument("--class-weights", action="store_true", default=None, help="weight classes by inverse frequency")
    t.add_argument("--early-stopping", type=int, metavar="PATIENCE",
                   help="end a phase after PATIENCE epochs without a better --monitor value (default off)")
    t.add_argument("--monitor", help="val_loss (default) or val_accuracy: picks the best epoch, whose weights are "
                                     "kept, and drives --early-stopping")
    t.add_argument("--fine-tune", type=int, metavar="N", dest="fine_tune",
                   help="after the head phase, unlock the top N base layers (BatchNorm stays locked unless "
                        "--train-batchnorm) and train on at a lower learning rate (default 0: no fine-tuning)")
    t.add_argument("--fine-tune-epochs", type=int, metavar="E", help="epochs of the fine-tuning phase (default 10)")
    t.add_argument("--fine-tune-lr", type=float, metavar="LR", help="learning rate of the fine-tuning phase (default --lr / 10)")
    t.add_argument("--seed", type=int, help="seeds the split, the weights and the shuffling (default 0)")


def _add_run_flags(p) -> None:
    from core.train import STRATEGIES

    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="tf.distribute strategy: auto (default: MultiWorkerMirrored when TF_CONFIG names several "
                        "workers, Mirrored when several GPUs are visible, else one device), default, mirrored, multi-worker")
    p.add_argument("--quiet", action="store_true", help="print only the summary")


def config_from_args(args) -> ExperimentConfig:
    """Defaults, then the --config file, then the flags given."""
    cfg = ExperimentConfig.load(args.config).to_dict() if args.config else ExperimentConfig().to_dict()
    flags = {
        "base": args.base, "alpha": args.alpha, "image_size": args.image_size, "weights": args.weights,
        "freeze": args.freeze, "cut": args.cut, "train_batchnorm": args.train_batchnorm, "pooling": args.pooling,
        "augment": args.augment, "optimizer": args.optimizer, "lr": args.lr, "epochs": args.epochs,
        "batch_size": args.batch_size, "val_split": args.val_split, "early_stopping": args.early_stopping,
        "test_split": args.test_split, "class_weights": args.class_weights,
        "seed": args.seed, "monitor": args.monitor, "fine_tune_layers": args.fine_tune,
        "fine_tune_epochs": args.fine_tune_epochs, "fine_tune_lr": args.fine_tune_lr,
    }
    cfg.update({k: v for k, v in flags.items() if v is not None})
    if args.dense is not None:
        cfg["dense"] = [] if args.dense == [0] else args.dense
    if args.dropout is not None:
        cfg["dropout"] = args.dropout[0] if len(args.dropout) == 1 else args.dropout
    if args.base is not None and args.image_size is None and not args.config:
        cfg["image_size"] = None
    return ExperimentConfig.from_dict(cfg).validate()


def check_out_dir(out: str) -> None:
    """The run folder must be creatable and writable before any training starts."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"out: Expected a folder for the run. Received: {out} (an existing file)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"out: Expected a writable folder for the run. Received: {out} ({e.strerror or e})") from None


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def _out_and_data(args, config):
    """The run folder checked writable, then the dataset scanned and split, with what train says of it."""
    from core.data import load_dataset

    check_out_dir(args.out)
    _quiet_tensorflow()
    data = load_dataset(args.data, val_split=config.val_split, seed=config.seed, test_split=config.test_split)
    print(f"data: {data.summary()} ({', '.join(data.class_names)})", file=sys.stderr)
    print_data_issues(data, sys.stderr)
    return data


def cmd_train(args) -> int:
    config = config_from_args(args)  # ConfigError → exit 2 before any work
    new_folder = not Path(args.out).exists()
    try:
        data = _out_and_data(args, config)

        from core.train import make_strategy, train

        strategy = make_strategy(args.strategy)
        result = _with_ctrl_c(lambda stop: train(config, data, listeners=[_Printer(args.quiet)], stop=stop,
                                                 run_dir=args.out, strategy=strategy))
    except BaseException:  # refused (bad data, a setting the base cannot take): no empty run folder left behind
        if new_folder and Path(args.out).is_dir() and not any(Path(args.out).iterdir()):
            Path(args.out).rmdir()
        raise
    return _summary(result, args.out)


def cmd_compare(args) -> int:
    """compare-dropout and compare: plan (every value checked first), train each run, write the table."""
    from core.compare import plan_comparison, run_comparison

    config = config_from_args(args)
    setting = "dropout" if args.command == "compare-dropout" else args.setting
    values = args.rates if setting == "dropout" else args.values
    plan = plan_comparison(config, setting, values, seeds=args.seeds,
                           placement=getattr(args, "placement", "each"))  # ConfigError → exit 2 before any work
    _check_runs(plan)
    out = Path(args.out)
    earlier = sorted(p.name for p in out.iterdir() if p.name == "comparison.csv" or (p / "run.json").is_file()) \
        if out.is_dir() else []
    if earlier:  # a second comparison would mix its runs with the first's
        raise ConfigError(f"out: Expected a new or empty folder for the comparison. Received: {args.out} (it holds "
                          f"an earlier one: {', '.join(earlier[:4])}{', …' if len(earlier) > 4 else ''}); "
                          "choose another --out")
    data = _out_and_data(args, config)
    err = sys.stderr
    print(f"comparing {', '.join(plan.labels)}" + (f" over {len(plan.seeds)} seeds" if len(plan.seeds) > 1 else "")
          + f" ({len(plan.runs)} runs); fixed: {plan.fixed_text()}", file=err)

    from core.train import make_strategy

    strategy = make_strategy(args.strategy)
    result = _with_ctrl_c(lambda stop: run_comparison(
        plan, data, stop=stop, out_dir=args.out, strategy=strategy,
        listeners_for=lambda run: [_Printer(args.quiet, prefix=f"{run.label}: ")]))
    table = result.table()
    for row in table.to_dict("records"):
        sd = row["best val accuracy sd"]
        print(f"{row['label']}: best val_accuracy {row['best val accuracy']:.4f}" + (f" ± {sd:.4f}" if sd == sd else "")
              + f" (epoch {row['epoch of best']:.3g}), final train {row['final train accuracy']:.4f}, "
              f"gap {row['final gap']:+.4f}: {row['verdict']}", file=err)
    print(f"wrote {Path(args.out) / 'comparison.csv'} and comparison.html", file=err)
    if not result.members or result.stopped:
        print(f"error: stopped after {len(result.members)} of {len(plan.runs)} run(s); those are kept in {args.out}",
              file=err)
        return 1
    return 0


def _check_runs(plan) -> None:
    """Every planned run's layers and weights checked before any data is read or run is trained."""
    from core.bases import WeightsError
    import core.baseinfo
    from core.experiments import launch_problems

    _quiet_tensorflow()
    core.baseinfo.WHERE = "here"  # this process trains: its TensorFlow answers, no child needed
    problems = sorted({p for r in plan.runs for p in launch_problems(r.config)})
    weights = [p for p in problems if p.startswith(("weights", "Could not download", "ImageNet"))]
    if weights:
        raise WeightsError("; ".join(weights))  # exit 1, as train gives for the same file
    if problems:
        raise ConfigError(problems)
    from core.model import from_scratch_warning

    for w in sorted({from_scratch_warning(r.config) for r in plan.runs} - {None}):
        print(f"warning: {w}", file=sys.stderr)


def cmd_continue(args) -> int:
    _quiet_tensorflow()
    from core.train import continue_run, make_strategy

    strategy = make_strategy(args.strategy)
    result = _with_ctrl_c(lambda stop: continue_run(
        args.run, epochs=args.epochs, fine_tune_layers=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
        fine_tune_lr=args.fine_tune_lr, listeners=[_Printer(args.quiet)], stop=stop, strategy=strategy))
    return _summary(result, args.run)


def _printer_class():
    from core.train import TrainingListener

    class Printer(TrainingListener):
        def __init__(self, quiet: bool, prefix: str = ""):
            self.quiet, self.prefix = quiet, prefix

        def on_train_begin(self, plan):
            err = sys.stderr
            if not self.quiet:
                config = plan.config
                how = "base features once, then the head" if plan.path == "features" else "the whole model each epoch"
                print(f"training {config.base} ({config.weights_label()}), {plan.params['trainable']:,} trainable / "
                      f"{plan.params['locked']:,} locked parameters; {how}", file=err)
                if len(plan.phases) > 1 or plan.initial_epoch:
                    print("phases: " + "; ".join(
                        f"{p['phase']} epochs {p['first_epoch']}-{p['last_epoch']} at lr {p['lr']:g}"
                        + (f" (top {p['unlock_top']} base layers unlocked)" if p.get("unlock_top") else "")
                        for p in plan.phases), file=err)
            for w in plan.warnings:
                print(f"warning: {w}", file=err)

        def on_epoch_end(self, e):
            if not self.quiet:
                lg = e.logs
                print(f"{self.prefix}epoch {e.epoch}/{e.epochs} [{e.phase}]  loss {lg['loss']:.4f}  accuracy {lg['accuracy']:.4f}  "
                      f"val_loss {lg['val_loss']:.4f}  val_accuracy {lg['val_accuracy']:.4f}  lr {lg['lr']:g}  "
                      f"({lg['seconds']:.1f}s)", file=sys.stderr)

    return Printer


def _Printer(quiet: bool, prefix: str = ""):
    return _printer_class()(quiet, prefix)


def _with_ctrl_c(run):
    """Run ``run(stop)``; the first Ctrl-C stops at the next batch (finished epochs kept), a second quits."""
    from core.train import StopFlag

    err = sys.stderr
    stop = StopFlag()

    def on_sigint(signum, frame):
        if stop.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        print("stopping after this batch; finished epochs are kept (Ctrl-C again to quit now)", file=err)
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return run(stop)
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary(result, out) -> int:
    err = sys.stderr
    if result.best_epoch is None:
        print(f"error: run {result.status} before an epoch finished; nothing to save but {out}/run.json", file=err)
        return 1
    print(f"{result.status}: kept epoch {result.best_epoch} (best {result.monitor} {result.best_value:.4f}), "
          f"val_accuracy {result.best_val_accuracy:.4f}; saved {Path(out) / 'model.keras'}", file=err)
    return 0


def print_data_issues(data, out) -> None:
    """What train and scan both say about a dataset: skipped files, notes, warnings."""
    for s in data.skipped:
        print(f"skipped: {data.display(s.path)}: {s.reason}", file=out)
    for n in data.notes:
        print(f"note: {n}", file=out)
    for w in data.warnings:
        print(f"warning: {w}", file=out)


def cmd_scan(args) -> int:
    from core.data import load_dataset

    data = load_dataset(args.path, val_split=args.val_split, seed=args.seed, test_split=args.test_split)
    for row in data.report_rows():
        extra = f", {row['test']} test" if "test" in row else ""
        print(f"{row['class']}: {row['images']} usable ({row['train']} train, {row['validation']} validation{extra}); "
              f"median {row['median_size'] or '-'}; {row['formats'] or '-'}")
    print_data_issues(data, sys.stdout)
    if args.report:
        with open(args.report, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "reason"])
            w.writerows([data.display(s.path), s.reason] for s in data.skipped)
    return 0


def expand_images(paths: list[str]) -> list[str]:
    """Files as given; a folder stands for the files under it (OS junk left out)."""
    from core.data import files_under

    out = []
    for p in paths:
        out.extend(str(f) for f in files_under(Path(p))) if Path(p).is_dir() else out.append(p)
    return out


def cmd_predict(args) -> int:
    if args.top < 1:
        raise ConfigError(f"top: Expected an integer of at least 1. Received: {args.top}")
    _quiet_tensorflow()
    from core.export import load_model
    from core.predict import predict_files, write_predictions_csv

    model, class_names = load_model(args.model)
    preds, failures = predict_files(model, class_names, expand_images(args.images), top=args.top)
    write_predictions_csv(preds, sys.stdout)
    sys.stdout.flush()
    for path, reason in failures:
        print(f"error: {path}: {reason}", file=sys.stderr)
    return 1 if failures else 0


def cmd_evaluate(args) -> int:
    _quiet_tensorflow()
    from core.evaluate import evaluate_run

    ev, out = evaluate_run(args.run_dir, args.data)
    print(f"{ev.split}: {len(ev.y_true)} images")
    print(ev.table_text())
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from core.evaluate import export_run, human_size, parse_formats

    formats = parse_formats(args.format)
    _quiet_tensorflow()
    for f in export_run(args.run_dir, formats, quantize=args.quantize):
        print(f"{f.path}  {human_size(f.size)}  {f.note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from core.bases import WeightsError
    from core.data import DataError
    from core.export import ModelFileError
    from core.tflite import TFLiteError

    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help(sys.stderr)
        return 2
    try:
        return {"train": cmd_train, "compare-dropout": cmd_compare, "compare": cmd_compare, "continue": cmd_continue, "scan": cmd_scan, "predict": cmd_predict,
                "evaluate": cmd_evaluate,
                "export": cmd_export}[args.command](args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, WeightsError, ModelFileError, TFLiteError) as e:
        hint = " (--weights PATH or --weights none)" if str(e).startswith("Could not download the ImageNet") else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
