"""EfficientNet-Lite as an ONNX graph, built with ``onnx.helper`` straight from a numpy state dict (no torch).

The state dict (lukemelas / EfficientNet-Lite-PyTorch key names) tells us widths, kernel sizes and expansion
ratios; only the stage strides are not stored in the weights and come from the EfficientNet block table. So the
same builder reads lite0, lite1 and lite2 (more blocks, wider channels, larger input) without per-variant code.

Graph, for input ``image`` float32 [n, 3, S, S] normalised (x − 127) / 128:

* stem 3×3/2 conv → 16 MBConv blocks (expand 1×1, depthwise k×k, project 1×1; skip when shapes match; no SE)
  → head 1×1 conv; every conv has its batch norm (eps 1e-3) folded in, every activation is ReLU6 (``Clip 0..6``);
* padding is TensorFlow "SAME", computed for S: stride-2 convs pad more at the bottom/right than at the top/left;
* ``embedding`` [n, C]: pooled head features (``avg`` by default; ``max``, ``gem``, ``rmac``), L2-normalised inside
  the graph; with ``+flip`` the mirrored image goes through in the same batch and the two unit vectors are summed;
* ``+colour``: the photo's colour histogram (:func:`_colour_histogram`) is appended, weighted ``COLOUR_WEIGHT``,
  and the whole vector normalised again;
* ``logits`` [n, 1000]: the ImageNet classifier on average-pooled features (proves the weights are wired right).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from catalens.errors import ModelError

OPSET = 17
BN_EPS = 1e-3
# EfficientNet's seven stages: the stride of each stage's first block (the weights do not record it).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
STEM_STRIDE = 2
INPUT_NAME = "image"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
L2_EPS = 1e-12
INPUT_STD = 128.0  # the graph's input is (x - 127) / 128 of 0..255 RGB
# The colour histogram (``+colour``): COLOUR_BINS × COLOUR_BINS soft bins over the opponent-colour chroma plane,
# on the input averaged over COLOUR_POOL × COLOUR_POOL pixel cells; appended with weight COLOUR_WEIGHT, so it makes
# w²/(1 + w²) = 14% of a cosine. Chosen on the grocery train split with calibration (docs/evaluation.md).
COLOUR_BINS = 12
COLOUR_RANGE = 0.45  # bin centres from -0.45 to 0.45 on both chroma axes (RGB in 0..1)
COLOUR_POOL = 4
COLOUR_WEIGHT = 0.4


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block as read from the weights."""

    index: int
    in_channels: int
    expanded_channels: int
    out_channels: int
    kernel: int
    stride: int

    @property
    def has_expand(self) -> bool:
        return self.expanded_channels != self.in_channels

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


@dataclass(frozen=True)
class Architecture:
    """Shapes of an EfficientNet-Lite network, inferred from its state dict."""

    stem_channels: int
    blocks: tuple[BlockSpec, ...]
    head_channels: int
    num_classes: int


@dataclass(frozen=True)
class Pooling:
    """How the head's feature map becomes one vector: ``avg``, ``max``, ``gem`` (generalised mean, power p) or
    ``rmac`` (regional max, 3 levels); ``flip`` also embeds the mirrored image and sums the two unit vectors;
    ``colour`` appends the photo's colour histogram (:func:`_colour_histogram`) to the network's unit vector."""

    kind: str
    p: float = 3.0
    flip: bool = False
    colour: bool = False

    @classmethod
    def parse(cls, spec: str) -> Pooling:
        """``"avg"``, ``"max"``, ``"gem"`` (p = 3), ``"gem:2.5"`` or ``"rmac"``, each optionally ``+flip`` and/or
        ``+colour``."""
        base, *modifiers = spec.strip().lower().split("+")
        if any(m not in ("flip", "colour") for m in modifiers) or len(set(modifiers)) != len(modifiers):
            raise ModelError(f"pooling {spec!r}: the modifiers are '+flip' and '+colour', each at most once")
        flip, colour = "flip" in modifiers, "colour" in modifiers
        kind, _, arg = base.partition(":")
        if kind in ("avg", "max", "rmac") and not arg:
            return cls(kind, flip=flip, colour=colour)
        if kind == "gem":
            try:
                p = float(arg) if arg else 3.0
            except ValueError:
                raise ModelError(f"pooling {spec!r}: GeM power must be a number") from None
            if not (0.0 < p <= 16.0):
                raise ModelError(f"pooling {spec!r}: GeM power must be in (0, 16]")
            return cls("gem", p, flip, colour)
        raise ModelError(
            f"unknown pooling {spec!r} (use avg, max, gem, gem:<p> or rmac, optionally +flip and/or +colour)"
        )

    def __str__(self) -> str:
        base = f"gem:{self.p:g}" if self.kind == "gem" else self.kind
        return base + ("+flip" if self.flip else "") + ("+colour" if self.colour else "")

    @property
    def colour_dims(self) -> int:
        """How many dimensions the colour histogram adds to the embedding (0 without ``+colour``)."""
        return COLOUR_BINS**2 if self.colour else 0

    def network_only(self) -> Pooling:
        """The same pooling without the colour histogram (what each member of an ensemble uses)."""
        return Pooling(self.kind, self.p, self.flip)


