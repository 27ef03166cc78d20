"""The standalone ``train.py``: the same experiment in plain Keras, to read and run.

:func:`train_script` writes a short Python script from an
:class:`~core.config.ExperimentConfig` and the class names. It builds the
same model as the app (preprocessing layer → base → head, same layer sizes
and parameter count), locks the same layers, compiles the same way and
trains with ``keras.utils.image_dataset_from_directory``. It imports only
Keras, so people can see the code behind the clicks and take it elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from core.bases import CAFFE_MEAN_BGR, TORCH_MEAN, TORCH_STD, get_spec
from core.config import ExperimentConfig
from core.freeze import FreezeSpec

SCRIPT_NAME = "train.py"

_PREPROCESS = {
    "tf": ('    # {label} expects pixels in [-1, 1]: x / 127.5 - 1 (its preprocess_input), as a layer\n'
           '    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")(inputs)\n'),
    "torch": ('    # {label} expects (x / 255 - mean) / std per RGB channel (its preprocess_input), as a layer\n'
              '    mean = [255 * m for m in {mean}]\n'
              '    variance = [(255 * s) ** 2 for s in {std}]\n'
              '    x = layers.Normalization(mean=mean, variance=variance, name="preprocess_torch")(inputs)\n'),
    "caffe": ('    # {label} expects BGR minus the ImageNet mean (its "caffe" preprocess_input): a fixed\n'
              '    # 1x1 convolution that swaps RGB to BGR and subtracts the mean, so no Python Lambda\n'
              '    swap = np.zeros((1, 1, 3, 3), "float32")\n'
              '    for out_c, in_c in enumerate((2, 1, 0)):\n'
              '        swap[0, 0, in_c, out_c] = 1.0\n'
              '    pre = layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False,\n'
              '                        kernel_initializer=keras.initializers.Constant(swap),\n'
              '                        bias_initializer=keras.initializers.Constant([-m for m in {bgr}]))\n'
              '    x = pre(inputs)\n'),
    "none": '    x = inputs  # {label} preprocesses inside itself (its own Rescaling/Normalization layers)\n',
}


def _unlocked_code(config: ExperimentConfig) -> str:
    """The lines of build_model that choose which base layers train (``unlocked``)."""
    spec = FreezeSpec.parse(config.freeze)
    if spec.mode == "all":
        return "    unlocked = set()  # lock every layer of the base: only the head trains\n"
    if spec.mode == "none":
        return "    unlocked = set(names)  # every layer of the base trains\n"
    if spec.mode == "up-to":
        return (f"    # lock the layers up to and including {spec.layer!r}; the ones after it train\n"
                f"    unlocked = set(names[names.index({spec.layer!r}) + 1:])\n")
    if spec.mode == "top":
        return f"    unlocked = set(names[len(names) - {spec.n}:])  # the top {spec.n} layers train\n"
    return f"    unlocked = {sorted(spec.names)!r}  # exactly these layers train\n"


def _lock_function(config: ExperimentConfig) -> str:
    trains_bn = bool(config.train_batchnorm) or config.weights == "none"
    if trains_bn:
        why = ("BatchNorm layers train\n    too: a random base has no statistics to protect"
               if config.weights == "none" else "BatchNorm layers train\n    too (train_batchnorm is on)")
        rule = "        layer.trainable = layer.name in unlocked\n"
    else:
        why = ("BatchNorm layers stay locked: with few images their\n    statistics would wreck "
               "the pretrained features")
        rule = ("        is_batchnorm = isinstance(layer, layers.BatchNormalization)\n"
                "        layer.trainable = layer.name in unlocked and not is_batchnorm\n")
    return (f'def lock_layers(base, unlocked):\n'
            f'    """Only the base layers named in ``unlocked`` train; {why}."""\n'
            f'    base.trainable = True\n'
            f'    for layer in base.layers:\n{rule}')


def _head_code(config: ExperimentConfig) -> str:
    lines = []
    if config.pooling == "gap":
        lines.append('    x = layers.GlobalAveragePooling2D(name="head_pool")(x)')
    else:
        lines.append('    x = layers.Flatten(name="head_flatten")(x)')
    rates = config.dropout_rates()
    for i, units in enumerate(config.dense):
        lines.append(f'    x = layers.Dense({units}, activation="relu", name="head_dense_{i + 1}")(x)')
        lines.append(f'    x = layers.Dropout({rates[i]}, name="head_dropout_{i + 1}")(x)')
    if not config.dense:
        lines.append(f'    x = layers.Dropout({rates[0]}, name="head_dropout")(x)')
    lines.append('    outputs = layers.Dense(len(CLASS_NAMES), activation="softmax", name="predictions")(x)')
    return "\n".join(lines) + "\n"


def _optimizer_code(config: ExperimentConfig) -> str:
    if config.optimizer == "rmsprop":
        return "keras.optimizers.RMSprop(learning_rate=LEARNING_RATE)"
    if config.optimizer == "adam":
        return "keras.optimizers.Adam(learning_rate=LEARNING_RATE)"
    return "keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=0.9)"


_AUGMENT = '''
def augmentation():
    """Random flips, turns, zooms, shifts and contrast, applied to training batches only."""
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=SEED),
        layers.RandomRotation(0.1, fill_mode="nearest", seed=SEED + 1),
        layers.RandomZoom(0.2, fill_mode="nearest", seed=SEED + 2),
        layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=SEED + 3),
        layers.RandomContrast(0.2, value_range=(0, 255), seed=SEED + 4),
    ], name="augmentation")

'''


def train_script(config: ExperimentConfig, class_names: list[str], run_id: str = "") -> str:
    """The text of a standalone ``train.py`` for ``config``."""
    spec = get_spec(config.base)
    size = config.resolved_image_size()
    monitor = getattr(config, "monitor", "val_loss")
    pretrained = config.weights != "none"
    if config.weights == "imagenet":
        weights_line = 'WEIGHTS = "imagenet"  # downloaded by Keras; or None, or a weights file path'
    elif config.weights == "none":
        weights_line = 'WEIGHTS = None  # random weights (from scratch); or "imagenet", or a weights file path'
    else:
        weights_line = f"WEIGHTS = {Path(config.weights).name!r}  # a weights file; or \"imagenet\", or None"
    alpha = f", alpha={config.alpha}" if spec.alphas else ""
    cut = ""
    if config.cut:
        cut = (f"    # Cut the base at an inner layer: the head sits on the output of {config.cut!r}.\n"
               f"    base = keras.Model(base.input, base.get_layer({config.cut!r}).output,\n"
               f"                       name=base.name + {'_to_' + config.cut!r})\n")
    scratch = ""
    if not pretrained:
        scratch = ("    # A random base learns its BatchNorm statistics: faster moving averages suit a small dataset.\n"
                   "    for layer in base.layers:\n"
                   "        if isinstance(layer, layers.BatchNormalization):\n"
                   "            layer.momentum = min(layer.momentum, 0.9)\n")
    pre = _PREPROCESS[spec.preprocess].format(label=spec.label, mean=list(TORCH_MEAN), std=list(TORCH_STD),
                                               bgr=list(CAFFE_MEAN_BGR))
    call = ("    # training=False keeps BatchNorm in inference mode even where layers are unlocked\n"
            "    x = base(x, training=False)\n") if pretrained else "    x = base(x)\n"
    aug = config.augment != "none"
    pipeline = ("    aug = augmentation()\n"
                "    train_ds = train_ds.map(lambda x, y: (aug(x, training=True), y))\n") if aug else ""
    class_weight = ""
    if config.class_weights:
        class_weight = ("    # weight each class by inverse frequency, as the app does\n"
                        "    counts = np.bincount(np.concatenate([y.numpy() for _, y in train_ds]), minlength=len(CLASS_NAMES))\n"
                        "    class_weight = {i: float(counts.sum() / (len(counts) * c)) if c else 0.0\n"
                        "                    for i, c in enumerate(counts)}\n")
    early = ""
    if config.early_stopping:
        early = (f"        keras.callbacks.EarlyStopping(monitor=\"{monitor}\", patience={config.early_stopping}),\n")
    fit_extra = ", class_weight=class_weight" if config.class_weights else ""
    fine = ""
    fine_layers = int(getattr(config, "fine_tune_layers", 0) or 0)
    fine_epochs = int(getattr(config, "fine_tune_epochs", 0) or 0)
    if fine_layers and fine_epochs:
        fine_lr = config.resolved_fine_tune_lr()
        fine = (f"\n    # Fine-tuning: unlock the top {fine_layers} layers of the base as well and train {fine_epochs} more\n"
                f"    # epochs at a lower learning rate, so the pretrained features adapt gently.\n"
                f"    names = [layer.name for layer in base.layers]\n"
                f"    lock_layers(base, set(unlocked) | set(names[-{fine_layers}:]))\n"
                f"    model.compile(optimizer={_optimizer_code(config).replace('LEARNING_RATE', f'{fine_lr:.6g}')},\n"
                f"                  loss=\"sparse_categorical_crossentropy\", metrics=[\"accuracy\"])\n"
                f"    model.fit(train_ds, validation_data=val_ds, initial_epoch=args.epochs,\n"
                f"              epochs=args.epochs + {fine_epochs}, callbacks=callbacks{fit_extra})\n")
    scratch_note = ("\nTraining from scratch, the app also re-estimates the BatchNorm statistics from\n"
                    "training images before each validation; this script leaves that out.") if not pretrained else ""
    needs_np = spec.preprocess == "caffe" or config.class_weights
    config_json = json.dumps(config.to_dict(), indent=4)
    return f'''r"""Train {spec.label} with your own dense head on your photos, in plain Keras.

