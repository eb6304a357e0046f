"""Built-in quantizers, all on onnxruntime's quantization tools.

``int8`` and ``int4`` name a bit width, not a kernel: each picks the faithful scheme for the model
in hand, and the schemes stay available by their own names.

============  ===============================================================================
int8          int8-block for a decoder (a graph with a KV cache, or an onnxruntime-genai
              model), int8-static for a convolutional net, int8-dynamic for other encoders
int4          int4-block for decoders and encoders; refused for a convolutional net (4-bit
              block-wise weights exist for MatMul only: its convolutions would stay fp32)
none          the exported fp32 model as it is
fp16          weights and activations in float16, inputs and outputs kept float32 (size; GPUs)
int8-dynamic  per-channel int8 weights, activations quantized on the fly; transformer encoders are
              first fused (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization)
              so that attention runs as one quantized kernel per layer
int8-static   QDQ int8, per-channel weights, activation ranges calibrated on the run's training
              examples (held-out ones when it kept none): convolutions included, which dynamic
              quantization leaves in fp32
int8-block    block-wise 8-bit weights (MatMulNBits, block 64, accuracy level 4), the embedding
              table too, shared with a tied LM head: the faithful choice for decoders, whose
              activations have outliers that per-tensor int8 clips
int4-block    block-wise 4-bit weights (block 32) on every MatMul; the embedding table and a tied
              LM head in 8 bits, shared, since the LM head is the most sensitive
============  ===============================================================================

``--quantize auto`` tries every scheme marked ``auto_candidate`` that applies and keeps the
fastest that passes the parity gate.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from tunewright import hookimpl, kinds
from tunewright.edge import ExportedModel
from tunewright.edge.protocols import save_onnx


def _copy_side_files(exported: ExportedModel, out_dir: Path) -> None:
    """Copy what is not the ONNX model itself (genai_config.json, ...)."""
    for name in exported.files():
        if name == exported.model_file or name.endswith(
            (".onnx", ".onnx_data", ".onnx.data", ".data")
        ):
            continue
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(exported.folder) / name, target)


def overridable_consumers(model, op_types: tuple[str, ...]) -> list[str]:
    """The names of the ``op_types`` nodes of the ONNX ``model`` that read an overridable
    initializer (a graph input with a default: the LoRA weights and head of a multi-adapter
    bundle), directly or through a Cast (weights stored in float16, computed in float32).

    Such a weight is fed at run time. onnxruntime's quantizers look weights up by initializer
    name alone: they would replace it by a quantized constant and drop the input, so these nodes
    are left in float (``nodes_to_exclude``)."""
    graph = model.graph
    overridable = {i.name for i in graph.input} & {t.name for t in graph.initializer}
    overridable |= {
        out
        for node in graph.node
        if node.op_type == "Cast" and node.input[0] in overridable
        for out in node.output
    }
    return [
        node.name
        for node in graph.node
        if node.op_type in op_types and any(name in overridable for name in node.input)
    ]


def _load(exported: ExportedModel):
    import onnx

    return onnx.load(str(exported.path), load_external_data=True)


class NoQuantization:
    description = "no quantization: the fp32 export as it is"
    auto_candidate = True

    def supports(self, exported: ExportedModel) -> bool:
        return True

    def quantize(self, exported, out_dir, calibration):
        return exported.moved(exported.folder, quantization={"name": "none"})


class Float16:
    description = "float16 weights and activations, float32 inputs and outputs"
    auto_candidate = False  # halves the size, but onnxruntime's CPU kernels are mostly fp32

    def supports(self, exported: ExportedModel) -> bool:
        return exported.runtime == "onnxruntime"

    def quantize(self, exported, out_dir, calibration):
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out_dir = Path(out_dir)
        model = convert_float_to_float16(
            _load(exported), keep_io_types=True, op_block_list=["Range", "CumSum"]
        )
        _copy_side_files(exported, out_dir)
        save_onnx(model, out_dir / exported.model_file)
        return exported.moved(out_dir, quantization={"name": "fp16", "keep_io_types": True})


def _fuse_transformer(source: Path, target: Path) -> dict[str, int]:
    """Fuse a transformer encoder's attention, layer norms and GELUs into onnxruntime's contrib
    kernels (portable: only onnxruntime's basic, provider-independent optimisations run first).
    Returns the fused operators and their counts; empty (and nothing written) when nothing fused."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=1
        )
        fused = {op: int(n) for op, n in optimized.get_fused_operator_statistics().items() if n}
    except Exception:  # a graph the fusions do not understand stays as it is
        return {}
    if not fused.get("Attention"):
        return {}
    optimized.save_model_to_file(str(target))
    return fused


