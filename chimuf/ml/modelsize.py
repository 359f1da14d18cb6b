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

Layer types: the ones chimuf's models use (InputLayer, Rescaling, Conv2D, MaxPooling2D, Dropout,
Flatten, Dense) and the ones an image classifier built with Keras may use (the other
convolutions, poolings, normalisations, activations, reshapes, merges, image preprocessing layers,
and nested Functional or Sequential models). Any other type is refused: its size cannot be told
from its config without running its code, and the conservative rule is to not guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from chimuf.core.errors import ModelError

Shape = tuple[int | None, ...]  # (batch, ...): None where the size is left open
Rule = Callable[[dict[str, Any], list[Shape]], tuple[int, list[Shape]]]

# Values in any one tensor, per image. chimuf's largest possible model (512 px, a first conv of
# 1024 filters: chimuf.core.config's bounds) has 512 * 512 * 1024 = 2**28; nothing real needs more.
MAX_TENSOR_VALUES = 2**28
MAX_RANK = 8  # dimensions of a tensor, batch included
MAX_LAYERS = 10_000  # layers in all (chimuf's models: 12; MobileNetV2: 156; EfficientNetB7: 813)


@dataclass(frozen=True)
class Estimate:
    params: int  # weights Keras allocates for the whole model (trainable and not)
    largest_tensor: int  # values per image of the largest tensor the model computes
    layers: int  # layer entries in the config, nested models' included


class Unsized(Exception):
    """The config cannot be sized (unknown layer, malformed shape or value); says where."""


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
        rule = RULES.get(class_name) if module.split(".")[0] == "keras" else None
        if rule is None:
            raise Unsized(f"layer {name_of(layer)} is a {describe(layer)}, whose size chimuf cannot tell "
                          f"from its config; chimuf opens models made of {', '.join(sorted(RULES))}")
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


def whole(config: dict[str, Any], key: str, default: Any = None, low: int = 1) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise Unsized(f"`{key}` is {value!r}, not a whole number of at least {low}")
    return value


def sizes(config: dict[str, Any], key: str, rank: int, default: Any = None) -> tuple[int, ...]:
    """An int or a list of `rank` ints (kernel_size, strides, ...), each at least 1."""
    value = config.get(key, default)
    if value is None:
        value = default
    values = [value] * rank if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(values, list | tuple) and len(values) == rank):
        raise Unsized(f"`{key}` is {value!r}, not {rank} size(s)")
    return tuple(whole({key: v}, key) for v in values)


def flag(config: dict[str, Any], key: str, default: bool) -> int:
    return int(bool(config.get(key, default)))


def single(inputs: list[Shape]) -> Shape:
    if len(inputs) != 1:
        raise Unsized(f"it takes one input, the file gives it {len(inputs)}")
    return inputs[0]


def known(size: int | None, what: str) -> int:
    if size is None:
        raise Unsized(f"its {what} is left open (null); Keras needs it to build the weights")
    return size


def channel_axis(config: dict[str, Any], rank: int) -> int:
    return 1 if config.get("data_format") == "channels_first" else rank - 1


def axes_of(config: dict[str, Any], shape: Shape, default: Any = -1) -> list[int]:
    axis = config.get("axis", default)
    axes = axis if isinstance(axis, list) else [axis]
    out = []
    for a in axes:
        rank = len(shape)
        if isinstance(a, bool) or not isinstance(a, int) or not -rank <= a < rank or a % rank == 0:
            raise Unsized(f"`axis` {axis!r} is not an axis of a tensor of rank {len(shape)}")
        out.append(a % len(shape))
    return out


def lora(config: dict[str, Any], fan_in: int, fan_out: int) -> int:
    """The two low-rank matrices Keras adds to Dense, Conv and Embedding when lora_rank is set."""
    rank = config.get("lora_rank")
    return 0 if rank is None else whole(config, "lora_rank") * (fan_in + fan_out)


# --- the rules, one per family of layers ---------------------------------------------------------


