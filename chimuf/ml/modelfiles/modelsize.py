"""How large a model a `.keras` file's config.json asks for, worked out before Keras builds it.

Keras allocates every layer's weights while it reads config.json, so a few kB of JSON that
declare `Dense(2_000_000)` cost 16 GB before a single weight is read. This module follows the
config as Keras would build it and counts the parameters, without numpy or TensorFlow:

    InputLayer batch_shape → each layer's rule: (its input shapes, its config) → (parameters,
      output shapes) → the next layers, through the Functional graph (`inbound_nodes`) or the
      Sequential chain → sum over layers

A layer is built twice over in Keras' reading: from its `build_config` (the input shape the file
claims, used before the graph is followed) and from the shapes the graph gives it. The two agree
in a genuine file; a hostile one can make them differ, so each layer counts the larger of the two.
Every tensor's size per image is counted too (`largest_tensor`), so that UpSampling or padding
cannot ask for an activation of billions of values.

Layer types, each with a rule in chimuf.ml.modelfiles.layershapes: the ones chimuf's models use (InputLayer,
Rescaling, Conv2D, MaxPooling2D, Dropout, Flatten, Dense) and the ones an image classifier built
with Keras may use (the other convolutions, poolings, normalisations, activations, reshapes,
merges, image preprocessing layers, and nested Functional or Sequential models). Any other type
is refused: its size cannot be told from its config without running its code, and the
conservative rule is not to guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chimuf.core.errors import ModelError
from chimuf.ml.modelfiles.layershapes import CHIMUF_RULES, MAX_RANK, RULES, Shape, Unsized

# Values in any one tensor, per image. chimuf's largest possible model (512 px, a first conv of
# 1024 filters: chimuf.core.config's bounds) has 512 * 512 * 1024 = 2**28; nothing real needs more.
MAX_TENSOR_VALUES = 2**28
MAX_LAYERS = 10_000  # layers in all (chimuf's models: 12; MobileNetV2: 156; EfficientNetB7: 813)


@dataclass(frozen=True)
class Estimate:
    params: int  # weights Keras allocates for the whole model (trainable and not)
    largest_tensor: int  # values per image of the largest tensor the model computes
    layers: int  # layer entries in the config, nested models' included


def estimate(config: Any) -> Estimate:
    """Parameters and largest tensor of the model in `config` (config.json, parsed).

    Raises ModelError (without the file name: the caller adds it) when the config is not a model
    chimuf can size."""
    counter = Counter()
    try:
        if not isinstance(config, dict) or config.get("class_name") not in MODELS:
            raise Unsized(f"its top object is {describe(config)}, not a Keras model (Functional or "
                          "Sequential)")
        counter.model(config, None)
        if counter.layers > MAX_LAYERS:
            raise Unsized(f"it has {counter.layers:,} layers, more than the {MAX_LAYERS:,} chimuf opens")
    except Unsized as exc:
        raise ModelError(str(exc)) from None
    return Estimate(counter.params, counter.largest, counter.layers)


def describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"`{obj.get('module', '')}.{obj.get('class_name')}`".replace("`.", "`")
    return f"a JSON {type(obj).__name__}"


class Counter:
    """Walks one model config, summing parameters and noting the largest tensor."""

    def __init__(self) -> None:
        self.params = 0
        self.largest = 0
        self.layers = 0

    # --- models -------------------------------------------------------------------------------

    def model(self, entry: dict[str, Any], given: list[Shape] | None) -> list[Shape]:
        """Count a (nested) model; its output shapes. `given`: the shapes it is called on, if it
        is a layer of an outer model (they fill the sizes its own inputs leave open)."""
        config = mapping(entry.get("config"), f"the config of model {describe(entry)}")
        if entry.get("class_name") == "Sequential":
            return self.sequential(config, given)
        return self.functional(config, given)

    def sequential(self, config: dict[str, Any], given: list[Shape] | None) -> list[Shape]:
        layers = listing(config.get("layers"), "a Sequential model's `layers`")
        self.layers += len(layers)
        shape: Shape | None = None
        if config.get("build_input_shape") is not None:
            shape = parse_shape(config["build_input_shape"], "the Sequential's build_input_shape")
        first = True
        for index, layer in enumerate(layers):
            layer = mapping(layer, f"layer {index} of a Sequential model")
            if layer.get("class_name") == "InputLayer":
                shape = input_shape(layer)
                self.note(shape, layer)
                continue
            if first:  # the shape the chain starts from, open sizes filled by the caller's
                shape = merged(shape, given[0] if given else None, layer)
                first = False
            built = self.built_params(layer)
            if shape is None:  # Keras builds such a layer only from its build_config
                self.params += built
                continue
            params, outputs = self.apply(layer, [shape])
            self.params += max(built, params)
            if len(outputs) != 1:
                raise Unsized(f"layer {name_of(layer)} of a Sequential model has {len(outputs)} outputs")
            shape = outputs[0]
        return [shape] if shape is not None else []

    def functional(self, config: dict[str, Any], given: list[Shape] | None) -> list[Shape]:
        """Follow the graph: each node's inputs are outputs of earlier nodes, named by
        `keras_history` [layer, node, tensor]. Nodes are resolved as their inputs appear (the
        file's order need not be topological), each once."""
        layers = [mapping(layer, f"layer {i} of a Functional model")
                  for i, layer in enumerate(listing(config.get("layers"), "a Functional model's `layers`"))]
        names = [raw_name(layer) for layer in layers]
        self.layers += len(layers)
        if len(set(names)) != len(names):
            raise Unsized("two layers of one Functional model have the same name")
        produced: dict[tuple[str, int, int], Shape] = {}
        for name, layer in zip(names, layers, strict=True):
            if layer.get("class_name") == "InputLayer":
                produced[(name, 0, 0)] = input_shape(layer)
        inputs = endpoints(config.get("input_layers", []), "`input_layers`")
        for position, key in enumerate(inputs):
            if key not in produced:
                raise Unsized(f"the model's input `{key[0]}` is not an input layer of the file")
            if given and len(given) == len(inputs):
                produced[key] = merged(produced[key], given[position], layers[names.index(key[0])])
            self.note(produced[key], layers[names.index(key[0])])
        graph_params: dict[str, int] = {}
        waiting: dict[tuple[str, int, int], list[tuple[int, int, list[tuple[str, int, int]]]]] = {}
        ready: list[tuple[int, int, list[tuple[str, int, int]]]] = []
        for index, layer in enumerate(layers):
            if layer.get("class_name") == "InputLayer":
                continue
            for node_index, node in enumerate(listing(layer.get("inbound_nodes", []),
                                                      f"the inbound_nodes of layer {name_of(layer)}")):
                keys = [history(t, f"an input of layer {name_of(layer)}") for t in keras_tensors(node)]
                ready.append((index, node_index, keys))
        while ready:
            index, node_index, keys = ready.pop()
            missing = next((key for key in keys if key not in produced), None)
            if missing is not None:
                waiting.setdefault(missing, []).append((index, node_index, keys))
                continue
            params, outputs = self.apply(layers[index], [produced[key] for key in keys])
            graph_params.setdefault(names[index], params)  # a shared layer is built on its first call
            for tensor_index, shape in enumerate(outputs):
                key = (names[index], node_index, tensor_index)
                produced[key] = shape
                ready.extend(waiting.pop(key, []))
        if waiting:  # name an output of a layer the file lacks, where there is one
            layer_name, node, tensor = next((k for k in waiting if k[0] not in names), next(iter(waiting)))
            raise Unsized(f"a layer's input is output {tensor} of call {node} of layer `{layer_name}`, "
                          "which no layer of the file makes")
        for index, layer in enumerate(layers):
            if layer.get("class_name") != "InputLayer":
                self.params += max(self.built_params(layer), graph_params.get(names[index], 0))
        outputs = endpoints(config.get("output_layers", []), "`output_layers`")
        for key in outputs:
            if key not in produced:
                raise Unsized(f"the model's output `{key[0]}` is made by no layer of the file")
        return [produced[key] for key in outputs]

    # --- layers -------------------------------------------------------------------------------

    def apply(self, layer: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
        """(parameters, output shapes) of `layer` called on tensors of shapes `inputs`."""
        class_name = layer.get("class_name")
        module = str(layer.get("module") or "")
        if class_name in MODELS:
            outer, self.params = self.params, 0
            outputs = self.model(layer, inputs)
            params, self.params = self.params, outer
            return params, outputs
        rules = {"keras": RULES, "chimuf": CHIMUF_RULES}.get(module.split(".")[0], {})
        rule = rules.get(class_name)
        if rule is None:
            raise Unsized(f"layer {name_of(layer)} is a {describe(layer)}, whose size chimuf cannot tell "
                          f"from its config; chimuf opens models made of "
                          f"{', '.join(sorted({**RULES, **CHIMUF_RULES}))}")
        config = mapping(layer.get("config", {}), f"the config of layer {name_of(layer)}")
        try:
            params, outputs = rule(config, inputs)
        except Unsized as exc:
            raise Unsized(f"layer {name_of(layer)} ({class_name}): {exc}") from None
        for shape in outputs:
            self.note(shape, layer)
        return params, outputs

    def built_params(self, layer: dict[str, Any]) -> int:
        """Parameters the layer gets from its build_config alone: Keras builds it so first."""
        build = layer.get("build_config")
        if not isinstance(build, dict) or layer.get("class_name") in MODELS:
            return 0
        if build.get("input_shape") is not None:
            claimed = build["input_shape"]
            many = isinstance(claimed, list) and bool(claimed) and all(isinstance(s, list) for s in claimed)
            shapes = [parse_shape(s, "a build_config shape") for s in (claimed if many else [claimed])]
        elif isinstance(build.get("shapes_dict"), dict):
            shapes = [parse_shape(s, "a build_config shape") for s in build["shapes_dict"].values()]
        else:
            return 0
        params, _ = self.apply(layer, shapes)
        return params

    def note(self, shape: Shape, layer: dict[str, Any]) -> None:
        values = math.prod(d for d in shape[1:] if d is not None)
        if values > MAX_TENSOR_VALUES:
            raise Unsized(f"layer {name_of(layer)} makes a tensor of shape {list(shape)}: {values:,} values "
                          f"per image, more than the {MAX_TENSOR_VALUES:,} chimuf allows")
        self.largest = max(self.largest, values)


def merged(own: Shape | None, given: Shape | None, layer: dict[str, Any]) -> Shape | None:
    """A nested model's input shape, its open sizes filled from the shape it is called on."""
    if own is None or given is None:
        return own if own is not None else given
    if len(own) != len(given) or any(a is not None and b is not None and a != b
                                     for a, b in zip(own[1:], given[1:], strict=True)):
        raise Unsized(f"a nested model built for inputs {list(own)} is called on {list(given)} at layer "
                      f"{name_of(layer)}")
    return tuple(a if a is not None else b for a, b in zip(own, given, strict=True))


MODELS = ("Functional", "Sequential")


# --- reading the config --------------------------------------------------------------------------


def mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Unsized(f"{what} is not a JSON object")
    return value


def listing(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Unsized(f"{what} is not a JSON list")
    return value


def raw_name(layer: dict[str, Any]) -> str:
    """The layer's name, as `keras_history` entries refer to it."""
    name = layer.get("name")
    if name is None and isinstance(layer.get("config"), dict):
        name = layer["config"].get("name")
    return str(name)


def name_of(layer: dict[str, Any]) -> str:
    """The layer's name as messages show it, in backticks."""
    return f"`{raw_name(layer)[:60]}`"


def input_shape(layer: dict[str, Any]) -> Shape:
    config = mapping(layer.get("config"), f"the config of input layer {name_of(layer)}")
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    if shape is None:
        raise Unsized(f"input layer {name_of(layer)} has no batch_shape")
    return parse_shape(shape, f"the shape of input layer {name_of(layer)}")


def parse_shape(value: Any, what: str) -> Shape:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_RANK:
        raise Unsized(f"{what} is not a list of 1 to {MAX_RANK} sizes")
    for d in value:
        if d is not None and not (isinstance(d, int) and not isinstance(d, bool) and d >= 0):
            raise Unsized(f"{what} holds {d!r}, not a size (a whole number or null)")
    return tuple(value)


def history(tensor: Any, what: str) -> tuple[str, int, int]:
    """[layer, node, tensor] of a `__keras_tensor__` (or of an input/output_layers entry)."""
    if isinstance(tensor, dict):
        tensor = (tensor.get("config") or {}).get("keras_history")
    if not (isinstance(tensor, list) and len(tensor) == 3 and isinstance(tensor[0], str)
            and all(isinstance(i, int) and not isinstance(i, bool) for i in tensor[1:])):
        raise Unsized(f"{what} does not name a layer output [layer, node, tensor]")
    return (tensor[0], tensor[1], tensor[2])


def endpoints(value: Any, what: str) -> list[tuple[str, int, int]]:
    """A model's input_layers or output_layers: one [layer, node, tensor], or a list of them."""
    items = listing(value, what)
    if len(items) == 3 and isinstance(items[0], str):
        items = [items]
    return [history(item, f"an entry of {what}") for item in items]


def keras_tensors(node: Any) -> Iterator[dict[str, Any]]:
    """The `__keras_tensor__` objects of a node's args and kwargs, in order."""
    stack = [node.get("args", []), node.get("kwargs", {})] if isinstance(node, dict) else [node]
    stack.reverse()
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__":
                yield item
            else:
                stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))
