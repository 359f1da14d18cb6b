"""Opening a saved model safely: a model file is untrusted input.

A Keras `.keras` file is a zip archive whose `config.json` names the classes to build and their
sizes. Loading it runs the constructors it names (a `Lambda` layer carries Python bytecode, so a
file from elsewhere can run code) and allocates every weight it declares. So, before anything is
deserialised:

    1. the path: suffix .keras, a regular file (not a folder, FIFO or device); Keras >= 3.14.1
    2. the archive (chimuf.ml.modelfiles.modelarchive): exactly config.json, metadata.json and
       model.weights.h5, plain names, no links, no encryption, stored or deflated, sizes capped
    3. config.json: read with its CRC checked, at most 64 levels deep; every object it names is a
       Keras or chimuf class, and no Lambda or TFSMLayer
    4. its size (chimuf.ml.modelfiles.modelsize): the parameters Keras would allocate, at most
       `model_files.max_params`; the weights member (and the datasets declared inside it) at most
       what that many parameters need
    5. the members copied, CRC checked, into a private temp folder under fixed names; Keras loads
       that folder (safe_mode=True, never switched off); the folder is removed whatever happens
    6. what comes out: one sigmoid output; a square RGB input of at most MAX_IMAGE_SIZE pixels

The model comes back uncompiled (`compile=False`): the optimizer and loss in the file are not
rebuilt, since evaluating and predicting do not need them. HDF5 (`.h5`) and SavedModel folders are
refused: they bypass these checks. Every refusal, and every error Keras raises, is one ModelError
line (what, which file, what to do); Keras' own long message goes to the run's log as its detail.

A model file says nothing about class names, so `<model>.classes.json` beside it records them
(`write_classes`, written by whoever saves the model); `read_classes` reads it back.
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core.config import MAX_IMAGE_SIZE, ModelFilesConfig
from chimuf.core.errors import ModelError
from chimuf.core.files import atomic_write_json, read_bounded
from chimuf.core.results import DEFAULT_THRESHOLD
from chimuf.ml.modelfiles import modelarchive, modelsize
from chimuf.ml.modelfiles.modelarchive import CONFIG, METADATA, WEIGHTS, Inventory

if TYPE_CHECKING:
    import keras

    from chimuf.core.console import Console

MIN_KERAS = (3, 14, 1)  # safe-mode and HDF5 fixes of 2025-2026
TRUSTED_PACKAGES = ("keras", "chimuf")
REFUSED_CLASSES = ("Lambda", "__lambda__", "TFSMLayer")
# Markers Keras writes with no module for its own plain values (tensors, arrays, slices).
KERAS_VALUE_MARKERS = ("__keras_tensor__", "__tensor__", "__numpy__", "__slice__", "__ellipsis__",
                       "__bytes__", "__typespec__")
# Bytes of weights file one parameter may need: a float32 weight and three float32 optimizer slots
# (Adam with amsgrad keeps m, v and v-hat; chimuf's Adam two, so its files hold 12 bytes a
# parameter), or a float64 weight and one slot. Measured: model 1 after an epoch, 12.01 bytes a
# parameter; MobileNetV2 with amsgrad, 16.08 (its batch-norm statistics have no slots, its HDF5
# headers cost about 800 bytes per dataset).
MAX_SIDECAR_BYTES = 2**20  # <model>.classes.json: two names and a threshold
BYTES_PER_PARAM = 16
HDF5_MARGIN = 1024 * 1024  # file header and B-trees
HDF5_PER_LAYER = 4096  # headers of a layer's datasets (weights and optimizer slots)
# What Keras raises on a config or weights file it cannot use: a bad value or type in a layer's
# config, a missing variable, an HDF5 file h5py cannot parse, an unimplemented option.
KERAS_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, NotImplementedError)


# SHA-256 digests of the model files a study saved itself and recorded in its results (a user's
# own architecture may use layers chimuf.ml.modelfiles.layershapes cannot count): such a file skips step 4's
# count from config.json, and is held to the largest size `max_params` allows instead. Every other
# check stays; a file from outside, whose digest the study never recorded, is checked as before.
VOUCHED: set[str] = set()


def vouch(digests: Iterable[str]) -> None:
    """Trust the files with these SHA-256 digests (the study's own, as its results record them)."""
    VOUCHED.update(d for d in digests if d)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: Path, limits: ModelFilesConfig | None = None,
               console: Console | None = None) -> keras.Model:
    """The model in `path` (.keras), checked before and after loading; ModelError otherwise.

    `limits` caps its size (default: ModelFilesConfig()); Keras' warnings and long error messages
    go to `console`'s log when one is given."""
    limits = limits or ModelFilesConfig()
    path = check_model_path(Path(path))
    check_keras_version(installed_keras_version())
    inventory = modelarchive.read_inventory(path, largest_archive(limits))
    config_bytes = modelarchive.read_member(inventory, CONFIG)
    config = modelarchive.parse_json(inventory, CONFIG, config_bytes)
    check_config(config, path)
    if VOUCHED and file_sha256(path) in VOUCHED:
        allowance = check_claimed(inventory, largest_weights(limits))
    else:
        allowance = check_size(config, inventory, limits)
    if not isinstance(modelarchive.parse_json(inventory, METADATA,
                                              modelarchive.read_member(inventory, METADATA)), dict):
        raise ModelError(f"model `{path}`: metadata.json is not a JSON object; {modelarchive.FIX}")
    with modelarchive.private_folder() as folder:
        (folder / CONFIG).write_bytes(config_bytes)  # the bytes checked above, no others
        modelarchive.extract_member(inventory, WEIGHTS, folder / WEIGHTS, allowance)
        check_weights_file(folder / WEIGHTS, allowance, path)
        model = deserialise(folder, path, console)
    check_output(model, path)
    return model