#: int8 weights in the 7-bit range [-64, 63]. On x86 CPUs without VNNI (AVX2, AVX-512 before
#: VNNI) onnxruntime multiplies uint8 activations by int8 weights with an instruction that adds
#: pairs of products into a saturating int16: with full-range weights those sums overflow and the
#: bundle computes something else. A bundle runs on whatever device it is copied to, so it is
#: made to be faithful on all of them (onnxruntime's own advice for non-VNNI machines). Measured
#: on a 2-core AVX2 EPYC with bench/edge_bench.py: minilm-l6 on chatterbot topics lost 1.64
#: accuracy points with full-range weights, 0.82 with these.
REDUCE_RANGE = True
WEIGHTS = "int8 (7-bit range, faithful on CPUs without VNNI)"


#: the operators int8-dynamic quantizes
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather", "Attention", "EmbedLayerNormalization")


class DynamicInt8:
    description = (
        "dynamic int8: per-channel int8 weights, activations quantized at run time (encoders)"
    )
    auto_candidate = True

    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel

    def supports(self, exported: ExportedModel) -> bool:
        return exported.runtime == "onnxruntime"

    def quantize(self, exported, out_dir, calibration):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        fused_path = out_dir / "fused.onnx"
        fused = _fuse_transformer(exported.path, fused_path)
        source = fused_path if fused else exported.path
        # a multi-adapter bundle's weights are fed at run time: their nodes stay in float
        kept = overridable_consumers(onnx.load(str(source), load_external_data=False), DYNAMIC_OPS)
        # MatMulConstBOnly: activation x activation products (attention scores in an unfused
        # graph) stay float; DefaultTensorType: contrib ops have no shape inference to ask;
        # reduce_range: see REDUCE_RANGE
        quantize_dynamic(
            str(source),
            str(out_dir / exported.model_file),
            per_channel=self.per_channel,
            weight_type=QuantType.QInt8,
            reduce_range=REDUCE_RANGE,
            op_types_to_quantize=list(DYNAMIC_OPS),
            nodes_to_exclude=kept,
            extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        fused_path.unlink(missing_ok=True)
        return exported.moved(
            out_dir,
            quantization={
                **({"float_nodes_with_overridable_weights": len(kept)} if kept else {}),
                "name": "int8-dynamic",
                "weights": WEIGHTS,
                "embeddings": "int8",
                "per_channel": self.per_channel,
                "activations": "dynamic uint8",
                "fused": fused,
            },
        )


class _Reader:
    """Calibration feeds as onnxruntime's calibrator reads them: only the model's inputs, with
    ``attention_mask`` (ones) and ``token_type_ids`` (zeros) filled where a task does not make them."""

    def __init__(self, feeds, names):
        rows = []
        for feed in feeds:
            row = {k: v for k, v in feed.items() if k in names}
            if "input_ids" in row:
                if "attention_mask" in names and "attention_mask" not in row:
                    row["attention_mask"] = np.ones_like(row["input_ids"])
                if "token_type_ids" in names and "token_type_ids" not in row:
                    row["token_type_ids"] = np.zeros_like(row["input_ids"])
            rows.append(row)
        self._it = iter(rows)

    def get_next(self):
        return next(self._it, None)


#: the activation percentile int8-static's calibration keeps
PERCENTILE = 99.999


def compact_names(path: Path) -> int:
    """Rename the nodes, weights and intermediate values of the ONNX model at ``path`` to short
    ids (the graph's inputs and outputs keep theirs); returns the bytes saved.

    A QDQ graph names every quantize, dequantize, scale and zero point after the layer path
    (``/model/mobilenet_v2/layer.15/expand_1x1/convolution/Conv_output_0_QuantizeLinear_Output``):
    on an int8 MobileNetV2 those names are a sixth of the file. Nothing reads them: the runtime
    feeds and fetches the graph's inputs and outputs. A graph with subgraphs is left as it is.
    """
    import onnx

    before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    ):
        return 0
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    renamed: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep:
            return name
        if name not in renamed:
            renamed[name] = f"v{len(renamed)}"
        return renamed[name]

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for index, node in enumerate(graph.node):
        node.name = f"n{index}"
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for info in graph.value_info:
        info.name = short(info.name)
    onnx.save_model(model, str(path))
    return before - path.stat().st_size