def conv_length(n: int | None, kernel: int, stride: int, dilation: int, padding: str) -> int | None:
    """Keras' output length of a convolution or pooling (keras.src.ops.operation_utils)."""
    if n is None:
        return None
    if padding in ("same", "causal"):
        return (n + stride - 1) // stride
    effective = dilation * (kernel - 1) + 1
    return max(0, (n - effective) // stride + 1)


def transpose_length(n: int | None, kernel: int, stride: int, dilation: int, padding: str,
                     output_padding: int | None) -> int | None:
    """Keras' deconv_output_length."""
    if n is None:
        return None
    kernel = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        return n * stride + max(kernel - stride, 0) if padding == "valid" else n * stride
    pad = kernel // 2 if padding == "same" else 0
    return (n - 1) * stride + kernel - 2 * pad + output_padding


def spatial_shape(shape: Shape, config: dict[str, Any], lengths: list[int | None], channels: int) -> Shape:
    """`shape` with its spatial sizes replaced by `lengths` and its channels by `channels`."""
    rank = len(shape)
    if config.get("data_format") == "channels_first":
        return (shape[0], channels, *lengths)
    return (shape[0], *lengths, channels) if rank > 2 else (shape[0], channels)


def spatial_sizes(shape: Shape, config: dict[str, Any]) -> list[int | None]:
    return list(shape[2:]) if config.get("data_format") == "channels_first" else list(shape[1:-1])


def padding_of(config: dict[str, Any]) -> str:
    padding = str(config.get("padding", "valid")).lower()
    if padding not in ("valid", "same", "causal"):
        raise Unsized(f"`padding` is {padding!r}")
    return padding


def conv_rule(rank: int, kind: str) -> Rule:
    """Conv{rank}D, Conv{rank}DTranspose, SeparableConv{rank}D, DepthwiseConv{rank}D."""
    def rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
        shape = single(inputs)
        if len(shape) != rank + 2:
            raise Unsized(f"it needs inputs of rank {rank + 2}, gets {list(shape)}")
        cin = known(shape[channel_axis(config, len(shape))], "channel count")
        kernel = sizes(config, "kernel_size", rank)
        strides = sizes(config, "strides", rank, 1)
        dilation = sizes(config, "dilation_rate", rank, 1)
        padding = padding_of(config)
        bias = flag(config, "use_bias", True)
        window = math.prod(kernel)
        if kind == "depthwise" or kind == "separable":
            multiplier = whole(config, "depth_multiplier", 1)
            depthwise = window * cin * multiplier
            filters = cin * multiplier if kind == "depthwise" else whole(config, "filters")
            pointwise = cin * multiplier * filters if kind == "separable" else 0
            params = depthwise + pointwise + bias * filters
        else:
            filters = whole(config, "filters")
            groups = whole(config, "groups", 1)
            params = window * (cin // groups if kind == "conv" else cin) * filters + bias * filters
            params += lora(config, window * cin, filters)
        lengths = spatial_sizes(shape, config)
        if kind == "transpose":
            pads = config.get("output_padding")
            out_pad = sizes(config, "output_padding", rank) if pads is not None else (None,) * rank
            out = [transpose_length(n, k, s, d, padding, p)
                   for n, k, s, d, p in zip(lengths, kernel, strides, dilation, out_pad, strict=True)]
        else:
            out = [conv_length(n, k, s, d, padding)
                   for n, k, s, d in zip(lengths, kernel, strides, dilation, strict=True)]
        return params, [spatial_shape(shape, config, out, filters)]

    return rule


def pool_rule(rank: int) -> Rule:
    def rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
        shape = single(inputs)
        if len(shape) != rank + 2:
            raise Unsized(f"it needs inputs of rank {rank + 2}, gets {list(shape)}")
        pool = sizes(config, "pool_size", rank, 2)
        strides = sizes(config, "strides", rank, list(pool))  # Keras: strides default to pool_size
        padding = padding_of(config)
        out = [conv_length(n, k, s, 1, padding)
               for n, k, s in zip(spatial_sizes(shape, config), pool, strides, strict=True)]
        channels = shape[channel_axis(config, len(shape))]
        return 0, [spatial_shape(shape, config, out, channels)]

    return rule


def global_pool_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    channels = shape[channel_axis(config, len(shape))]
    if config.get("keepdims"):
        return 0, [spatial_shape(shape, config, [1] * (len(shape) - 2), channels)]
    return 0, [(shape[0], channels)]


def dense_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    cin = known(shape[-1], "last dimension")
    units = whole(config, "units")
    params = cin * units + flag(config, "use_bias", True) * units + lora(config, cin, units)
    return params, [(*shape[:-1], units)]


def per_axis(config: dict[str, Any], shape: Shape, default: Any = -1) -> int:
    return math.prod(known(shape[a], "normalised axis") for a in axes_of(config, shape, default))


def batch_norm_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    c = per_axis(config, shape)
    kept = flag(config, "center", True) + flag(config, "scale", True) + 2  # beta, gamma, mean, variance
    return c * (kept + 3 * flag(config, "renorm", False)), [shape]


def layer_norm_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    return per_axis(config, shape) * (flag(config, "center", True) + flag(config, "scale", True)), [shape]


def rms_norm_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    return per_axis(config, shape), [shape]


def normalization_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    """Preprocessing Normalization: mean and variance over the kept axes, and a count."""
    shape = single(inputs)
    c = 1 if config.get("axis", -1) is None else per_axis(config, shape)
    return 2 * c + 1, [shape]


def prelu_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    shared = config.get("shared_axes") or []
    shared = shared if isinstance(shared, list) else [shared]
    dims = [1 if i in shared else known(d, "size") for i, d in enumerate(shape[1:], start=1)]
    return math.prod(dims), [shape]


def same_shape(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    return 0, [single(inputs)]


def flatten_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    rest = shape[1:]
    return 0, [(shape[0], None if None in rest else math.prod(rest))]  # type: ignore[arg-type]


def reshape_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    target = config.get("target_shape")
    if not (isinstance(target, list) and 1 <= len(target) < MAX_RANK
            and all(isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1) for d in target)
            and target.count(-1) <= 1):
        raise Unsized(f"`target_shape` is {target!r}")
    if -1 in target:
        total = None if None in shape[1:] else math.prod(shape[1:])  # type: ignore[arg-type]
        rest = math.prod(d for d in target if d != -1)
        target = [(total // rest if total is not None else None) if d == -1 else d for d in target]
    return 0, [(shape[0], *target)]


def permute_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    dims = config.get("dims")
    if not (isinstance(dims, list) and sorted(dims) == list(range(1, len(shape)))):
        raise Unsized(f"`dims` is {dims!r}")
    return 0, [(shape[0], *(shape[d] for d in dims))]


def repeat_vector_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    return 0, [(shape[0], whole(config, "n"), *shape[1:])]


def resample_rule(rank: int, kind: str) -> Rule:
    """UpSampling (×size), ZeroPadding (+pads), Cropping (−crops) of the spatial sizes."""
    def rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
        shape = single(inputs)
        if len(shape) != rank + 2:
            raise Unsized(f"it needs inputs of rank {rank + 2}, gets {list(shape)}")
        lengths = spatial_sizes(shape, config)
        if kind == "up":
            factors = sizes(config, "size", rank, 2)
            out = [None if n is None else n * f for n, f in zip(lengths, factors, strict=True)]
        else:
            key = "padding" if kind == "pad" else "cropping"
            amounts = pairs(config.get(key, 1 if kind == "pad" else 0), rank, key)
            sign = 1 if kind == "pad" else -1
            out = [None if n is None else n + sign * sum(p) for n, p in zip(lengths, amounts, strict=True)]
            if any(n is not None and n < 0 for n in out):
                raise Unsized(f"`{key}` crops more than the input holds")
        channels = shape[channel_axis(config, len(shape))]
        return 0, [spatial_shape(shape, config, out, channels)]

    return rule


def pairs(value: Any, rank: int, key: str) -> list[tuple[int, int]]:
    """ZeroPadding's and Cropping's amounts: an int, one int per side, or a (before, after) pair per dim."""
    def amount(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise Unsized(f"`{key}` holds {v!r}, not a whole number of at least 0")
        return v

    if isinstance(value, int) and not isinstance(value, bool):
        return [(amount(value), amount(value))] * rank
    if rank == 1 and isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return [(amount(value[0]), amount(value[1]))]
    if not (isinstance(value, list) and len(value) == rank):
        raise Unsized(f"`{key}` is {value!r}")
    out = []
    for v in value:
        if isinstance(v, list) and len(v) == 2:
            out.append((amount(v[0]), amount(v[1])))
        else:
            out.append((amount(v), amount(v)))
    return out


def merge_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    """Add, Multiply, ...: the inputs broadcast against each other."""
    if len(inputs) < 1 or len({len(s) for s in inputs}) != 1:
        raise Unsized("its inputs do not have one rank")
    out = tuple(None if any(d is None for d in dims) else max(dims) for dims in zip(*inputs, strict=True))
    return 0, [out]


def concatenate_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    if len(inputs) < 1 or len({len(s) for s in inputs}) != 1:
        raise Unsized("its inputs do not have one rank")
    (axis,) = axes_of(config, inputs[0])
    joined = [s[axis] for s in inputs]
    out = list(inputs[0])
    out[axis] = None if None in joined else sum(joined)  # type: ignore[arg-type]
    return 0, [tuple(out)]


def resize_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    """Resizing, CenterCrop, RandomCrop: images of height × width."""
    shape = single(inputs)
    if len(shape) != 4:
        raise Unsized(f"it needs images (rank 4), gets {list(shape)}")
    size = [whole(config, "height"), whole(config, "width")]
    return 0, [spatial_shape(shape, config, size, shape[channel_axis(config, 4)])]  # type: ignore[arg-type]


SAME_SHAPE = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D",
              "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
              "ActivityRegularization", "Identity", "Masking", "UnitNormalization", "Rescaling",
              "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
              "RandomBrightness")
RULES: dict[str, Rule] = {
    **{name: same_shape for name in SAME_SHAPE},
    "Dense": dense_rule,
    "BatchNormalization": batch_norm_rule,
    "LayerNormalization": layer_norm_rule,
    "GroupNormalization": layer_norm_rule,
    "RMSNormalization": rms_norm_rule,
    "Normalization": normalization_rule,
    "PReLU": prelu_rule,
    "Flatten": flatten_rule,
    "Reshape": reshape_rule,
    "Permute": permute_rule,
    "RepeatVector": repeat_vector_rule,
    "Add": merge_rule, "Subtract": merge_rule, "Multiply": merge_rule, "Average": merge_rule,
    "Maximum": merge_rule, "Minimum": merge_rule,
    "Concatenate": concatenate_rule,
    "Resizing": resize_rule, "CenterCrop": resize_rule, "RandomCrop": resize_rule,
    "GlobalAveragePooling1D": global_pool_rule, "GlobalAveragePooling2D": global_pool_rule,
    "GlobalAveragePooling3D": global_pool_rule, "GlobalMaxPooling1D": global_pool_rule,
    "GlobalMaxPooling2D": global_pool_rule, "GlobalMaxPooling3D": global_pool_rule,
}
for _rank in (1, 2, 3):
    RULES[f"Conv{_rank}D"] = conv_rule(_rank, "conv")
    RULES[f"Conv{_rank}DTranspose"] = conv_rule(_rank, "transpose")
    RULES[f"MaxPooling{_rank}D"] = pool_rule(_rank)
    RULES[f"AveragePooling{_rank}D"] = pool_rule(_rank)
    RULES[f"UpSampling{_rank}D"] = resample_rule(_rank, "up")
    RULES[f"ZeroPadding{_rank}D"] = resample_rule(_rank, "pad")
    RULES[f"Cropping{_rank}D"] = resample_rule(_rank, "crop")
for _rank in (1, 2):
    RULES[f"SeparableConv{_rank}D"] = conv_rule(_rank, "separable")
    RULES[f"DepthwiseConv{_rank}D"] = conv_rule(_rank, "depthwise")