def _shape(state_dict: dict[str, np.ndarray], key: str) -> tuple[int, ...]:
    try:
        return tuple(state_dict[key].shape)
    except KeyError:
        raise ModelError(f"state dict lacks {key!r}; not an EfficientNet-Lite checkpoint") from None


def infer_architecture(state_dict: dict[str, np.ndarray]) -> Architecture:
    """Read block widths, kernels and expansions from the weights; strides from the stage table."""
    if any(".se_" in k or "_se_" in k for k in state_dict):
        raise ModelError("state dict has squeeze-excitation weights: this builder handles EfficientNet-Lite only")
    indices = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"_blocks\.(\d+)\.", k))})
    if not indices or indices != list(range(len(indices))):
        raise ModelError("state dict has no contiguous _blocks.<i> entries")
    stem_out, stem_in, *_ = _shape(state_dict, "_conv_stem.weight")
    if stem_in != 3:
        raise ModelError(f"stem expects {stem_in} input channels, not RGB")
    blocks: list[BlockSpec] = []
    channels = stem_out
    stage, previous_out = -1, None
    for i in indices:
        dw_out, dw_group, k_h, k_w = _shape(state_dict, f"_blocks.{i}._depthwise_conv.weight")
        if dw_group != 1 or k_h != k_w:
            raise ModelError(f"block {i}: depthwise conv has shape {(dw_out, dw_group, k_h, k_w)}")
        expand_key = f"_blocks.{i}._expand_conv.weight"
        if expand_key in state_dict:
            expanded, expand_in, *_ = _shape(state_dict, expand_key)
            if expand_in != channels:
                raise ModelError(f"block {i}: expand conv takes {expand_in} channels, previous layer gives {channels}")
        else:
            expanded = channels
        if dw_out != expanded:
            raise ModelError(f"block {i}: depthwise conv has {dw_out} channels, expected {expanded}")
        out, project_in, *_ = _shape(state_dict, f"_blocks.{i}._project_conv.weight")
        if project_in != expanded:
            raise ModelError(f"block {i}: project conv takes {project_in} channels, expected {expanded}")
        if out != previous_out:  # every EfficientNet stage changes the channel count in its first block
            stage += 1
            if stage >= len(STAGE_STRIDES):
                raise ModelError(f"more than {len(STAGE_STRIDES)} stages in the state dict")
            stride = STAGE_STRIDES[stage]
        else:
            stride = 1
        blocks.append(BlockSpec(i, channels, expanded, out, k_h, stride))
        channels, previous_out = out, out
    if stage != len(STAGE_STRIDES) - 1:
        raise ModelError(f"found {stage + 1} stages, EfficientNet has {len(STAGE_STRIDES)}")
    head_out, head_in, *_ = _shape(state_dict, "_conv_head.weight")
    if head_in != channels:
        raise ModelError(f"head conv takes {head_in} channels, last block gives {channels}")
    num_classes, fc_in = _shape(state_dict, "_fc.weight")
    if fc_in != head_out:
        raise ModelError(f"classifier takes {fc_in} features, head gives {head_out}")
    return Architecture(stem_out, tuple(blocks), head_out, num_classes)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "SAME": (pad_before, pad_after, output_size); the odd pixel goes after (bottom/right)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _GraphBuilder:
    """Accumulates nodes and initializers with deterministic names (same weights → same bytes)."""

    def __init__(self, state_dict: dict[str, np.ndarray], bn_eps: float) -> None:
        self.sd = state_dict
        self.bn_eps = bn_eps
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def folded_conv(
        self, x: str, conv: str, bn: str, name: str, *, stride: int, size: int, groups: int = 1
    ) -> tuple[str, int]:
        """Conv + BatchNorm folded into one Conv with bias; returns (output, output spatial size)."""
        weight = self.sd[f"{conv}.weight"].astype(np.float64)
        gamma, beta = self.sd[f"{bn}.weight"].astype(np.float64), self.sd[f"{bn}.bias"].astype(np.float64)
        mean, var = self.sd[f"{bn}.running_mean"].astype(np.float64), self.sd[f"{bn}.running_var"].astype(np.float64)
        scale = gamma / np.sqrt(var + self.bn_eps)
        w = (weight * scale[:, None, None, None]).astype(np.float32)
        b = (beta - mean * scale).astype(np.float32)
        kernel = weight.shape[-1]
        before, after, out = same_padding(size, kernel, stride)
        self.node(
            "Conv",
            [x, self.const(f"{name}.w", w), self.const(f"{name}.b", b)],
            name,
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=groups,
        )
        return name, out

    def relu6(self, x: str) -> str:
        return self.node("Clip", [x, "relu6.min", "relu6.max"], f"{x}.relu6")