class StaticInt8:
    description = (
        "static int8 QDQ: per-channel int8 weights, activation ranges calibrated on the run's "
        "training examples (convolutions included)"
    )
    auto_candidate = True

    def supports(self, exported: ExportedModel) -> bool:
        # a decoder's cache inputs make calibration feeds of their own; not supported yet
        return exported.runtime == "onnxruntime" and exported.task_kind != kinds.CAUSAL_LM

    def quantize(self, exported, out_dir, calibration):
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from tunewright import UsageError

        if not calibration:
            raise UsageError(
                "--quantize int8-static needs examples to calibrate on (training or held-out), and there are none"
            )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        names = {
            i.name
            for i in ort.InferenceSession(
                str(exported.path), providers=["CPUExecutionProvider"]
            ).get_inputs()
        }
        prepared = out_dir / "prepared.onnx"
        try:
            quant_pre_process(str(exported.path), str(prepared), skip_symbolic_shape=False)
            source = prepared
        except Exception:
            source = exported.path
        import onnx

        # a multi-adapter bundle's weights are fed at run time: their nodes stay in float
        kept = overridable_consumers(
            onnx.load(str(source), load_external_data=False), ("MatMul", "Gemm", "Conv")
        )
        # Percentile (99.999) rather than MinMax where the inputs have one shape (images): one
        # outlier activation among thousands would otherwise set a layer's whole range (on a
        # MobileNetV2 tuned on digits MinMax flips 8% of the held-out predictions, the percentile
        # 5%). onnxruntime's histograms need one shape, so texts of varied length keep MinMax.
        one_shape = (
            len({tuple((k, np.shape(v)) for k, v in sorted(feed.items())) for feed in calibration})
            == 1
        )
        method, extra = (
            (CalibrationMethod.Percentile, {"CalibPercentile": PERCENTILE})
            if one_shape
            else (CalibrationMethod.MinMax, {})
        )
        quantize_static(
            str(source),
            str(out_dir / exported.model_file),
            _Reader(calibration, names),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
            reduce_range=REDUCE_RANGE,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_exclude=kept,
            extra_options={"MatMulConstBOnly": True, **extra},
        )
        prepared.unlink(missing_ok=True)
        saved = compact_names(out_dir / exported.model_file)
        return exported.moved(
            out_dir,
            quantization={
                "name": "int8-static",
                "format": "QDQ",
                "per_channel": True,
                "weights": WEIGHTS,
                "activations": "uint8, calibrated",
                "calibration_method": f"percentile {PERCENTILE}" if one_shape else "minmax",
                "calibration_examples": len(calibration),
                "names_compacted_bytes": saved,
                **({"float_nodes_with_overridable_weights": len(kept)} if kept else {}),
            },
        )


def _transposed_initializer(name: str, producers: dict, inits: dict) -> str | None:
    """The initializer that ``name`` is a 2-D transpose of, or None."""
    node = producers.get(name)
    if node is None or node.op_type != "Transpose" or node.input[0] not in inits:
        return None
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    return node.input[0] if perm in (None, [1, 0]) and len(inits[node.input[0]].dims) == 2 else None


