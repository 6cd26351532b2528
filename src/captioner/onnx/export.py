"""Export a `CaptionModel` to ONNX: the graphs and `captioner.json` described in `captioner.onnx`.

The decoder graphs are traced from `CaptionDecoder` itself (its KV-cache path, one token), so
they compute what PyTorch computes; the int8 variant stores their matrices as int8 and
quantises each activation row when it is computed (`quantize_matmuls`: no calibration data, and
no row's result depends on the rest of its batch or, for the integer products, on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captioner.decoder import CaptionDecoder, DecoderBlock
from captioner.hub import CONFIG_FILE, DESCRIPTION_FILE, TOKENIZER_FILE
from captioner.runtime.onnx import (
    FORMAT,
    FORMAT_VERSION,
    VARIANTS,
    kv_names,
)
from captioner.tokenizer import DETOKENIZE

if TYPE_CHECKING:
    import onnx

    from captioner.config import DecoderConfig
    from captioner.tokenizer import CaptionTokenizer
    from captioner.torch_model import CaptionModel

# Bumped whenever the exported graphs change while their interface (FORMAT_VERSION) does not, so
# the runtime's cache (`runtime.weights_key`) never serves graphs an older export wrote.
GRAPHS_REVISION = 4
OPSET = 17
ENCODER_FILE = "encoder.onnx"
# variant -> graph -> file; the encoder stays float32 in both (int8 convolutions cost both
# accuracy and speed, see docs/onnx.md)
FILES = {
    "fp32": {"image": "decoder_image.onnx", "step": "decoder_step.onnx"},
    "int8": {"image": "decoder_image.int8.onnx", "step": "decoder_step.int8.onnx"},
}


def trace_to_onnx(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    file: str | Path | IO[bytes],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """The TorchScript exporter (no onnxscript needed), every graph at one opset."""
    with warnings.catch_warnings():  # the exporter's deprecation, tracer and folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            file,  # type: ignore[arg-type]  # torch's annotation omits the file objects it takes
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
        )


def trace_image_encoder(module: nn.Module, size: int, file: str | Path | IO[bytes]) -> None:
    """`module` as the encoder graph every runtime reads: `pixels` (batch, 3, size, size) ->
    `features` (batch, tokens, dim), any batch."""
    trace_to_onnx(
        module,
        (torch.zeros(1, 3, size, size),),
        file,
        ["pixels"],
        ["features"],
        {"pixels": {0: "batch"}, "features": {0: "batch"}},
    )


def kv_shape(config: DecoderConfig, batch: int, length: int) -> tuple[int, ...]:
    """(batch, heads, length, head width): the shape of each past, present and cross tensor."""
    return (batch, config.n_heads, length, config.d_model // config.n_heads)


class ImageMemory(nn.Module):
    """Encoder features to every layer's cross-attention key and value, in `kv_names` order."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.decoder.encode_image(features)
        blocks = cast(Iterable[DecoderBlock], self.decoder.blocks)
        return tuple(t for b in blocks for t in b.cross_attention.project_kv(memory))