def rmac_regions(side: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """R-MAC regions (Tolias, Sicre, Jégou 2016; cirtorch's layout) on a square ``side``×``side`` map, as
    (top, left, region side): the whole map, then at level l an l×l grid of squares of side ⌊2·side/(l+1)⌋."""
    regions = [(0, 0, side)]
    for level in range(1, levels + 1):
        region = math.floor(2 * side / (level + 1))
        half = math.floor(region / 2 - 1)
        step = (side - region) / (level - 1) if level > 1 else 0.0
        starts = [int(math.floor(half + i * step) - half) for i in range(level)]
        regions += [(y, x, region) for y in starts for x in starts]
    return regions


def _l2_eps(g: _GraphBuilder) -> str:
    """The shared L2 epsilon, created where first needed (so plain poolings keep their exact bytes)."""
    if not any(init.name == "l2.eps" for init in g.initializers):
        g.const("l2.eps", np.array(L2_EPS, np.float32))
    return "l2.eps"


def _l2_normalise(g: _GraphBuilder, x: str, name: str) -> str:
    norm = g.node("ReduceL2", [x], f"{name}.norm", axes=[1], keepdims=1)
    norm = g.node("Max", [norm, _l2_eps(g)], f"{name}.norm_clamped")
    return g.node("Div", [x, norm], name)


def _rmac(g: _GraphBuilder, x: str, side: int) -> str:
    """Sum over regions of the L2-normalised max of each region (``[n, C, 1, 1]``)."""
    parts = []
    axes = g.const("rmac.axes", np.array([2, 3], np.int64))
    for i, (top, left, region) in enumerate(rmac_regions(side)):
        starts = g.const(f"rmac.{i}.starts", np.array([top, left], np.int64))
        ends = g.const(f"rmac.{i}.ends", np.array([top + region, left + region], np.int64))
        window = g.node("Slice", [x, starts, ends, axes], f"rmac.{i}.window")
        peak = g.node("ReduceMax", [window], f"rmac.{i}.max", axes=[2, 3], keepdims=1)
        parts.append(_l2_normalise(g, peak, f"rmac.{i}.unit"))
    return g.node("Sum", parts, "pool.rmac")


def colour_bin_centres() -> np.ndarray:
    """``[COLOUR_BINS², 2]`` chroma-plane bin centres (o1 slowest)."""
    axis = np.linspace(-COLOUR_RANGE, COLOUR_RANGE, COLOUR_BINS)
    return np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)