def quantize_embedding_tables(
    model, *, bits: int, block_size: int, accuracy_level: int
) -> list[dict]:
    """Quantize every embedding table (a ``Gather`` over a 2-D float table) block-wise along its
    rows, and give an LM head tied to it the very same bytes.

    A tied LM head multiplies by the transpose of the embedding table: ``MatMulNBits`` stores its
    weight as (N = vocabulary, K/block, block) blocks along K = hidden, which is the table's own
    layout blocked along its rows. So one quantized initializer serves both: the head reads it
    directly, the ``GatherBlockQuantized`` that replaces the ``Gather`` through a ``Reshape`` (folded
    once when the session starts), with the same scales. Both exporters' tied layouts are handled:
    ``Gather(Transpose(W))`` with ``MatMul(x, W)`` (onnxruntime-genai's builder), ``Gather(E)``
    with ``MatMul(x, Transpose(E))``, and ``Gather(E)`` with ``MatMul(x, E')`` where ``E'`` is a copy
    of ``E`` transposed (optimum writes tied weights so). Symmetric: no zero points (both ops default to
    2^(bits-1)). Returns one record per table: its name, shape, and the head that shares it.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    records = []
    for gather in [n for n in graph.node if n.op_type == "Gather"]:
        source = gather.input[0]
        transposed = _transposed_initializer(source, producers, inits)
        table_name = transposed or source
        table = inits.get(table_name)
        if table is None or len(table.dims) != 2 or table.data_type != TensorProto.FLOAT:
            continue
        if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            continue
        array = numpy_helper.to_array(table)
        vocab_by_hidden = array.T if transposed else array  # (V, H)
        vocab, hidden = vocab_by_hidden.shape
        block = _table_block(hidden, block_size)
        if block is None:
            continue
        # the head tied to this table multiplies by its transpose: (H, V), MatMulNBits' (K, N)
        heads = []
        for node in graph.node:
            if node.op_type != "MatMul":
                continue
            if (transposed and node.input[1] == table_name) or (
                not transposed
                and _transposed_initializer(node.input[1], producers, inits) == table_name
            ):
                heads.append(node)
            elif (
                node.input[1] in inits
                and tuple(inits[node.input[1]].dims) == (hidden, vocab)
                and np.array_equal(numpy_helper.to_array(inits[node.input[1]]).T, vocab_by_hidden)
            ):
                heads.append(
                    node
                )  # tied by value: an exporter wrote the head's own transposed copy
        quantizer = DefaultWeightOnlyQuantizer(
            DefaultWeightOnlyQuantConfig(
                block_size=block, is_symmetric=True, accuracy_level=accuracy_level, bits=bits
            )
        )
        packed, scales, _ = quantizer.qbits_block_quant(
            np.ascontiguousarray(vocab_by_hidden.T)
        )  # (V, H/b, b*bits/8)
        base = f"{table_name}.block{block}_q{bits}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed, base),
                numpy_helper.from_array(scales, base + ".scales"),
                numpy_helper.from_array(
                    np.asarray([vocab, hidden * bits // 8], np.int64), base + ".table_shape"
                ),
            ]
        )
        reshape = helper.make_node(
            "Reshape", [base, base + ".table_shape"], [base + ".table"], name=base + "/Reshape"
        )
        quantized_gather = helper.make_node(
            "GatherBlockQuantized",
            [base + ".table", gather.input[1], base + ".scales"],
            list(gather.output),
            name=(gather.name or base) + "/GatherBlockQuantized",
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        )
        replaced = [(gather, [reshape, quantized_gather])]
        for head in heads:
            replaced.append(
                (
                    head,
                    [
                        helper.make_node(
                            "MatMulNBits",
                            [head.input[0], base, base + ".scales"],
                            list(head.output),
                            name=(head.name or base) + "/MatMulNBits",
                            domain="com.microsoft",
                            K=hidden,
                            N=vocab,
                            bits=bits,
                            block_size=block,
                            accuracy_level=accuracy_level,
                        )
                    ],
                )
            )
        for old, new in replaced:
            index = list(graph.node).index(old)
            graph.node.remove(old)
            for offset, node in enumerate(new):
                graph.node.insert(index + offset, node)
        records.append(
            {
                "table": table_name,
                "shape": [int(vocab), int(hidden)],
                "bits": bits,
                "block_size": block,
                "tied_head": [h.name for h in heads] or None,
            }
        )
    # drop what nothing reads any more: the float table and the Transpose nodes over it
    used = {name for node in graph.node for name in node.input}
    for node in [n for n in graph.node if n.op_type == "Transpose" and not (set(n.output) & used)]:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    if records and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return records


def materialise_tied_weights(model) -> int:
    """Give every MatMul whose weight is a Transpose of an initializer (a tied lm_head whose table
    was not quantized with it) its own transposed initializer, so that MatMulNBits can quantize it.
    Returns how many were changed."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    changed = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in inits:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(inits[source.input[0]])
        weight = np.ascontiguousarray(weight.transpose(perm) if perm else weight.T)
        name = f"{node.name or node.output[0]}.materialised_weight"
        graph.initializer.append(numpy_helper.from_array(weight, name))
        node.input[1] = name
        changed += 1
    return changed