# --- 1. the file -------------------------------------------------------------------------------


def check_model_path(path: Path) -> Path:
    if path.suffix != ".keras":
        raise ModelError(
            f"model `{path}` is not a `.keras` file; chimuf loads only Keras 3 archives (`.keras`). "
            "HDF5 (.h5) and SavedModel files are refused because they bypass Keras' safe mode. "
            "Re-save the model with `model.save('name.keras')` in a trusted environment."
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ModelError(f"model file `{path}` does not exist; pass the path of a `.keras` file") from None
    except OSError as exc:
        raise ModelError(f"model file `{path}` cannot be read ({exc.strerror}); pass the path of a "
                         "readable `.keras` file") from None
    if not stat.S_ISREG(mode):
        raise ModelError(f"model `{path}` is {file_kind(mode)}, not a file; pass the path of a `.keras` "
                         "file (a zip archive saved by Keras)")
    return path


def file_kind(mode: int) -> str:
    """What a non-regular path is, in words."""
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def installed_keras_version() -> str:
    import keras

    return keras.__version__


def check_keras_version(version: str) -> None:
    """Refuse Keras releases older than MIN_KERAS (their safe mode could be bypassed)."""
    numbers = []
    for part in version.split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        numbers.append(int(digits or 0))
    if tuple(numbers) < MIN_KERAS:
        wanted = ".".join(map(str, MIN_KERAS))
        raise ModelError(
            f"Keras {version} is installed; loading model files needs Keras >= {wanted}, whose safe "
            f"mode closes known loopholes. Upgrade it: pip install -U 'keras>={wanted}'"
        )


# --- 2. the archive's config, read as plain JSON -----------------------------------------------


def check_config(config: Any, path: Path) -> None:
    """Refuse Lambda layers and any object whose module is outside Keras and chimuf."""
    for obj in serialised_objects(config):
        class_name = str(obj.get("class_name"))
        module = obj.get("module")
        registered = obj.get("registered_name")
        where = f"{module}.{class_name}" if module else class_name
        if class_name == "TFSMLayer":
            raise ModelError(
                f"model `{path}` contains a `TFSMLayer` ({where}): it loads a TensorFlow SavedModel "
                "from a path outside the file, whose graph neither Keras' safe mode nor chimuf can "
                "check, so chimuf refuses it. Rebuild the model from built-in Keras layers."
            )
        if class_name in REFUSED_CLASSES:
            raise ModelError(
                f"model `{path}` contains a `{class_name}` ({where}): it holds arbitrary Python "
                "code, so chimuf refuses to load it. Rebuild the model without Lambda layers."
            )
        if module is None:
            if class_name not in KERAS_VALUE_MARKERS and class_name != "function":
                raise ModelError(
                    f"model `{path}` names `{class_name}` with no module; chimuf loads only Keras "
                    "and chimuf classes"
                )
            if class_name == "function":
                raise ModelError(
                    f"model `{path}` names a function `{obj.get('config')}` with no module; chimuf "
                    "loads only Keras and chimuf functions"
                )
            continue
        if not trusted(str(module)):
            raise ModelError(
                f"model `{path}` names class `{class_name}` from module `{module}`; chimuf loads "
                f"only classes from {' and '.join(TRUSTED_PACKAGES)}. Refused before loading."
            )
        if isinstance(registered, str) and ">" in registered and not trusted(registered.split(">")[0]):
            raise ModelError(
                f"model `{path}` names the custom object `{registered}`; chimuf loads only "
                f"objects registered by {' and '.join(TRUSTED_PACKAGES)}. Refused before loading."
            )


def serialised_objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict with a `class_name` in a Keras config tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def trusted(module: str) -> bool:
    return module.split(".")[0] in TRUSTED_PACKAGES


# --- 3. its size --------------------------------------------------------------------------------


def check_size(config: Any, inventory: Inventory, limits: ModelFilesConfig) -> int:
    """Refuse a model whose config asks for more than `limits.max_params` parameters, or whose
    weights member is larger than those parameters need; the bytes the weights may take."""
    path = inventory.path
    try:
        size = modelsize.estimate(config)
    except ModelError as exc:
        raise ModelError(f"model `{path}`: {exc}; refused before loading") from None
    if size.params > limits.max_params:
        raise ModelError(
            f"model `{path}` declares {size.params:,} parameters (counted from its config.json), more "
            f"than `model_files.max_params` = {limits.max_params:,}; refused before anything is "
            "allocated. Raise the limit in the config (--config) if the model is yours"
        )
    return check_claimed(inventory, weights_allowance(size), f"its {size.params:,} parameters")


def check_claimed(inventory: Inventory, allowance: int, what: str = "`model_files.max_params`") -> int:
    """Refuse a weights member larger than `allowance` bytes; the allowance."""
    claimed = inventory.size_of(WEIGHTS)
    if claimed > allowance:
        raise ModelError(
            f"model `{inventory.path}`: model.weights.h5 claims {claimed:,} bytes, but {what} "
            f"need at most {allowance:,} (weights, optimizer state, HDF5 headers); refused unread"
        )
    return allowance


def largest_weights(limits: ModelFilesConfig) -> int:
    """The weights file of the largest model `limits` allow."""
    return weights_allowance(modelsize.Estimate(limits.max_params, 0, modelsize.MAX_LAYERS))


def weights_allowance(size: modelsize.Estimate) -> int:
    """The largest weights file `size.params` parameters in `size.layers` layers can make."""
    return BYTES_PER_PARAM * size.params + HDF5_MARGIN + HDF5_PER_LAYER * size.layers


def largest_archive(limits: ModelFilesConfig) -> int:
    """Uncompressed bytes of the largest archive chimuf may open: the largest model `limits` allow
    (800 MB of weights file at the default 50 M parameters) and the largest JSON members."""
    return largest_weights(limits) + modelarchive.MAX_CONFIG_BYTES + modelarchive.MAX_METADATA_BYTES


def check_weights_file(file: Path, allowance: int, path: Path) -> None:
    """The arrays the HDF5 file declares (compressed chunks can declare far more than they
    store) must fit `allowance` bytes too: Keras reads each one whole."""
    import h5py

    declared = 0

    def count(_name: str, item: Any) -> None:
        nonlocal declared
        if isinstance(item, h5py.Dataset):
            declared += math.prod(item.shape or ()) * item.dtype.itemsize

    try:
        with h5py.File(file, "r") as weights:
            weights.visititems(count)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ModelError(f"model `{path}`: model.weights.h5 is not a readable HDF5 file "
                         f"({one_line(str(exc))}); the file is damaged; {modelarchive.FIX}") from None
    if declared > allowance:
        raise ModelError(
            f"model `{path}`: model.weights.h5 declares arrays of {declared:,} bytes, more than the "
            f"{allowance:,} its config's parameters need; refused before reading them"
        )


# --- 4. loading, and what comes out -----------------------------------------------------------


def deserialise(folder: Path, path: Path, console: Console | None = None) -> keras.Model:
    """Keras' load of the checked members in `folder` (a Keras model folder: config.json and
    model.weights.h5, nothing else, so Keras extracts nothing). Its warnings go to the log."""
    import keras

    import chimuf.ml.architectures.fusednorm  # noqa: F401  registers chimuf's layers, which the file may name

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model(str(folder), compile=False, safe_mode=True)
    except KERAS_ERRORS as exc:
        raise ModelError(
            f"model `{path}` could not be loaded by Keras ({type(exc).__name__}: {keras_reason(exc)}); "
            "it may be damaged or made by an incompatible Keras",
            detail=f"{type(exc).__name__}: {exc}",
        ) from None
    if console is not None:
        for warning in caught:
            console.write(f"Keras, loading `{path}`: {one_line(str(warning.message))}", echo=False)
    return model


def keras_reason(exc: BaseException) -> str:
    """The root of a Keras error in one short line: Keras nests the config and every failing
    level ("Exception encountered: ...") into one message of many lines; the last level is the
    reason."""
    text = str(exc).rsplit("Exception encountered:", 1)[-1]
    return one_line(text, 240)


def one_line(text: str, limit: int = 240) -> str:
    words = " ".join(text.split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


def check_output(model: keras.Model, path: Path) -> None:
    """A binary classifier here has one output of shape (None, 1) from a sigmoid."""

    outputs = list(getattr(model, "outputs", None) or [])
    shapes = [tuple(o.shape) for o in outputs]
    if len(outputs) != 1 or shapes[0][1:] != (1,):
        raise ModelError(
            f"model `{path}` has outputs of shapes {shapes}; chimuf needs one output of shape "
            "(None, 1): the probability of the second class"
        )
    layer = model.layers[-1]
    name = output_activation(layer)
    if name != "sigmoid":
        raise ModelError(
            f"model `{path}`: its output layer `{layer.name}` has activation {name!r}; chimuf "
            "needs a sigmoid output (a probability)"
        )


def output_activation(layer: Any) -> str | None:
    """The activation of a model's output: its last layer's, or, for an `Average` of models (an
    ensemble, chimuf.stages.choose), "sigmoid" when every averaged model ends in a sigmoid (a mean of
    probabilities is a probability)."""
    import keras

    if isinstance(layer, keras.layers.Average):
        parents = [t._keras_history.operation for t in layer._inbound_nodes[0].input_tensors]
        names = {output_activation(p.layers[-1] if isinstance(p, keras.Model) else p) for p in parents}
        return names.pop() if len(names) == 1 else f"a mean of {sorted(map(str, names))}"
    activation = getattr(layer, "activation", None)
    name = keras.activations.serialize(activation) if activation is not None else None
    if isinstance(name, dict):
        name = name.get("config")
    return name


def input_size(model: keras.Model) -> int:
    """Side of the square RGB images the model takes, read from its input shape."""
    shape = tuple(model.inputs[0].shape)  # (None, size, size, 3)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ModelError(
            f"model `{model.name}` takes inputs of shape {shape}; chimuf needs square RGB images, "
            "(None, size, size, 3)"
        )
    if shape[1] > MAX_IMAGE_SIZE:  # every image is resized to it, a batch at a time
        raise ModelError(
            f"model `{model.name}` takes images of {shape[1]} x {shape[1]} pixels; chimuf reads images "
            f"of at most {MAX_IMAGE_SIZE} x {MAX_IMAGE_SIZE} (data.image_size's bound)"
        )
    return int(shape[1])


# --- class names and threshold beside the model -----------------------------------------------


@dataclass(frozen=True)
class Sidecar:
    """What `<model>.classes.json` says of a model that its file cannot: the class names (index i =
    label i; the sigmoid gives P(classes[1])) and the decision threshold chosen for it."""

    classes: list[str]
    threshold: float = DEFAULT_THRESHOLD
    threshold_rule: str = ""  # how it was chosen ("" = the default, not chosen)
    positive: str = ""  # classes[1], said outright: the class whose probability the model gives


def classes_path(model_path: Path) -> Path:
    """`final.keras` → `final.classes.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".classes.json")


def write_classes(model_path: Path, classes: list[str], threshold: float = DEFAULT_THRESHOLD,
                  threshold_rule: str = "") -> Path:
    """Record the class names of a saved model, which one is positive, and the threshold it decides at."""
    path = classes_path(model_path)
    atomic_write_json(path, Sidecar(list(classes), float(threshold), threshold_rule, classes[-1]))
    return path


def read_sidecar(model_path: Path) -> Sidecar | None:
    """The sidecar beside `model_path`, or None when there is none. One written before thresholds
    travelled holds classes only: its threshold is the default."""
    path = classes_path(model_path)
    try:  # a regular file of at most MAX_SIDECAR_BYTES: a link to /dev/zero or a FIFO is refused
        data = json.loads(read_bounded(path, MAX_SIDECAR_BYTES, "classes file", ModelError).decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"`{path}` cannot be read ({exc}); delete it or write it again") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if not (isinstance(classes, list) and len(classes) == 2 and all(isinstance(c, str) for c in classes)):
        raise ModelError(
            f"`{path}` should hold {{\"classes\": [two class names]}}; found {str(data)[:80]!r}"
        )
    threshold = data.get("threshold", DEFAULT_THRESHOLD)
    rule = data.get("threshold_rule", "")
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0 < threshold < 1 or not isinstance(rule, str)):
        raise ModelError(f"`{path}`: `threshold` must be a number between 0 and 1 (exclusive) and "
                         f"`threshold_rule` a string; found {threshold!r}, {rule!r}")
    positive = data.get("positive", classes[1])
    if positive != classes[1]:
        raise ModelError(f"`{path}`: `positive` must be the second class, {classes[1]!r} (the one the "
                         f"sigmoid gives); found {positive!r}. Write the classes in that order")
    return Sidecar(classes, float(threshold), rule, positive)


def read_classes(model_path: Path) -> list[str] | None:
    """The class names saved beside `model_path`, or None when there is no such file."""
    sidecar = read_sidecar(model_path)
    return None if sidecar is None else sidecar.classes