class DecodingStep(nn.Module):
    """`CaptionDecoder.forward` with a cache, written out for one new token per row: with a
    length of one, heads split and merge by constant reshapes (no transposes, no shape
    arithmetic in the graph), and each layer's self-attention query, key and value come from one
    matrix product. That keeps the step graph small enough that ONNX Runtime's per-node overhead
    does not dominate a step. tests/test_onnx.py checks it against the PyTorch decoder, which
    stays the reference."""

    def __init__(self, decoder: CaptionDecoder):
        super().__init__()
        self.decoder = decoder
        config = decoder.config
        self.heads, self.width = config.n_heads, config.d_model
        self.head_width = config.d_model // config.n_heads
        self.query_key_value = nn.ModuleList(
            _stacked(b.self_attention.query, b.self_attention.key_value)
            for b in cast(Iterable[DecoderBlock], decoder.blocks)
        )
        self.token_table = token_table(decoder)

    def embed(
        self, ids: torch.Tensor, position: int | torch.Tensor, text_past: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`CaptionDecoder.embed_tokens` for one token a row, from `token_table`: (rows, 1, d)
        and, with clip-contextual, the text tower's present keys and values."""
        decoder = self.decoder
        vectors = F.embedding(ids, self.token_table)
        if decoder.config.token_embedding != "clip-contextual":
            return vectors, []
        states, present = decoder.clip_text(vectors, position, text_past)
        return decoder.token_projection(states), present

    def forward(self, ids: torch.Tensor, *kv: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`ids` (rows, 1); `kv`: the past, the cross tensors, then (clip-contextual) the text
        tower's past, each in `kv_names` order; the cross tensors have a row per row, or a row
        per image whose rows are consecutive and equally many (its beams, as
        `CaptionDecoder.forward` takes them). Returns logits (rows, V), the present tensors,
        the text tower's present tensors (clip-contextual), cross-attention (rows, L, H, T)."""
        decoder = self.decoder
        layers = len(decoder.blocks)
        heads, width, head_width = self.heads, self.width, self.head_width
        past, cross = kv[: 2 * layers], kv[2 * layers : 4 * layers]
        position, images = past[0].shape[2], cross[0].shape[0]
        tokens = decoder.config.image_tokens
        embedded, text_present = self.embed(ids, position, kv[4 * layers :])
        x = embedded + decoder.positions[:, position : position + 1]
        present, weights = [], []
        for layer, block in enumerate(cast(Iterable[DecoderBlock], decoder.blocks)):
            h = self.query_key_value[layer](block.self_norm(x))  # (rows, 1, 3d)
            h = h.reshape(-1, 3, heads, 1, head_width)
            key = torch.cat([past[2 * layer], h[:, 1]], 2)  # (rows, H, position + 1, E)
            value = torch.cat([past[2 * layer + 1], h[:, 2]], 2)
            present += [key, value]
            mixed, _ = self.attend(h[:, 0], key, value)  # (rows, H, 1, E)
            x = x + block.self_attention.out(mixed.reshape(-1, 1, width))
            # An image's rows query it together: (images, H, rows per image, E).
            query = block.cross_attention.query(block.cross_norm(x))
            query = query.reshape(images, -1, heads, head_width).transpose(1, 2)
            mixed, layer_weights = self.attend(query, cross[2 * layer], cross[2 * layer + 1])
            x = x + block.cross_attention.out(mixed.transpose(1, 2).reshape(-1, 1, width))
            x = x + block.mlp(block.mlp_norm(x))
            weights.append(layer_weights.transpose(1, 2).reshape(-1, heads, tokens))
        logits = decoder.final_norm(x) @ decoder.output_weight.T
        return logits[:, 0], *present, *text_present, torch.stack(weights, 1)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, H, Q, E) queries against (n, H, S, E) keys and values: the output (n, H, Q, E)
        and the weights (n, H, Q, S)."""
        scores = query @ key.transpose(-2, -1) / math.sqrt(self.head_width)
        weights = scores.softmax(dim=-1)
        return weights @ value, weights


def token_table(decoder: CaptionDecoder) -> torch.Tensor:
    """What the step graph gathers each new token's input from, a row per model id: the learned
    embedding; for clip, the projected CLIP rows (the projection done once here, not per step);
    for clip-contextual, the CLIP rows that enter the text tower."""
    kind = decoder.config.token_embedding
    if kind == "learned":
        return decoder.token_embedding.weight
    with torch.no_grad():
        rows = decoder.clip_vectors(torch.arange(decoder.config.vocab_size))
        return decoder.token_projection(rows) if kind == "clip" else rows


def text_kv_shape(decoder: CaptionDecoder, batch: int, length: int) -> tuple[int, ...]:
    """The shape of each of the CLIP text tower's past and present tensors (clip-contextual)."""
    text = decoder.clip_text
    return (batch, text.n_heads, length, text.width // text.n_heads)


def _stacked(*layers: nn.Linear) -> nn.Linear:
    """One Linear computing `layers` side by side (their outputs concatenated)."""
    weight = torch.cat([layer.weight for layer in layers])
    stacked = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        stacked.weight.copy_(weight)
        stacked.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return stacked


def export_decoder(
    decoder: CaptionDecoder,
    directory: str | Path,
    variants: Sequence[str] = VARIANTS,
) -> None:
    """decoder_image and decoder_step, in each of `variants`, into `directory`. A
    clip-contextual decoder's step graph also takes and returns the CLIP text tower's cache
    (`text_tower_description`), after the decoder's own."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise ValueError(f"ONNX variants must be among {', '.join(VARIANTS)}, got {variants}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    was_training = decoder.training
    decoder.eval()
    with tempfile.TemporaryDirectory() as scratch:
        # The int8 graphs are made from the fp32 ones, which only stay when asked for.
        fp32 = {
            graph: directory / name if "fp32" in variants else Path(scratch) / name
            for graph, name in FILES["fp32"].items()
        }
        cross = trace_image_graph(decoder, fp32["image"])
        trace_step_graph(decoder, cross, fp32["step"])
        if "int8" in variants:
            for graph, name in FILES["int8"].items():
                quantize(fp32[graph], directory / name)
    decoder.train(was_training)


def trace_image_graph(decoder: CaptionDecoder, file: Path) -> tuple[torch.Tensor, ...]:
    """decoder_image (`ImageMemory`) into `file`; returns the cross tensors it computes for a
    batch of 2, which the step graph is traced with."""
    config = decoder.config
    features = torch.zeros(2, config.image_tokens, config.image_dim)
    with torch.no_grad():
        cross = ImageMemory(decoder)(features)
    cross_names = kv_names("cross", config.n_layers)
    trace_to_onnx(
        ImageMemory(decoder),
        (features,),
        file,
        ["features"],
        cross_names,
        {name: {0: "batch"} for name in ["features", *cross_names]},
    )
    return cross


def trace_step_graph(decoder: CaptionDecoder, cross: tuple[torch.Tensor, ...], file: Path) -> None:
    """decoder_step (`DecodingStep`) into `file`, traced at a past of 2 tokens: the position
    and the concatenation follow the past's shape, so any length runs."""
    config = decoder.config
    cross_names = kv_names("cross", config.n_layers)
    past_names = kv_names("past", config.n_layers)
    present_names = kv_names("present", config.n_layers)
    text_layers = decoder.clip_text.n_layers if config.token_embedding != "learned" else 0
    text_past_names = kv_names("text_past", text_layers)
    text_present_names = kv_names("text_present", text_layers)
    past = tuple(torch.zeros(kv_shape(config, 2, 2)) for _ in past_names)
    text_past = tuple(torch.zeros(text_kv_shape(decoder, 2, 2)) for _ in text_past_names)
    trace_to_onnx(
        DecodingStep(decoder),
        (torch.zeros(2, 1, dtype=torch.long), *past, *cross, *text_past),
        file,
        ["ids", *past_names, *cross_names, *text_past_names],
        ["logits", *present_names, *text_present_names, "cross_attention"],
        {
            **{name: {0: "batch"} for name in ["ids", *cross_names, "logits"]},
            **{name: {0: "batch", 2: "past"} for name in [*past_names, *text_past_names]},
            **{
                name: {0: "batch", 2: "past_plus_one"}
                for name in [*present_names, *text_present_names]
            },
            "cross_attention": {0: "batch"},
        },
    )


# int8 products that every CPU computes exactly. Weights are int8 in [-63, 63] (7 bits, a scale
# per output column), activations uint8 around 128 (a scale per row): no pair of products
# u8 x s8 then exceeds the int16 range (255 * 63 * 2 < 32767), so the AVX2 kernels' saturating
# pairwise add (`vpmaddubsw`) gives what AVX-512 VNNI, ARM and WASM give.
WEIGHT_LEVELS = 63
ACTIVATION_LEVELS = 127
ACTIVATION_ZERO = 128


def quantize(source: Path, target: Path) -> None:
    """int8 weights for every MatMul by a float32 matrix (`quantize_matmuls`) and int8 lookup
    tables (`quantize_lookups`)."""
    import onnx

    model = onnx.load(str(source))
    quantize_matmuls(model)
    quantize_lookups(model.graph)
    onnx.save(model, str(target))


def quantize_matmuls(model: onnx.ModelProto) -> int:
    """Every MatMul of activations by a float32 initializer matrix becomes an integer product
    with a scale per activation row, so no row's result depends on the other rows of its batch
    (ONNX Runtime's dynamic quantisation takes one range for the whole tensor):

        peak = ReduceMax(Abs(x), last axis)           one per row: (..., 1)
        q = QuantizeLinear(x / peak, 1/127, 128)      uint8, the row's values in 1..255
        y = MatMulIntegerToFloat(q - 128, W8, 1/127, column_scale) * peak

    W8 holds round(W / column_scale) with column_scale = max |W[:, j]| / 63. The integer
    products and sums are exact on every kernel, and each output is float(sum) * column_scale
    / 127 * peak, each product rounded once; only the float ops around them (attention, softmax,
    layer norm, GELU) may round differently on another CPU. MatMulIntegerToFloat (ONNX
    Runtime's com.microsoft domain, in its CPU and WASM builds) is what ONNX Runtime fuses
    MatMulInteger, Cast and Mul into; written out, it saves the fusion a pattern it only finds
    for a scalar activation scale. A row of zeros has peak 0 and gives 0 whatever its quantised
    values. Each activation is quantised once for all the products that read it. How many
    MatMuls it changed."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {
        t.name: t
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
    }
    quantised: dict[str, tuple[str, str]] = {}  # activation -> (uint8 values, row peaks)
    changed, nodes = 0, []
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        source = node.input[0]
        if source not in quantised:
            quantisation, quantised[source] = _quantize_rows(source)
            nodes += quantisation
        values, peak = quantised[source]
        nodes += _integer_matmul(graph, weights[node.input[1]], values, peak, node.output[0])
        changed += 1
    if changed:
        constants: dict[str, np.ndarray] = {
            "quantize_scale": np.array(1 / ACTIVATION_LEVELS, np.float32),
            "quantize_zero": np.array(ACTIVATION_ZERO, np.uint8),
        }
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
        replace_nodes(graph, nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return changed


def _quantize_rows(source: str) -> tuple[list[onnx.NodeProto], tuple[str, str]]:
    """The nodes quantising activation `source` by its row peaks, and the names of the uint8
    values and of the peaks they compute."""
    from onnx import helper

    peak, values = f"{source}_row_peak", f"{source}_row_uint8"
    nodes = [
        helper.make_node("Abs", [source], [f"{source}_abs"]),
        helper.make_node("ReduceMax", [f"{source}_abs"], [peak], axes=[-1], keepdims=1),
        helper.make_node("Div", [source, peak], [f"{source}_by_peak"]),
        helper.make_node(
            "QuantizeLinear",
            [f"{source}_by_peak", "quantize_scale", "quantize_zero"],
            [values],
        ),
    ]
    return nodes, (values, peak)


def _integer_matmul(
    graph: onnx.GraphProto, weight: onnx.TensorProto, values: str, peak: str, out: str
) -> list[onnx.NodeProto]:
    """The nodes computing `out` from the quantised rows and `weight` stored as int8 columns
    (its initializers added to `graph`)."""
    from onnx import helper, numpy_helper

    name = weight.name
    matrix = numpy_helper.to_array(weight)
    column_scale = np.abs(matrix).max(axis=0) / WEIGHT_LEVELS
    column_scale[column_scale == 0] = 1
    graph.initializer.extend(
        [
            numpy_helper.from_array(
                np.round(matrix / column_scale).astype(np.int8), f"{name}_int8"
            ),
            numpy_helper.from_array(column_scale.astype(np.float32), f"{name}_column_scale"),
        ]
    )
    return [
        helper.make_node(
            "MatMulIntegerToFloat",
            [values, f"{name}_int8", "quantize_scale", f"{name}_column_scale", "quantize_zero"],
            [f"{out}_by_column"],
            domain="com.microsoft",
        ),
        helper.make_node("Mul", [f"{out}_by_column", peak], [out]),
    ]


def replace_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """`graph`'s nodes become `nodes`; initializers no node reads any more are dropped."""
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def quantize_lookups(graph: onnx.GraphProto) -> int:
    """Every Gather from a float32 table (the token embedding) reads int8 rows instead, each
    row with its own scale (largest magnitude / 127), then multiplied back: a quarter of the
    bytes (the embedding is a quarter of the int8 step graph otherwise). How many it changed."""
    import onnx
    from onnx import helper, numpy_helper

    tables = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    changed, nodes = 0, []
    for node in graph.node:
        table = tables.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or axis != 0:
            nodes.append(node)
            continue
        values = numpy_helper.to_array(table)
        scale = np.abs(values).max(axis=1, keepdims=True) / 127
        scale[scale == 0] = 1
        rows = np.round(values / scale).astype(np.int8)
        name, (out,) = table.name, node.output
        graph.initializer.extend(
            [
                numpy_helper.from_array(rows, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
            ]
        )
        nodes += [
            helper.make_node("Gather", [f"{name}_int8", node.input[1]], [f"{out}_int8"]),
            helper.make_node("Gather", [f"{name}_scale", node.input[1]], [f"{out}_scale"]),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out]),
        ]
        changed += 1
    if changed:
        replace_nodes(graph, nodes)
    return changed


def token_pieces(tokenizer: CaptionTokenizer) -> list[str]:
    """Each model id's text as the byte-level BPE decodes it, a word-final piece ending in one
    space (special ids: ""): concatenated, they are the caption before `detokenize`. Every
    piece of CLIP's vocabulary used in captions is whole UTF-8 (tests/test_onnx.py checks)."""
    return [tokenizer._bpe.decode(tokenizer._to_clip([i])) for i in range(tokenizer.vocab_size)]


def text_tower_description(decoder: CaptionDecoder) -> dict:
    """clip-contextual's step graph also takes and returns the CLIP text tower's cache
    (`text_past_*` in, `text_present_*` out, after the decoder's own): its layers, heads and
    head width. Nothing for the other token inputs."""
    if decoder.config.token_embedding != "clip-contextual":
        return {}
    _, heads, _, head_width = text_kv_shape(decoder, 1, 0)
    return {
        "text_layers": decoder.clip_text.n_layers,
        "text_heads": heads,
        "text_head_dim": head_width,
    }


def describe(model: CaptionModel, variants: Sequence[str] = VARIANTS) -> dict:
    """`captioner.json`: what a runtime without Python needs to caption with the graphs."""
    encoder, tokenizer, decoder = model.encoder, model.tokenizer, model.config.decoder
    preprocess = encoder.preprocess
    from captioner.transforms import REDUCING_GAP

    pieces = token_pieces(tokenizer)
    generation = dataclasses.asdict(model.config.generation)
    generation.pop("seed", None)
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "variants": {v: {"encoder": ENCODER_FILE, **FILES[v]} for v in variants},
        "encoder": {
            "name": encoder.name,
            "grid_h": encoder.grid_h,
            "grid_w": encoder.grid_w,
            "dim": encoder.dim,
        },
        "preprocess": {
            "resize_size": preprocess.resize_size,
            "crop_size": preprocess.crop_size,
            "resample": preprocess.resample,
            "reducing_gap": REDUCING_GAP,
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
            "layout": "NCHW",
        },
        "decoder": {
            "n_layers": decoder.n_layers,
            "n_heads": decoder.n_heads,
            "head_dim": decoder.d_model // decoder.n_heads,
            "d_model": decoder.d_model,
            "image_tokens": decoder.image_tokens,
            "max_length": decoder.max_length,
            "vocab_size": decoder.vocab_size,
            "parameters": sum(p.numel() for p in model.decoder.parameters()),
            "token_embedding": decoder.token_embedding,
            **text_tower_description(model.decoder),
        },
        "tokens": {
            "start_id": model.special.start,
            "end_id": model.special.end,
            "banned_ids": list(model.special.banned),
            "pieces": pieces,
            "detokenize": [list(rule) for rule in DETOKENIZE],
        },
        "generation": generation,
    }


def export_onnx(
    model: CaptionModel,
    directory: str | Path,
    variants: Sequence[str] = VARIANTS,
    encoder: bool = True,
) -> Path:
    """The whole model (encoder, decoder graphs, captioner.json) into `directory`; without
    `encoder`, the decoder graphs only (the encoder then runs elsewhere)."""
    from captioner.encoders.efficientnet import EfficientNetLiteEncoder

    if encoder and not isinstance(model.encoder, EfficientNetLiteEncoder):
        raise ValueError(
            f"ONNX export supports the EfficientNet-Lite encoders; this model uses "
            f"{model.encoder.name!r}"
        )
    directory = Path(directory)
    export_decoder(model.decoder, directory, variants)
    if encoder:
        assert isinstance(model.encoder, EfficientNetLiteEncoder)  # checked above
        model.encoder.export_onnx(directory / ENCODER_FILE)
    description = describe(model, variants)
    (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=1) + "\n")
    # With its config and vocabulary the folder is a whole model for `Captioner.from_pretrained`.
    model.config.save(directory / CONFIG_FILE)
    model.tokenizer.save(directory / TOKENIZER_FILE)
    return directory