def _table_block(hidden: int, preferred: int) -> int | None:
    """The largest block size, from ``preferred`` down to 16, that divides the table's rows."""
    block = preferred
    while block >= 16:
        if hidden % block == 0:
            return block
        block //= 2
    return None


class BlockWise:
    """MatMulNBits weights: ``bits`` per weight in blocks of ``block_size`` along the input axis;
    embedding tables (and a tied LM head with them) in ``table_bits``."""

    auto_candidate = True

    def __init__(
        self,
        name: str,
        bits: int,
        block_size: int = 32,
        accuracy_level: int = 4,
        table_bits: int = 8,
        table_block_size: int = 64,
    ):
        self.name, self.bits, self.block_size = name, bits, block_size
        self.accuracy_level, self.table_bits, self.table_block_size = (
            accuracy_level,
            table_bits,
            table_block_size,
        )
        self.description = (
            f"block-wise {bits}-bit weights (MatMulNBits, block {block_size}, accuracy level "
            f"{accuracy_level}), embedding table and tied LM head in {table_bits} bits"
        )

    def supports(self, exported: ExportedModel) -> bool:
        try:
            import onnx_ir  # noqa: F401  (MatMulNBitsQuantizer needs it)
        except ImportError:
            return False
        return True

    def quantize(self, exported, out_dir, calibration):
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        model = _load(exported)
        tables = quantize_embedding_tables(
            model,
            bits=self.table_bits,
            block_size=self.table_block_size,
            accuracy_level=self.accuracy_level,
        )
        tied = materialise_tied_weights(model)
        config = DefaultWeightOnlyQuantConfig(
            block_size=self.block_size,
            is_symmetric=True,
            accuracy_level=self.accuracy_level,
            bits=self.bits,
            op_types_to_quantize=("MatMul",),
            quant_axes=(("MatMul", 0),),
        )
        # a multi-adapter bundle's weights are fed at run time: their MatMuls stay in float
        kept = overridable_consumers(model, ("MatMul",))
        quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=kept)
        log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = log.level
        log.setLevel(logging.WARNING)  # it logs every node it visits at INFO
        try:
            quantizer.process()
        finally:
            log.setLevel(level)
        save_onnx(quantizer.model.model, out_dir / exported.model_file)
        return exported.moved(
            out_dir,
            quantization={
                "name": self.name,
                "op": "MatMulNBits",
                "bits": self.bits,
                "block_size": self.block_size,
                "accuracy_level": self.accuracy_level,
                "symmetric": True,
                "embedding_tables": tables,
                "materialised_tied_weights": tied,
                **({"float_matmuls_with_overridable_weights": len(kept)} if kept else {}),
            },
        )