def _colour_histogram(g: _GraphBuilder, x: str) -> str:
    """``[n, COLOUR_BINS²]``: the unit Hellinger colour histogram of the input image ``x`` (``[n, 3, S, S]``).

    Why: ImageNet CNNs are trained to be largely colour-invariant, but product variants often differ only in colour
    (a green, red or yellow pepper; Granny Smith vs Golden Delicious; a dress in two colours). Each pixel cell's
    opponent chroma ``o1 = (R − G)/√2``, ``o2 = (R + G − 2B)/√6`` votes into Gaussian soft bins (σ = bin spacing),
    weighted by its chroma length, so white backgrounds and grey shelves hardly count; the histogram is L1-normalised
    and square-rooted (Hellinger), i.e. unit length. An image without colour gives all zeros.
    """
    cells = g.node("AveragePool", [x], "colour.cells", kernel_shape=[COLOUR_POOL] * 2, strides=[COLOUR_POOL] * 2)
    to_chroma = np.array([[1, -1, 0], [1, 1, -2]], np.float32) / np.array([[math.sqrt(2)], [math.sqrt(6)]])
    to_chroma = (to_chroma * INPUT_STD / 255.0).astype(np.float32)  # the (x - 127) offset cancels: rows sum to 0
    chroma = g.node("Conv", [cells, g.const("colour.to_chroma", to_chroma[:, :, None, None])], "colour.chroma")
    length2 = g.node("ReduceSumSquare", [chroma], "colour.length2", axes=[1], keepdims=1)
    # |c - centre|² = |c|² - 2 c·centre + |centre|², the last two terms as one 1×1 conv with a bias
    centres = colour_bin_centres().astype(np.float32)
    to_bins = g.const("colour.centres", (-2.0 * centres)[:, :, None, None])
    cross = g.node("Conv", [chroma, to_bins, g.const("colour.centres2", (centres**2).sum(1))], "colour.cross")
    distance2 = g.node("Add", [cross, length2], "colour.distance2")
    spread = 2.0 * COLOUR_RANGE / (COLOUR_BINS - 1)
    gamma = g.const("colour.gamma", np.array(-0.5 / spread**2, np.float32))
    votes = g.node("Exp", [g.node("Mul", [distance2, gamma], "colour.scaled")], "colour.votes")
    weighted = g.node("Mul", [votes, g.node("Sqrt", [length2], "colour.length")], "colour.weighted")
    counts = g.node("GlobalAveragePool", [weighted], "colour.mean")
    counts = g.node("Reshape", [counts, g.const("colour.flat", np.array([0, -1], np.int64))], "colour.counts")
    total = g.node("ReduceSum", [counts, g.const("colour.axis", np.array([1], np.int64))], "colour.total", keepdims=1)
    total = g.node("Max", [total, _l2_eps(g)], "colour.total_clamped")
    return g.node("Sqrt", [g.node("Div", [counts, total], "colour.share")], "colour.hellinger")


def _with_colour(g: _GraphBuilder, network: str, image: str) -> str:
    """``network`` (unit rows) with the weighted colour histogram of ``image`` appended, renormalised: the
    embedding's cosine is ``(cos_network + w² cos_colour) / (1 + w²)`` (w = ``COLOUR_WEIGHT``)."""
    weight = g.const("colour.weight", np.array(COLOUR_WEIGHT, np.float32))
    colour = g.node("Mul", [_colour_histogram(g, image), weight], "colour.weighted_histogram")
    return _l2_normalise(g, g.node("Concat", [network, colour], "colour.concat", axis=1), EMBEDDING_OUTPUT)


def _embedding(g: _GraphBuilder, x: str, pooling: Pooling, unit_name: str) -> str:
    """The ``embedding`` output: ``x`` L2-normalised, or with ``+colour`` its unit vector (``unit_name``) with the
    colour histogram appended (:func:`_with_colour`). One tail for the single-network and the ensemble graph."""
    if pooling.colour:
        return _with_colour(g, _l2_normalise(g, x, unit_name), INPUT_NAME)
    return _l2_normalise(g, x, EMBEDDING_OUTPUT)


def _pool(g: _GraphBuilder, x: str, pooling: Pooling, side: int) -> str:
    if pooling.kind == "avg":
        return g.node("GlobalAveragePool", [x], "pool.avg")
    if pooling.kind == "max":
        return g.node("GlobalMaxPool", [x], "pool.max")
    if pooling.kind == "rmac":
        return _rmac(g, x, side)
    clamped = g.node("Clip", [x, g.const("gem.eps", np.array(1e-6, np.float32)), ""], "gem.clamp")
    powered = g.node("Pow", [clamped, g.const("gem.p", np.array(pooling.p, np.float32))], "gem.pow")
    mean = g.node("GlobalAveragePool", [powered], "gem.mean")
    return g.node("Pow", [mean, g.const("gem.inv_p", np.array(1.0 / pooling.p, np.float32))], "pool.gem")


