"""Opening a saved model safely: a model file is untrusted input.

A Keras `.keras` file is a zip archive whose `config.json` names the classes to build. Loading
it runs the constructors it names, and a `Lambda` layer carries Python bytecode, so a file from
elsewhere can run code. So, before anything is deserialised:

    suffix .keras → Keras ≥ 3.14.1 → a zip archive with config.json → every object it names is
      a Keras or chimuf class, and no Lambda → load with safe_mode=True → one sigmoid output

`safe_mode=True` is never switched off. The model comes back uncompiled (`compile=False`): the
optimizer and loss in the file are not rebuilt, since evaluating and predicting do not need them.
HDF5 (`.h5`) and SavedModel folders are refused: they bypass these checks.

A model file says nothing about class names, so `<model>.classes.json` beside it records them
(`write_classes`, written by whoever saves the model); `read_classes` reads it back.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chimuf.core.errors import ModelError
from chimuf.core.files import atomic_write_json
from chimuf.core.results import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import keras

MIN_KERAS = (3, 14, 1)  # safe-mode and HDF5 fixes of 2025-2026
TRUSTED_PACKAGES = ("keras", "chimuf")
REFUSED_CLASSES = ("Lambda", "__lambda__", "TFSMLayer")
# Markers Keras writes with no module for its own plain values (tensors, arrays, slices).
KERAS_VALUE_MARKERS = ("__keras_tensor__", "__tensor__", "__numpy__", "__slice__", "__ellipsis__",
                       "__bytes__", "__typespec__")
MAX_CONFIG_BYTES = 32 * 1024 * 1024  # a real model's config.json is a few kB


def load_model(path: Path) -> keras.Model:
    """The model in `path` (.keras), checked before and after loading; ModelError otherwise."""
    path = check_model_path(Path(path))
    check_keras_version(installed_keras_version())
    config = read_archive_config(path)
    check_config(config, path)
    model = deserialise(path)
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
    if not path.is_file():
        raise ModelError(f"model file `{path}` does not exist; pass the path of a `.keras` file")
    return path


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


def read_archive_config(path: Path) -> Any:
    """config.json of the archive, parsed as JSON without building anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo("config.json")
            except KeyError:
                raise ModelError(
                    f"model `{path}` is a zip archive without config.json, so not a Keras model "
                    "file; save the model with `model.save('name.keras')`"
                ) from None
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelError(
                    f"model `{path}`: config.json claims {info.file_size:,} bytes (a model's is a "
                    "few kB); refused unread"
                )
            text = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise ModelError(
            f"model `{path}` is not a Keras archive ({exc}); expected a `.keras` file saved by "
            "Keras 3"
        ) from None
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model `{path}`: config.json is not valid JSON ({exc})") from None


def check_config(config: Any, path: Path) -> None:
    """Refuse Lambda layers and any object whose module is outside Keras and chimuf."""
    for obj in serialised_objects(config):
        class_name = str(obj.get("class_name"))
        module = obj.get("module")
        registered = obj.get("registered_name")
        where = f"{module}.{class_name}" if module else class_name
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


# --- 3. loading, and what comes out -----------------------------------------------------------


def deserialise(path: Path) -> keras.Model:
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ModelError(
            f"model `{path}` could not be loaded by Keras ({type(exc).__name__}: {exc}); it may be "
            "damaged or made by an incompatible Keras"
        ) from None


def check_output(model: keras.Model, path: Path) -> None:
    """A binary classifier here has one output of shape (None, 1) from a sigmoid."""
    import keras

    outputs = list(getattr(model, "outputs", None) or [])
    shapes = [tuple(o.shape) for o in outputs]
    if len(outputs) != 1 or shapes[0][1:] != (1,):
        raise ModelError(
            f"model `{path}` has outputs of shapes {shapes}; chimuf needs one output of shape "
            "(None, 1): the probability of the second class"
        )
    layer = model.layers[-1]
    activation = getattr(layer, "activation", None)
    name = keras.activations.serialize(activation) if activation is not None else None
    if isinstance(name, dict):
        name = name.get("config")
    if name != "sigmoid":
        raise ModelError(
            f"model `{path}`: its output layer `{layer.name}` has activation {name!r}; chimuf "
            "needs a sigmoid output (a probability)"
        )


def input_size(model: keras.Model) -> int:
    """Side of the square RGB images the model takes, read from its input shape."""
    shape = tuple(model.inputs[0].shape)  # (None, size, size, 3)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or shape[1] is None:
        raise ModelError(
            f"model `{model.name}` takes inputs of shape {shape}; chimuf needs square RGB images, "
            "(None, size, size, 3)"
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


def classes_path(model_path: Path) -> Path:
    """`final.keras` → `final.classes.json`."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".classes.json")


def write_classes(model_path: Path, classes: list[str], threshold: float = DEFAULT_THRESHOLD,
                  threshold_rule: str = "") -> Path:
    """Record the class names of a saved model, and the threshold it decides at."""
    path = classes_path(model_path)
    atomic_write_json(path, Sidecar(list(classes), float(threshold), threshold_rule))
    return path


def read_sidecar(model_path: Path) -> Sidecar | None:
    """The sidecar beside `model_path`, or None when there is none. One written before thresholds
    travelled holds classes only: its threshold is the default."""
    path = classes_path(model_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
    return Sidecar(classes, float(threshold), rule)


def read_classes(model_path: Path) -> list[str] | None:
    """The class names saved beside `model_path`, or None when there is no such file."""
    sidecar = read_sidecar(model_path)
    return None if sidecar is None else sidecar.classes