def _graph_inputs_and_ops(exported: ExportedModel) -> tuple[list[str], dict[str, int]]:
    import onnx

    model = onnx.load(str(exported.path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return [i.name for i in model.graph.input], ops


class BitWidth:
    """``int8``/``int4``: the user names a bit width; this picks the scheme that keeps the model in
    hand faithful, and records it (the manifest's ``quantization.name`` is the scheme, with
    ``requested`` set to the bit width). A kind of model that has no faithful scheme at this width
    (``None``) is refused, and :meth:`refusal` says why and what applies."""

    auto_candidate = False  # auto tries the schemes themselves

    def __init__(
        self,
        bits: int,
        decoder,
        encoder,
        convolutional=None,
        *,
        refusals: dict[str, str] | None = None,
    ):
        self.bits = bits
        self.schemes = {"decoder": decoder, "encoder": encoder, "convolutional": convolutional}
        self.refusals = dict(refusals or {})
        described = ", ".join(
            f"{getattr(scheme, 'name', None) or _scheme_name(scheme)} for {family}s"
            for family, scheme in self.schemes.items()
            if scheme is not None
        )
        self.description = f"{bits}-bit: the faithful {bits}-bit scheme for the model ({described})"

    @staticmethod
    def family(exported: ExportedModel) -> str:
        """``decoder`` (a KV cache, or an onnxruntime-genai model), ``convolutional`` (more Conv
        than MatMul/Gemm nodes) or ``encoder`` (the rest)."""
        if exported.runtime == "onnxruntime-genai":
            return "decoder"
        inputs, ops = _graph_inputs_and_ops(exported)
        if any(name.startswith("past_key_values") for name in inputs):
            return "decoder"
        if ops.get("Conv", 0) > ops.get("MatMul", 0) + ops.get("Gemm", 0):
            return "convolutional"
        return "encoder"

    def scheme_for(self, exported: ExportedModel):
        """The scheme this width means for ``exported``, or ``None`` when none is faithful."""
        return self.schemes[self.family(exported)]

    def supports(self, exported: ExportedModel) -> bool:
        scheme = self.scheme_for(exported)
        return scheme is not None and scheme.supports(exported)

    def refusal(self, exported: ExportedModel) -> str | None:
        """Why this width does not apply to ``exported``, naming what does; ``None`` when it applies."""
        if self.supports(exported):
            return None
        family = self.family(exported)
        return self.refusals.get(family) or f"no {self.bits}-bit scheme keeps a {family} faithful"

    def quantize(self, exported, out_dir, calibration):
        from tunewright import UsageError

        scheme = self.scheme_for(exported)
        if scheme is None:
            raise UsageError(f"--quantize int{self.bits}: {self.refusal(exported)}")
        return scheme.quantize(exported, out_dir, calibration)


def _scheme_name(scheme) -> str:
    return {DynamicInt8: "int8-dynamic", StaticInt8: "int8-static"}.get(
        type(scheme), type(scheme).__name__
    )


@hookimpl(trylast=True)
def register_quantizers(register):
    dynamic, static = DynamicInt8(), StaticInt8()
    int8_block = BlockWise("int8-block", bits=8, block_size=64)
    int4_block = BlockWise("int4-block", bits=4, block_size=32)
    register("int8", BitWidth(8, decoder=int8_block, encoder=dynamic, convolutional=static))
    register(
        "int4",
        BitWidth(
            4,
            decoder=int4_block,
            encoder=int4_block,
            convolutional=None,
            refusals={
                "convolutional": "a convolutional network computes in its Conv layers, and the only 4-bit scheme "
                "(int4-block, MatMulNBits) quantizes MatMul weights alone, so it would leave the "
                "convolutions in fp32; use int8 (int8-static: per-channel QDQ on the convolutions, "
                "calibrated on the training images), or fp16 or none"
            },
        ),
    )
    register("none", NoQuantization())
    register("fp16", Float16())
    register("int8-dynamic", dynamic)
    register("int8-static", static)
    register("int8-block", int8_block)
    register("int4-block", int4_block)