Written by Transfer Lab{f" from run {run_id}" if run_id else ""}: the same model as in the app (preprocessing
inside, {spec.label} base, {describe_head(config)}), the same locked
layers, optimizer and loss. The experiment, as the app saved it (config.json):

{_indent(config_json, "    ")}

Run it on a folder with one sub-folder of images per class (or train/ and
validation/ folders, each holding the class folders):

    python train.py --data photos/ --out my_run

It writes my_run/model.keras (raw RGB 0-255 images in, class probabilities
out) and my_run/labels.json. Unlike the app, it does not check every file
before training, nor skip unreadable ones; its validation split is Keras's own,
so scores differ a little from the app's.{scratch_note}
"""
import argparse
import json
from pathlib import Path

import keras
{"import numpy as np" + chr(10) if needs_np else ""}from keras import layers

CLASS_NAMES = {list(class_names)!r}
IMAGE_SIZE = {size}
{weights_line}
EPOCHS = {config.epochs}
BATCH_SIZE = {config.batch_size}
LEARNING_RATE = {config.lr!r}
VALIDATION_SPLIT = {config.val_split!r}
SEED = {config.seed}


def load_data(folder, batch_size):
    """Training and validation batches of (images, class index); images stay 0-255."""
    options = dict(image_size=(IMAGE_SIZE, IMAGE_SIZE), batch_size=batch_size, label_mode="int",
                   class_names=CLASS_NAMES, crop_to_aspect_ratio=True, interpolation="bilinear")
    folder = Path(folder)
    splits = {{p.name.lower(): p for p in folder.iterdir() if p.is_dir()}}
    if "train" in splits:  # train/ + validation/ folders
        val = next(splits[n] for n in ("validation", "valid", "val") if n in splits)
        train_ds = keras.utils.image_dataset_from_directory(splits["train"], shuffle=True, seed=SEED, **options)
        val_ds = keras.utils.image_dataset_from_directory(val, shuffle=False, **options)
        return train_ds, val_ds
    return keras.utils.image_dataset_from_directory(
        folder, validation_split=VALIDATION_SPLIT, subset="both", shuffle=True, seed=SEED, **options)

{_AUGMENT if aug else ""}
{_lock_function(config)}

def build_model(weights):
    """Preprocessing → {spec.label} base → dense head with dropout → softmax over the classes."""
    # The base: {spec.label} without its ImageNet classification top.
    base = keras.applications.{spec.builder}(include_top=False, weights="imagenet" if weights == "imagenet" else None,
                                   input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3){alpha})
    if weights not in (None, "imagenet"):
        base.load_weights(weights)  # a Keras applications *_notop.h5 or a .weights.h5 file
{cut}{scratch}    names = [layer.name for layer in base.layers]
{_unlocked_code(config)}    lock_layers(base, unlocked)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
{pre}{call}{_head_code(config)}    model = keras.Model(inputs, outputs, name="transfer_lab_{config.base}")
    return model, base, unlocked


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of class folders (or train/ + validation/)")
    parser.add_argument("--out", default="run", help="folder for model.keras and labels.json")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--weights", default=WEIGHTS, help='"imagenet", "none" or a weights file')
    args = parser.parse_args()
    weights = None if args.weights in (None, "none") else args.weights

    keras.utils.set_random_seed(SEED)
    train_ds, val_ds = load_data(args.data, BATCH_SIZE)
{pipeline}{class_weight}    model, base, unlocked = build_model(weights)
    # Compile after every change to trainable: Keras fixes the trainable weights here.
    model.compile(optimizer={_optimizer_code(config)},
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [
        # keep the best epoch's model, as the app does
        keras.callbacks.ModelCheckpoint(str(out / "model.keras"), monitor="{monitor}", save_best_only=True),
{early}    ]
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, callbacks=callbacks{fit_extra})
{fine}    (out / "labels.json").write_text(json.dumps({{"class_names": CLASS_NAMES}}, indent=2) + "\\n")
    print(f"saved {{out / 'model.keras'}} (classes: {{', '.join(CLASS_NAMES)}})")


if __name__ == "__main__":
    main()
'''


def describe_head(config: ExperimentConfig) -> str:
    pool = "global average pooling" if config.pooling == "gap" else "flatten"
    rates = config.dropout_rates()
    dense = ", ".join(f"dense {u} + dropout {r}" for u, r in zip(config.dense, rates)) or f"dropout {rates[0]}"
    return f"{pool}, {dense}"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def write_train_script(config: ExperimentConfig, class_names: list[str], path: str | Path, run_id: str = "") -> Path:
    path = Path(path)
    path.write_text(train_script(config, class_names, run_id), encoding="utf-8")
    return path
