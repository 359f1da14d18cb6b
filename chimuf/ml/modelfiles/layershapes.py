"""What each Keras layer type makes of its inputs: its parameters and its output shapes.

One rule per family of layers, `rule(layer config, input shapes) -> (parameters, output shapes)`,
following Keras' own `build` and `compute_output_shape` (keras.src.layers, Keras 3.15) without
running them: chimuf.ml.modelfiles.modelsize walks a config.json with these to size a model before Keras
builds it. A value a rule cannot use (a size that is not a whole number, an axis that does not
exist) raises Unsized, which says which key held what.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Shape = tuple[int | None, ...]  # (batch, ...): None where the size is left open
Rule = Callable[[dict[str, Any], list[Shape]], tuple[int, list[Shape]]]

MAX_RANK = 8  # dimensions of a tensor, batch included


class Unsized(Exception):
    """The config cannot be sized (unknown layer, malformed shape or value); says where."""


# --- reading a layer's config --------------------------------------------------------------------


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
    return 0, [(shape[0], None if None in rest else math.prod(rest))]


def reshape_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    shape = single(inputs)
    target = config.get("target_shape")
    if not (isinstance(target, list) and 1 <= len(target) < MAX_RANK
            and all(isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1) for d in target)
            and target.count(-1) <= 1):
        raise Unsized(f"`target_shape` is {target!r}")
    if -1 in target:
        total = None if None in shape[1:] else math.prod(shape[1:])
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
    out[axis] = None if None in joined else sum(joined)
    return 0, [tuple(out)]


def resize_rule(config: dict[str, Any], inputs: list[Shape]) -> tuple[int, list[Shape]]:
    """Resizing, CenterCrop, RandomCrop: images of height × width."""
    shape = single(inputs)
    if len(shape) != 4:
        raise Unsized(f"it needs images (rank 4), gets {list(shape)}")
    size = [whole(config, "height"), whole(config, "width")]
    return 0, [spatial_shape(shape, config, size, shape[channel_axis(config, 4)])]


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
# chimuf's own layers (module chimuf.*), sized like the Keras layer they stand in for
CHIMUF_RULES: dict[str, Rule] = {
    "FusedBatchNorm": batch_norm_rule,  # ml.architectures.fusednorm: gamma, beta, moving mean, variance
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