def build_onnx(
    state_dict: dict[str, np.ndarray],
    *,
    with_classifier: bool = True,
    pooling: str = "avg",
    image_size: int = 224,
    bn_eps: float = BN_EPS,
    opset: int = OPSET,
    name: str = "efficientnet-lite",
) -> onnx.ModelProto:
    """Build the EfficientNet-Lite ONNX graph from a numpy state dict.

    Parameters
    ----------
    state_dict
        Tensors by lukemelas-style key (``_conv_stem.weight``, ``_blocks.3._depthwise_conv.weight``, ...).
    with_classifier
        Add the ``logits`` output (ImageNet classifier on average-pooled features).
    pooling
        ``avg`` | ``max`` | ``gem`` | ``gem:<p>`` | ``rmac`` — how ``embedding`` pools the head's feature map;
        ``+flip`` (e.g. ``rmac+flip``) also runs the mirrored image and sums the two unit vectors.
    image_size
        Input side S; the SAME padding of every conv is computed for it.
    """
    if opset < 17:
        raise ModelError(f"opset {opset} < 17 is not supported")
    arch = infer_architecture(state_dict)
    pool = Pooling.parse(pooling)
    g = _GraphBuilder(state_dict, bn_eps)
    g.const("relu6.min", np.array(0.0, np.float32))
    g.const("relu6.max", np.array(6.0, np.float32))

    x = INPUT_NAME
    if pool.flip:  # the mirrored images ride along in the same batch: [n, ...] -> [2n, ...], originals first
        mirrored = g.node(
            "Slice",
            [
                x,
                g.const("flip.starts", np.array([-1], np.int64)),
                g.const("flip.ends", np.array([-(2**62)], np.int64)),
                g.const("flip.axes", np.array([3], np.int64)),
                g.const("flip.steps", np.array([-1], np.int64)),
            ],
            "flip.mirrored",
        )
        x = g.node("Concat", [x, mirrored], "flip.batch", axis=0)
    x, size = g.folded_conv(x, "_conv_stem", "_bn0", "stem", stride=STEM_STRIDE, size=image_size)
    x = g.relu6(x)
    for block in arch.blocks:
        p, inputs = f"_blocks.{block.index}", x
        if block.has_expand:
            x, _ = g.folded_conv(x, f"{p}._expand_conv", f"{p}._bn0", f"b{block.index}.expand", stride=1, size=size)
            x = g.relu6(x)
        x, size = g.folded_conv(
            x,
            f"{p}._depthwise_conv",
            f"{p}._bn1",
            f"b{block.index}.dw",
            stride=block.stride,
            size=size,
            groups=block.expanded_channels,
        )
        x = g.relu6(x)
        x, _ = g.folded_conv(x, f"{p}._project_conv", f"{p}._bn2", f"b{block.index}.project", stride=1, size=size)
        if block.has_skip:
            x = g.node("Add", [x, inputs], f"b{block.index}.add")
    x, _ = g.folded_conv(x, "_conv_head", "_bn1", "head", stride=1, size=size)
    features = g.relu6(x)

    flat_shape = g.const("flatten.shape", np.array([0, -1], np.int64))
    pooled = g.node("Reshape", [_pool(g, features, pool, size), flat_shape], "pooled")
    if pool.flip:  # unit vector of each half, summed: [2n, C] -> [n, C]
        halves_shape = g.const("flip.halves", np.array([2, -1, arch.head_channels], np.int64))
        halves = g.node("Reshape", [_l2_normalise(g, pooled, "pooled.unit"), halves_shape], "flip.halves_of")
        pooled = g.node("ReduceSum", [halves, g.const("flip.axis", np.array([0], np.int64))], "flip.sum", keepdims=0)
    _embedding(g, pooled, pool, "network.unit")

    batch = "batch"
    dim = arch.head_channels + pool.colour_dims
    outputs = [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, [batch, dim])]
    if with_classifier:
        avg = pooled  # the classifier was trained on average-pooled features, whatever the embedding uses
        if pool.kind != "avg" or pool.flip:
            avg_pool = g.node("GlobalAveragePool", [features], "pool.avg_cls")
            avg = g.node("Reshape", [avg_pool, flat_shape], "pooled_cls")
        if pool.flip:  # classify the original images only (the first half of the batch)
            halves = g.node("Reshape", [avg, "flip.halves"], "pooled_cls.halves")
            zero, one = g.const("flip.zero", np.array([0], np.int64)), g.const("flip.one", np.array([1], np.int64))
            first = g.node("Slice", [halves, zero, one, zero], "pooled_cls.first_half")
            avg = g.node(
                "Reshape",
                [first, g.const("cls.shape", np.array([-1, arch.head_channels], np.int64))],
                "pooled_cls.first",
            )
        fc_w = g.const("fc.w", state_dict["_fc.weight"].astype(np.float32))
        fc_b = g.const("fc.b", state_dict["_fc.bias"].astype(np.float32))
        g.node("Gemm", [avg, fc_w, fc_b], LOGITS_OUTPUT, transB=1)
        outputs.append(helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, [batch, arch.num_classes]))
    return _checked_model(g, name, image_size, outputs, opset)


