"""Built-in quantizers, all on onnxruntime's quantization tools.

===========  ===============================================================================
none         the exported fp32 model as it is
fp16         weights and activations in float16, inputs and outputs kept float32 (size; GPUs)
int8         dynamic int8: weights per channel, activations quantized on the fly (encoders)
int8-static  QDQ int8 with activation ranges calibrated on the run's held-out examples
int8-block   block-wise 8-bit weights (MatMulNBits, block 32, accuracy level 4): the faithful
             choice for decoders, whose activations have outliers that per-tensor int8 clips
int4         block-wise 4-bit weights (MatMulNBits, block 32, accuracy level 4), the embedding
             Gather included so that the file shrinks too
===========  ===============================================================================

``--quantize auto`` tries every quantizer marked ``auto_candidate`` that applies and keeps the
fastest that passes the parity gate.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from tunewright import hookimpl
from tunewright.edge import ExportedModel


def _copy_side_files(exported: ExportedModel, out_dir: Path) -> None:
    """Copy what is not the ONNX model itself (genai_config.json, ...)."""
    for name in exported.files():
        if name == exported.model_file or name.endswith((".onnx", ".onnx_data", ".onnx.data", ".data")):
            continue
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(exported.folder) / name, target)


def _save(model, path: Path) -> None:
    """Save an ONNX model, with external data only when it must (over 2 GB protobuf limit)."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    big = model.ByteSize() > 1_800_000_000 if hasattr(model, "ByteSize") else True
    if big:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))


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
        model = convert_float_to_float16(_load(exported), keep_io_types=True,
                                         op_block_list=["Range", "CumSum"])
        _copy_side_files(exported, out_dir)
        _save(model, out_dir / exported.model_file)
        return exported.moved(out_dir, quantization={"name": "fp16", "keep_io_types": True})


class DynamicInt8:
    description = "dynamic int8 (per-channel int8 weights, activations quantized at run time)"
    auto_candidate = True

    def __init__(self, per_channel: bool = True):
        self.per_channel = per_channel

    def supports(self, exported: ExportedModel) -> bool:
        return exported.runtime == "onnxruntime"

    def quantize(self, exported, out_dir, calibration):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        quantize_dynamic(str(exported.path), str(out_dir / exported.model_file), per_channel=self.per_channel,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                         extra_options={"MatMulConstBOnly": True})
        return exported.moved(out_dir, quantization={"name": "int8", "weights": "int8", "embeddings": "int8",
                                                     "per_channel": self.per_channel, "activations": "dynamic uint8"})


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


class StaticInt8:
    description = "static int8 QDQ, activations calibrated on the run's held-out examples (classifiers)"
    auto_candidate = True

    def supports(self, exported: ExportedModel) -> bool:
        # a decoder's cache inputs make calibration feeds of their own; not supported yet
        return exported.runtime == "onnxruntime" and exported.task_kind != "causal_lm"

    def quantize(self, exported, out_dir, calibration):
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from tunewright import UsageError

        if not calibration:
            raise UsageError("--quantize int8-static needs held-out examples to calibrate on, and there are none")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        names = {i.name for i in ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"]).get_inputs()}
        prepared = out_dir / "prepared.onnx"
        try:
            quant_pre_process(str(exported.path), str(prepared), skip_symbolic_shape=False)
            source = prepared
        except Exception:
            source = exported.path
        quantize_static(str(source), str(out_dir / exported.model_file), _Reader(calibration, names),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        op_types_to_quantize=["MatMul", "Gemm", "Conv"],
                        extra_options={"MatMulConstBOnly": True})
        prepared.unlink(missing_ok=True)
        return exported.moved(out_dir, quantization={"name": "int8-static", "format": "QDQ", "per_channel": True,
                                                     "calibration_examples": len(calibration)})


def materialise_tied_weights(model) -> int:
    """Give every MatMul whose weight is a Transpose of an initializer (a tied lm_head) its own
    transposed initializer, so that MatMulNBits can quantize it. Returns how many were changed."""
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


class BlockWise:
    """MatMulNBits weights: ``bits`` per weight in blocks of ``block_size`` along the input axis."""

    auto_candidate = True

    def __init__(self, name: str, bits: int, block_size: int = 32, accuracy_level: int = 4,
                 quantize_embedding: bool = False):
        self.name, self.bits, self.block_size = name, bits, block_size
        self.accuracy_level, self.quantize_embedding = accuracy_level, quantize_embedding
        self.description = (f"block-wise {bits}-bit weights (MatMulNBits, block {block_size}, accuracy level "
                            f"{accuracy_level}{', embedding too' if quantize_embedding else ''})")

    def supports(self, exported: ExportedModel) -> bool:
        try:
            import onnx_ir  # noqa: F401  (MatMulNBitsQuantizer needs it)
        except ImportError:
            return False
        return True

    def quantize(self, exported, out_dir, calibration):
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        _copy_side_files(exported, out_dir)
        model = _load(exported)
        tied = materialise_tied_weights(model)
        ops = ("MatMul", "Gather") if self.quantize_embedding else ("MatMul",)
        config = DefaultWeightOnlyQuantConfig(block_size=self.block_size, is_symmetric=True,
                                              accuracy_level=self.accuracy_level, bits=self.bits,
                                              op_types_to_quantize=ops, quant_axes=(("MatMul", 0), ("Gather", 1)))
        quantizer = MatMulNBitsQuantizer(model, algo_config=config)
        log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
        level = log.level
        log.setLevel(logging.WARNING)  # it logs every node it visits at INFO
        try:
            quantizer.process()
        finally:
            log.setLevel(level)
        _save(quantizer.model.model, out_dir / exported.model_file)
        return exported.moved(out_dir, quantization={
            "name": self.name, "op": "MatMulNBits", "bits": self.bits, "block_size": self.block_size,
            "accuracy_level": self.accuracy_level, "symmetric": True, "embedding": self.quantize_embedding,
            "materialised_tied_weights": tied})


@hookimpl(trylast=True)
def register_quantizers(register):
    register("none", NoQuantization())
    register("fp16", Float16())
    register("int8", DynamicInt8())
    register("int8-static", StaticInt8())
    register("int8-block", BlockWise("int8-block", bits=8))
    register("int4", BlockWise("int4", bits=4, quantize_embedding=True))
