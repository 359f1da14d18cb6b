"""A user's own architecture as a candidate: a function that builds a Keras model.

    run_study(..., candidates={"mine": build})   or   [candidates] builders = ["pkg.mod:build"]
      → build(image_size=S, seed=N) → a Keras model taking (S, S, 3) images of 0-255 pixels, one
        sigmoid output; uncompiled (compiled here: Adam at train.learning_rate, binary
        cross-entropy) or compiled by the builder (its optimizer and loss kept, chimuf's metrics)
      → the same fit loop as every training (chimuf.ml.training.fit: resumable, early stopping)

A builder is fingerprinted by its name and its source code, so editing it retrains it and an
unchanged one is reused.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from chimuf.core.errors import ConfigError, ModelError
from chimuf.core.files import safe_name
from chimuf.ml.training.seeds import WEIGHTS, derive_seed

if TYPE_CHECKING:
    import keras

Builder = Callable[..., Any]  # build(image_size=int, seed=int) -> keras.Model


def resolve(name: str) -> Builder:
    """The function `module:function` names, imported; ConfigError when it cannot be."""
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"candidates.builders: cannot import `{module_name}` ({exc}); put the module on "
                          "PYTHONPATH or install it") from None
    builder = getattr(module, function_name, None)
    if not callable(builder):
        raise ConfigError(f"candidates.builders: `{module_name}` has no function `{function_name}`; "
                          "name a function as 'module:function'")
    return builder


def all_builders(names: tuple[str, ...], given: Mapping[str, Builder] | None) -> dict[str, Builder]:
    """The builders of the config (named by their function) and those given to the API, by
    candidate name; two of one name are refused."""
    out: dict[str, Builder] = {}
    for name, builder in [*((n.partition(":")[2], resolve(n)) for n in names), *(given or {}).items()]:
        key = safe_name(name)
        if not key or key in out:
            raise ConfigError(f"candidate `{name}`: every own candidate needs a distinct name of letters, "
                              "digits, '_' or '-'; rename the function or the key")
        out[key] = builder
    return out


def fingerprint(builder: Builder) -> str:
    """What identifies a builder's work: its qualified name and its source (when Python has it)."""
    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError):
        source = ""
    name = f"{getattr(builder, '__module__', '')}.{getattr(builder, '__qualname__', repr(builder))}"
    return hashlib.sha256(f"{name}\n{source}".encode()).hexdigest()


def build(name: str, builder: Builder, image_size: int, seed: int, learning_rate: float) -> keras.Model:
    """The builder's model, seeded and checked (one sigmoid output of shape (None, 1), square RGB
    input of `image_size`), compiled unless the builder compiled it."""
    import keras

    from chimuf.ml.architectures.models import compile_model

    keras.utils.set_random_seed(derive_seed(seed, 0, WEIGHTS))
    model = builder(image_size=image_size, seed=seed)
    if not isinstance(model, keras.Model):
        raise ModelError(f"candidate `{name}`: its builder returned {type(model).__name__}, expected a "
                         "keras.Model; return the model from the function")
    shape = tuple(model.inputs[0].shape)
    if shape[1:] != (image_size, image_size, 3) or tuple(model.outputs[0].shape)[1:] != (1,):
        raise ModelError(f"candidate `{name}`: input {shape} and output {tuple(model.outputs[0].shape)}; "
                         f"expected (None, {image_size}, {image_size}, 3) and (None, 1), a sigmoid "
                         "probability; build it for image_size and end in Dense(1, 'sigmoid')")
    if getattr(model, "optimizer", None) is None:
        compile_model(model, learning_rate)
    else:  # the builder's optimizer and loss, the metrics the fit loop records
        model.compile(optimizer=model.optimizer, loss=model.loss,
                      metrics=[keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc")])
    return model