def _checked_model(
    g: _GraphBuilder, name: str, side: int, outputs: list[onnx.ValueInfoProto], opset: int
) -> onnx.ModelProto:
    """The graph as a checked model with input ``image`` [batch, 3, side, side]."""
    graph = helper.make_graph(
        g.nodes,
        name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, side, side])],
        outputs,
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="catalens")
    model.ir_version = 8  # opset 17 needs IR ≥ 8; pinned so an onnx upgrade does not change the bytes
    onnx.checker.check_model(model, full_check=True)
    return model


def _resize_scales(side: int, size: int) -> np.ndarray:
    """Constant Resize scales taking ``side`` to exactly ``size`` (floor(side·scale) in float32).

    Constant scales, not a ``sizes`` input computed from the batch's shape, keep every member's input shape known
    when the graph is loaded (the batch stays dynamic); the output size is ``floor(side·scale)``, so the scale is
    nudged up until float32 rounding cannot drop the last row.
    """
    scale = np.float32(size / side)
    while np.floor(np.float32(side) * scale) < size:  # float32 rounding must not lose the last row
        scale = np.nextafter(scale, np.float32(2))
    return np.array([1.0, 1.0, scale, scale], np.float32)


def build_ensemble_onnx(
    members: list[tuple[dict[str, np.ndarray], int]],
    *,
    with_classifier: bool = True,
    pooling: str = "rmac",
    image_size: int | None = None,
    opset: int = OPSET,
    name: str = "efficientnet-lite-ensemble",
) -> onnx.ModelProto:
    """Several EfficientNet-Lites side by side in one graph: their unit embeddings, concatenated and renormalised.

    Why: the three Lite models see a product differently enough that the cosine of the concatenation (the mean of
    the members' cosines) ranks shop photos better than any one of them (docs/evaluation.md). One graph keeps one
    model file, one preprocessing and one vector per photo (design invariant 5).

    Parameters
    ----------
    members
        ``(state dict, native input side)`` per network, in output order.
    image_size
        The graph's input side (default: the largest native side). Each member gets the same centre crop resized to
        its own native side inside the graph (bilinear, half-pixel), so each runs at the resolution it was trained at.
    with_classifier
        Keep the last member's ``logits`` (the weights sanity check).
    """
    if len(members) < 2:
        raise ModelError("an ensemble needs at least two members")
    side = image_size or max(size for _, size in members)
    pool = Pooling.parse(pooling)
    parts = [
        compose.add_prefix(
            build_onnx(
                state_dict,
                with_classifier=with_classifier and i == len(members) - 1,
                pooling=str(pool.network_only()),
                image_size=size,
                opset=opset,
                name=f"member{i}",
            ),
            f"m{i}.",
        )
        for i, (state_dict, size) in enumerate(members)
    ]
    g = _GraphBuilder({}, BN_EPS)
    embeddings, dims = [], 0
    for i, ((_, size), part) in enumerate(zip(members, parts, strict=True)):
        member_input = f"m{i}.{INPUT_NAME}"
        if size == side:
            g.node("Identity", [INPUT_NAME], member_input)
        else:
            g.nodes.append(
                helper.make_node(
                    "Resize",
                    [INPUT_NAME, "", g.const(f"m{i}.input.scales", _resize_scales(side, size))],
                    [member_input],
                    name=member_input,
                    mode="linear",  # onnxruntime's cubic Resize costs ~23 ms here, linear 0.4 ms
                    coordinate_transformation_mode="half_pixel",
                )
            )
        g.nodes.extend(part.graph.node)
        g.initializers.extend(part.graph.initializer)
        embeddings.append(f"m{i}.{EMBEDDING_OUTPUT}")
        dims += part.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    _embedding(g, g.node("Concat", embeddings, "ensemble.concat", axis=1), pool, "ensemble.unit")
    dims += pool.colour_dims

    batch = "batch"
    outputs = [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, [batch, dims])]
    if with_classifier:
        g.node("Identity", [f"m{len(members) - 1}.{LOGITS_OUTPUT}"], LOGITS_OUTPUT)
        classes = parts[-1].graph.output[1].type.tensor_type.shape.dim[1].dim_value
        outputs.append(helper.make_tensor_value_info(LOGITS_OUTPUT, TensorProto.FLOAT, [batch, classes]))
    return _checked_model(g, name, side, outputs, opset)
