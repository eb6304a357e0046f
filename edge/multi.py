"""Several LoRA runs on one base model: one ONNX base, one ``.onnx_adapter`` file per run.

``tunewright export RUN_A RUN_B ... --out BUNDLE`` lands here. The runs must share what the ONNX
graph is made of (:func:`check_runs`, before any model loads): base model, task (a causal LM that
onnxruntime-genai's model builder exports), method ``lora``, rank and adapted modules.

```
  unmerged base + RUN_A's adapter ──genai builder (adapter_path)──► model.onnx with, beside each
                                                                    adapted MatMul W:
        x ─┬─ MatMul(W) ───────────────────┐
           └─ MatMul(lora_A) ─ MatMul(lora_B) ─ Add ─►
  every lora_A / lora_B weight made an overridable initializer (graph input + default of the same
  name; B's default zeros: no adapter = the base model); the base quantized with the MatMuls on
  them kept in float; adapters/<run>.onnx_adapter = each run's A^T and (alpha/r)·B^T by those names
```

At run time onnxruntime-genai (``og.Adapters``, ``Generator.set_active_adapter``) or onnxruntime
(``LoraAdapter`` + ``RunOptions``) feeds one adapter's weights per request. The parity gate runs
for each adapter against its own tuned run on that run's held-out examples; the bundle is written
only when every adapter passes (``research/serving.md`` section 1 has the recipe this follows).

Classifier runs (text or image classification, LoRA, the same number of labels: their names may
differ) share a bundle the same way, through the exporter a single classifier run uses:

```
  unmerged PEFT model of RUN_A (LoRA layers and its head in place) ──optimum / torch.onnx──►
        x ─┬─ W ─────────────────────────────┐
           └─ lora_A ─ lora_B ─ ·scaling_A ─ Add ─► ... ─► head (weight, bias) ─► logits
  found by value: each initializer equal to a PEFT tensor of RUN_A (as is or transposed) made
  overridable; defaults: LoRA A and B zeros (no adapter = the base encoder), the head RUN_A's
  (a head must exist: the base has none trained); adapters/<run>.onnx_adapter = each run's A,
  (alpha/r)/scaling_A·B and head, laid out as the graph holds them; labels per adapter
```
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunewright import kinds

from .export import (
    AUTO,
    FEW_PARITY_EXAMPLES,
    ExportResult,
    _data_profile,
    _link,
    _log_default,
    _machine,
    _quiet,
    _scratch_cwd,
    _stage,
    announce_export,
    bundle_folder,
    check_out,
    choose_exporter,
    judging_task,
    quantize_export,
    reference_limits,
    write_manifest,
)
from .parity import DEFAULT_THRESHOLD, measure_parity
from .preprocessing import copy_files
from .protocols import save_onnx
from .reference import build_reference
from .runtime.bench import bench_predictor, bundle_size_mb
from .runtime.registry import predictor_for

#: methods whose runs can share a bundle: plain LoRA, the only kind the genai builder adds as a
#: MatMul pair (DoRA's magnitude vectors and IA3's scaling are not LoRA MatMuls)
METHODS = ("lora",)
#: the exporter whose builder takes ``adapter_path``
EXPORTER = "genai"
#: quantizers that keep the LoRA weights overridable (block-wise ones skip MatMuls fed by a graph
#: input); the others would fold or drop them
QUANTIZERS = ("int8", "int4", "int8-block", "int4-block", "none")
#: the task kinds whose runs can share a bundle: causal LMs (the genai builder), and classifiers
#: (the exporter a single classifier run takes, on the unmerged PEFT model)
CLASSIFIER_KINDS = kinds.CLASSIFICATION_KINDS
SHARED_KINDS = (kinds.CAUSAL_LM, *CLASSIFIER_KINDS)
#: quantizers for a bundle of classifier adapters: each leaves a MatMul, Gemm or Conv fed by an
#: overridable initializer in float (int8 is int8-dynamic for an encoder, int8-static for a
#: convolutional net); fp16 would turn the graph inputs the adapters feed into float16 ones
CLASSIFIER_QUANTIZERS = (
    "int8",
    "int4",
    "int8-dynamic",
    "int8-static",
    "int8-block",
    "int4-block",
    "none",
)
ADAPTER_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"
#: how the LoRA weights are stored in the adapter files and fed to the graph (cast to float32
#: before their MatMuls): float16 halves each adapter and the defaults in the base (a rank-8
#: SmolLM2-135M adapter: 9.8 MB in float32), while its rounding (relative 2^-11) is far below what
#: the parity gate can see
ADAPTER_DTYPE = np.float16
#: how a classifier's head (trained in full) is stored: as trained, since it is small and every
#: logit goes through it
HEAD_DTYPE = np.float32
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class RunSpec:
    """One run of a multi-adapter export, as read before any model loads."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    adapter: dict[str, Any]  # adapter/adapter_config.json

    @property
    def scaling(self) -> float:
        r = float(self.adapter["r"])
        alpha = float(self.adapter["lora_alpha"])
        return alpha / (r**0.5) if self.adapter.get("use_rslora") else alpha / r

    @property
    def labels(self) -> list[str] | None:
        """The run's label names (``labels.json``), index order; ``None`` when it kept none."""
        path = self.run_dir / "labels.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    @property
    def saved_in_full(self) -> list[str]:
        """What the adapter trains in full (PEFT ``modules_to_save``: a classifier's head)."""
        return sorted(self.adapter.get("modules_to_save") or [])


def _read_spec(run_dir: Path, name: str) -> RunSpec:
    import yaml

    from tunewright import UsageError

    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(
            f"{run_dir}: not a run directory (no config.yaml); pass the output folders of training runs"
        )
    adapter_path = run_dir / "adapter" / "adapter_config.json"
    if not adapter_path.is_file():
        raise UsageError(
            f"{run_dir}: no adapter/adapter_config.json: the run did not finish, or its method "
            f"saves no PEFT adapter (runs that share a bundle use method {' or '.join(METHODS)})"
        )
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    adapter = json.loads(adapter_path.read_text(encoding="utf-8"))
    return RunSpec(name, run_dir, config, adapter)


def _modules(spec: RunSpec) -> list[str]:
    modules = spec.adapter.get("target_modules") or []
    return sorted(modules) if isinstance(modules, list) else [str(modules)]


#: the file of a run's saved preprocessor that must be the same in runs that share a bundle
PREPROCESSOR_FILES = {
    kinds.CAUSAL_LM: "tokenizer.json",
    kinds.SEQUENCE_CLASSIFICATION: "tokenizer.json",
    kinds.IMAGE_CLASSIFICATION: "preprocessor_config.json",
}


def _preprocessor_text(spec: RunSpec, kind: str) -> str | None:
    path = spec.run_dir / "tokenizer" / PREPROCESSOR_FILES[kind]
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _kind_name(kind: str | None) -> str:
    return {
        kinds.CAUSAL_LM: "causal LM (chat)",
        kinds.SEQUENCE_CLASSIFICATION: "text classification",
        kinds.IMAGE_CLASSIFICATION: "image classification",
    }.get(kind or "", kind or "not registered")


def _run_kind(spec: RunSpec, pm) -> str | None:
    """The model kind of ``spec``'s task (``None``: not registered)."""
    task = pm.registries.kind("tasks").get(spec.config.get("task"))
    return getattr(task, "model_kind", None)


def check_runs(run_dirs: Sequence[str | Path], names: Sequence[str] | None, pm) -> list[RunSpec]:
    """Read each run's ``config.yaml``, ``adapter/adapter_config.json`` and ``labels.json`` and
    refuse, with a :class:`tunewright.UsageError` (exit 2) naming the run, what differs and what is
    allowed, runs that cannot share one ONNX base: another base model or task, a task that is
    neither a causal LM nor a classifier (or a mix of them), a method other than plain LoRA,
    another rank or other adapted modules, another tokenizer or image processor, LoRA biases,
    per-module ranks; for causal LMs modules trained in full, for classifiers another number of
    labels or other modules trained in full (the head); and duplicate or unusable adapter names.
    No model loads."""
    from tunewright import UsageError

    dirs = [Path(d) for d in run_dirs]
    if names is not None and len(names) != len(dirs):
        raise UsageError(
            f"--name: {len(names)} names for {len(dirs)} runs; give one per run, in the runs' order"
        )
    chosen = list(names) if names is not None else [d.resolve().name for d in dirs]
    for name, run_dir in zip(chosen, dirs):
        if not NAME.match(name):
            raise UsageError(
                f"{run_dir}: adapter name {name!r} is not allowed: letters, digits, '.', '_' and '-', "
                "64 at most, starting with a letter or digit (name it with --name)"
            )
    seen: dict[str, Path] = {}
    for name, run_dir in zip(chosen, dirs):
        if name in seen:
            raise UsageError(
                f"{run_dir}: adapter name {name!r} is taken by {seen[name]} (adapters are named after "
                "their run folders); name them with --name NAME, once per run"
            )
        seen[name] = run_dir
    specs = [_read_spec(d, n) for d, n in zip(dirs, chosen)]
    tasks = pm.registries.kind("tasks")
    first = specs[0]
    first_kind = getattr(tasks.get(first.config.get("task")), "model_kind", None)
    allowed_kinds = ", ".join(_kind_name(kind) for kind in SHARED_KINDS)

    def differs(spec: RunSpec, what: str, mine: Any, theirs: Any, allowed: str) -> UsageError:
        return UsageError(
            f"{spec.run_dir}: {what} {mine!r}, but {first.run_dir} has {theirs!r}; runs that share "
            f"a bundle need {allowed}"
        )

    for spec in specs:
        task_name = spec.config.get("task")
        kind = getattr(tasks.get(task_name), "model_kind", None)
        if kind not in SHARED_KINDS:
            raise UsageError(
                f"{spec.run_dir}: task {task_name!r} ({kind or 'not registered'}) cannot share a bundle "
                f"with other runs: several adapters on one base are made for {allowed_kinds} runs "
                "(chat through onnxruntime-genai's model builder, classifiers through their own "
                "exporter); export it alone"
            )
        if kind != first_kind:
            raise UsageError(
                f"{spec.run_dir}: task {task_name!r} ({kind}) cannot share a bundle with "
                f"{first.run_dir}'s task {first.config.get('task')!r} ({first_kind}): runs that "
                f"share a bundle are all of one kind ({allowed_kinds}); export them in separate bundles"
            )
        classifier = kind in CLASSIFIER_KINDS
        method = spec.config.get("method")
        if method not in METHODS or spec.adapter.get("peft_type") != "LORA":
            raise UsageError(
                f"{spec.run_dir}: method {method!r} cannot share a bundle: allowed {', '.join(METHODS)} "
                "(plain LoRA: its A and B become graph inputs that an adapter file replaces; DoRA, "
                "IA3, prompt tuning, freeze and full change the base in other ways)"
            )
        if spec.adapter.get("use_dora"):
            raise UsageError(
                f"{spec.run_dir}: a DoRA adapter cannot share a bundle (plain LoRA only)"
            )
        if spec.adapter.get("bias", "none") != "none" or spec.adapter.get("lora_bias"):
            raise UsageError(
                f"{spec.run_dir}: the run trained biases (lora.bias {spec.adapter.get('bias')!r}); "
                "runs that share a bundle need bias 'none': trained biases change the shared base"
            )
        if spec.saved_in_full and not classifier:
            raise UsageError(
                f"{spec.run_dir}: the run trained modules in full ({', '.join(spec.saved_in_full)}); "
                "runs that share a bundle train LoRA weights only: full modules change the shared "
                "base (classifier runs may train their head in full)"
            )
        if spec.adapter.get("rank_pattern") or spec.adapter.get("alpha_pattern"):
            raise UsageError(
                f"{spec.run_dir}: the adapter has per-module ranks or alphas; runs that share a bundle "
                "need one rank and one alpha for every module"
            )
        if classifier and not spec.labels:
            raise UsageError(
                f"{spec.run_dir}: the run has no labels.json; classifier runs that share a bundle "
                "each bring their label names"
            )
        if spec is first:
            continue
        if spec.config.get("model") != first.config.get("model"):
            raise differs(
                spec,
                "the base model is",
                spec.config.get("model"),
                first.config.get("model"),
                "the same base model (one ONNX base serves every adapter)",
            )
        if task_name != first.config.get("task"):
            raise differs(spec, "the task is", task_name, first.config.get("task"), "the same task")
        if int(spec.adapter["r"]) != int(first.adapter["r"]):
            raise differs(
                spec,
                "lora.r is",
                int(spec.adapter["r"]),
                int(first.adapter["r"]),
                "the same rank (the LoRA weights are graph inputs of a fixed shape; alpha may differ)",
            )
        if _preprocessor_text(spec, kind) != _preprocessor_text(first, kind):
            what = "image processor" if kind == kinds.IMAGE_CLASSIFICATION else "tokenizer"
            raise UsageError(
                f"{spec.run_dir}: its {what} (tokenizer/{PREPROCESSOR_FILES[kind]}) differs from "
                f"{first.run_dir}'s; runs that share a bundle need the same {what} (the bundle "
                "carries one)"
            )
        if _modules(spec) != _modules(first):
            raise differs(
                spec,
                "the adapted modules are",
                _modules(spec),
                _modules(first),
                "the same lora.target_modules (each adapted layer is a pair of graph inputs)",
            )
        if classifier and len(spec.labels or ()) != len(first.labels or ()):
            raise differs(
                spec,
                "the number of labels is",
                len(spec.labels or ()),
                len(first.labels or ()),
                "the same number of labels (the head's weights are graph inputs of a fixed shape; "
                "the label names may differ, each adapter keeps its own)",
            )
        if spec.saved_in_full != first.saved_in_full:
            raise differs(
                spec,
                "the modules trained in full are",
                spec.saved_in_full,
                first.saved_in_full,
                "the same modules trained in full (the classifier's head: lora.modules_to_save)",
            )
    return specs


# ----------------------------------------------------------------------------------------------
# the graph and the adapter files
# ----------------------------------------------------------------------------------------------


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def make_overridable(
    model_path: Path,
    stored: Callable[[str], Any],
    *,
    keep_default: Callable[[str], bool] = lambda name: False,
) -> dict[str, np.ndarray]:
    """Turn initializers of the ONNX model at ``model_path`` into overridable initializers (a graph
    input of the same name, the initializer its default): each one for which ``stored(name)``
    names a numpy dtype (``None``: left as it is). The input has that dtype, cast to the
    weight's own type before it is used (a Cast node even where the types agree); its default is
    zeros, or the weight itself (in that dtype) where ``keep_default(name)``. Rewrites the file in
    place and returns the weights that were there, by name."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path), load_external_data=True)
    graph = model.graph
    built: dict[str, np.ndarray] = {}
    types: dict[str, int] = {}
    casts = []
    for tensor in graph.initializer:
        dtype = stored(tensor.name)
        if dtype is None:
            continue
        stored_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        array = numpy_helper.to_array(tensor)
        built[tensor.name] = array.copy()
        types[tensor.name] = stored_type
        computed = tensor.data_type
        default = array if keep_default(tensor.name) else np.zeros(array.shape)
        tensor.CopyFrom(numpy_helper.from_array(np.asarray(default, dtype=dtype), tensor.name))
        # a Cast even to the same type: a quantizer that rewrites the weights it finds as
        # initializers (int8-dynamic turns a Gemm's B^T into a new constant) sees a computed value
        cast = f"{tensor.name}/cast"
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == tensor.name:
                    node.input[i] = cast
        casts.append(helper.make_node("Cast", [tensor.name], [cast], name=cast, to=computed))
    # each such weight a graph input of the stored type (exporters make none; replace any they did)
    kept = [i for i in graph.input if i.name not in built]
    del graph.input[:]
    graph.input.extend(kept)
    for name, array in built.items():
        graph.input.append(helper.make_tensor_value_info(name, types[name], list(array.shape)))
    for cast in reversed(casts):  # first: they depend on graph inputs only
        graph.node.insert(0, cast)
    save_onnx(model, model_path)
    return built


def make_lora_overridable(
    model_path: Path, stored: type[np.floating] = ADAPTER_DTYPE
) -> dict[str, np.ndarray]:
    """:func:`make_overridable` for the genai builder's model: every ``*lora_A*``/``*lora_B*``
    initializer, stored as ``stored`` (float16: half the bytes in every adapter file and in the
    defaults), zeros by default so that no adapter is the base model. Returns the weights the
    builder had put there (the first run's), by name."""
    return make_overridable(model_path, lambda name: stored if _is_lora(name) else None)


def locate_by_value(
    model_path: Path, weights: dict[str, np.ndarray]
) -> tuple[dict[str, str], set[str]]:
    """Where an exporter put each of a PEFT model's ``weights``: ``({PEFT key: ONNX initializer
    name}, {keys stored transposed})``, found by value. torch.onnx and optimum name a LoRA
    weight after nothing (``onnx::Gemm_731``) and may store it transposed (a MatMul) or as it is
    (a Gemm, a Conv); the values are exact copies, and a trained adapter's tensors are distinct.
    Raises :class:`tunewright.JobFailed` for a weight found nowhere or in several places."""
    import onnx
    from onnx import numpy_helper

    from tunewright import JobFailed

    graph = onnx.load(str(model_path), load_external_data=True).graph
    by_shape: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if np.issubdtype(array.dtype, np.floating):
            by_shape.setdefault(array.shape, []).append((tensor.name, array))
    mapping: dict[str, str] = {}
    transposed: set[str] = set()
    for key, value in weights.items():
        found: dict[str, bool] = {}
        for candidate, flipped in ((value, False), (value.T, True)):
            for name, array in by_shape.get(candidate.shape, []):
                if name not in found and np.array_equal(array, candidate.astype(array.dtype)):
                    found[name] = flipped
            if value.ndim < 2:
                break
        if len(found) != 1:
            raise JobFailed(
                f"the exported graph does not hold the adapter's {key} exactly once (found "
                f"{len(found)} copies{': ' + ', '.join(list(found)[:3]) if found else ''}); "
                "this model cannot share a bundle"
            )
        ((name, flipped),) = found.items()
        if name in mapping.values():
            raise JobFailed(f"the exported graph holds {key} in a weight another tensor maps to")
        mapping[key] = name
        if flipped:
            transposed.add(key)
    return mapping, transposed


def _peft_weights(run_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    folder = run_dir / "adapter"
    path = folder / "adapter_model.safetensors"
    if path.is_file():
        return {k: np.asarray(v, dtype=np.float32) for k, v in load_file(str(path)).items()}
    import torch  # an adapter_model.bin

    state = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}


def name_map(built: dict[str, np.ndarray], first_weights: dict[str, np.ndarray]) -> dict[str, str]:
    """``{PEFT key: ONNX initializer name}`` for every LoRA weight, found by value: the builder
    stored the first run's ``lora_A`` transposed, so each ONNX ``lora_A`` equals exactly one PEFT
    ``lora_A.weight`` transposed (and the ``lora_B`` beside it is named alike). Matching by value
    holds for every architecture the builder knows, whatever it calls the layers."""
    from tunewright import JobFailed

    onnx_a = {name: value for name, value in built.items() if ".lora_A." in name}
    peft_a = {key: value for key, value in first_weights.items() if ".lora_A." in key}
    mapping: dict[str, str] = {}
    for key, value in peft_a.items():
        hits = [
            n for n, v in onnx_a.items() if v.shape == value.T.shape and np.array_equal(v, value.T)
        ]
        if len(hits) != 1:
            raise JobFailed(
                f"the genai builder's LoRA weights do not match the adapter's: {key} is "
                f"{'in no' if not hits else 'in several'} ONNX lora_A initializer(s) "
                f"({', '.join(hits[:3])}); this architecture cannot share a bundle"
            )
        mapping[key] = hits[0]
        mapping[key.replace(".lora_A.", ".lora_B.")] = hits[0].replace(".lora_A.", ".lora_B.")
    missing = sorted(set(built) - set(mapping.values()))
    if missing:
        raise JobFailed(
            f"the genai builder made LoRA weights no adapter key maps to: {', '.join(missing[:3])}"
        )
    return mapping


def write_adapter(
    spec: RunSpec,
    mapping: dict[str, str],
    shapes: dict[str, tuple],
    path: Path,
    *,
    transposed: Callable[[str], bool] = lambda key: True,
    graph_scaling: float = 1.0,
    dtypes: Callable[[str], Any] = lambda name: ADAPTER_DTYPE,
) -> dict[str, Any]:
    """Write ``spec``'s adapter weights as an onnxruntime adapter file under the ONNX names of
    ``mapping``, each laid out as the graph holds it (transposed where ``transposed(key)``: the
    genai builder stores every LoRA weight so) in ``dtypes(onnx name)``. B is scaled by
    ``spec.scaling / graph_scaling``: the builder folds the scaling into B (the graph applies
    none: 1), a PEFT export multiplies by its own run's scaling after B."""
    import onnxruntime as ort

    from tunewright import JobFailed

    weights = _peft_weights(spec.run_dir)
    params: dict[str, np.ndarray] = {}
    for key, value in weights.items():
        if key not in mapping:
            raise JobFailed(f"{spec.run_dir}: adapter weight {key} has no place in the shared base")
        array = value.T if transposed(key) else value
        if ".lora_B." in key:
            array = array * (spec.scaling / graph_scaling)
        array = np.ascontiguousarray(array, dtype=dtypes(mapping[key]))
        if array.shape != tuple(shapes[mapping[key]]):
            raise JobFailed(
                f"{spec.run_dir}: adapter weight {key} is {array.shape}, the base takes "
                f"{tuple(shapes[mapping[key]])}"
            )
        params[mapping[key]] = array
    if set(params) != set(shapes):
        raise JobFailed(
            f"{spec.run_dir}: the adapter lacks {sorted(set(shapes) - set(params))[:3]}"
        )
    values = {name: ort.OrtValue.ortvalue_from_numpy(array) for name, array in params.items()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    adapter.export_adapter(str(path))
    return {"tensors": len(params), "scaling": spec.scaling}


def _check_still_overridable(
    model_path: Path, names: Sequence[str], quantizer: str, allowed: Sequence[str] = QUANTIZERS
) -> None:
    import onnx

    from tunewright import JobFailed

    graph = onnx.load(str(model_path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    lost = [name for name in names if name not in inputs]
    if lost:
        raise JobFailed(
            f"--quantize {quantizer}: the quantizer turned {len(lost)} adapter weights into "
            f"constants ({', '.join(lost[:2])}...), so adapters could not replace them; use one of "
            f"{', '.join(allowed)}"
        )


def _export_classifier_base(
    specs: list[RunSpec], first_run, task_kind: str, work: Path, pm, log
) -> tuple[Any, Any, dict[str, str], set[str], dict[str, np.ndarray]]:
    """The first run's unmerged PEFT model exported by the exporter a single classifier run takes,
    with its LoRA weights (zeros by default) and its head (its own by default) made overridable.
    Returns ``(exporter, exported, mapping, transposed, built)`` (:func:`locate_by_value`)."""
    from tunewright import JobFailed, load_run

    first = specs[0]
    wrapped = load_run(first.run_dir, merged=False, pm=pm).model
    # the transformers model with PEFT's LoRA layers and head copy in place: what exporters know
    model = getattr(getattr(wrapped, "base_model", None), "model", wrapped)
    model.float().eval()
    name, exporter = choose_exporter(pm.registries, AUTO, model, task_kind)
    log(f"export: {name} on {first.name}'s unmerged model (LoRA and head as graph inputs)")
    with _quiet(log, f"the exporter {name!r}"):
        exported = exporter.export(model, first_run.tokenizer, task_kind, work / "export")
    exported.exporter = exported.exporter or name
    first_weights = _peft_weights(first.run_dir)
    mapping, transposed = locate_by_value(exported.path, first_weights)
    head = {mapping[key] for key in first_weights if not _is_lora(key)}
    if not head:
        raise JobFailed(
            f"{first.run_dir}: the adapter saves no head; classifier runs that share a bundle "
            "train their head in full (lora.modules_to_save)"
        )
    stored = {
        onnx_name: (HEAD_DTYPE if onnx_name in head else ADAPTER_DTYPE)
        for onnx_name in mapping.values()
    }
    built = make_overridable(exported.path, stored.get, keep_default=head.__contains__)
    return exporter, exported, mapping, transposed, built


# ----------------------------------------------------------------------------------------------
# the export
# ----------------------------------------------------------------------------------------------


def export_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    names: Sequence[str] | None = None,
    quantize: str = "int8",
    threshold: float = DEFAULT_THRESHOLD,
    split: str = "validation",
    bench: bool = False,
    overwrite: bool = False,
    pm=None,
    log: Callable[[str], None] = _log_default,
    max_examples: int | None = None,
    fidelity_examples: int | None = None,
    new_tokens: int | None = None,
    ort_format: bool = False,
) -> ExportResult:
    """Export several LoRA runs of one base model as one bundle: the base once, one adapter file
    per run, each adapter proven against its own run (module docstring): causal LMs through the
    genai builder, classifiers through their own exporter (each adapter with its labels). Raises
    :class:`tunewright.UsageError` (exit 2) before any model loads for runs that cannot share a
    bundle, and :class:`tunewright.JobFailed` (exit 1) when an adapter fails the parity gate; then
    nothing is written at ``out``."""
    from tunewright import JobFailed, UsageError, get_plugin_manager, load_run

    out = Path(out)
    pm = pm or get_plugin_manager()
    check_out(out, overwrite=overwrite)
    if ort_format:
        raise UsageError("--ort-format: not available for a bundle of several adapters")
    if split not in ("validation", "test"):
        raise UsageError(f"--split: a run keeps 'validation' and 'test' examples, not {split!r}")
    specs = check_runs(run_dirs, names, pm)
    registries = pm.registries
    classifiers = _run_kind(specs[0], pm) in CLASSIFIER_KINDS
    allowed = CLASSIFIER_QUANTIZERS if classifiers else QUANTIZERS
    if quantize not in allowed:
        raise UsageError(
            f"--quantize: {quantize!r} cannot quantize a bundle of several "
            f"{'classifier ' if classifiers else ''}adapters; allowed {', '.join(allowed)} (they "
            "leave the MatMuls, Gemms and Convs fed by adapter weights in float, and the weights "
            "graph inputs that the adapters replace at run time)"
        )
    exporter = None
    if not classifiers:
        exporter = registries.kind("exporters").get(EXPORTER)
        if exporter is None:
            raise UsageError(
                f"several adapters need the {EXPORTER!r} exporter, which is not registered"
            )
    started = time.perf_counter()
    max_examples, fidelity_examples, new_tokens = reference_limits(
        exporter, max_examples, fidelity_examples, new_tokens
    )

    references, all_examples, runs_info = {}, [], {}
    first_run = None
    calibration: list[dict] = []  # classifiers: the first run's held-out examples
    for spec in specs:
        log(f"reference: {spec.name} ({spec.run_dir})")
        run = load_run(spec.run_dir, pm=pm)
        first_run = first_run or run
        examples = list(getattr(run, split) or [])
        task, judged, _ = judging_task(run, spec.run_dir, pm)
        examples = judged(examples)
        if not examples:
            raise UsageError(
                f"{spec.run_dir}: the parity gate needs held-out {split} examples, and the run kept none"
            )
        if min(len(examples), max_examples) < FEW_PARITY_EXAMPLES:
            log(
                f"WARNING: {spec.name}'s parity gate rests on {min(len(examples), max_examples)} "
                f"held-out examples (fewer than {FEW_PARITY_EXAMPLES}); hold out more data"
            )
        references[spec.name] = build_reference(
            run.model,
            run.tokenizer,
            task,
            examples,
            labels=run.labels,
            max_examples=max_examples,
            fidelity_examples=fidelity_examples,
            new_tokens=new_tokens,
        )
        all_examples += examples[:max_examples]
        runs_info[spec.name] = {
            "dir": str(spec.run_dir.resolve()),
            "eval": run.eval,
            "lora": {
                "r": int(spec.adapter["r"]),
                "alpha": float(spec.adapter["lora_alpha"]),
                "target_modules": _modules(spec),
                **({"modules_to_save": spec.saved_in_full} if classifiers else {}),
            },
        }
        if classifiers:
            calibration = calibration or references[spec.name].calibration()
    assert first_run is not None
    first = specs[0]
    task_kind = first_run.task.model_kind
    max_length = int(getattr(getattr(first_run.config, "data", None), "max_length", None) or 512)
    info = {
        "base_model": first_run.base_model,
        "method": first_run.method,
        "task": first_run.task_name,
    }
    if not classifiers:
        assert exporter is not None
        if not exporter.supports(first_run.model, task_kind):
            raise UsageError(
                f"{first.run_dir}: the {EXPORTER} exporter cannot export a {type(first_run.model).__name__}; "
                "several adapters on one base need a causal LM onnxruntime-genai's builder knows"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-export-{out.name}-", dir=out.parent) as work_dir:
        work = Path(work_dir).resolve()
        adapter_files: dict[str, dict[str, Any]] = {}
        head: set[str] = set()
        if classifiers:
            exporter, exported, mapping, transposed, built = _export_classifier_base(
                specs, first_run, task_kind, work, pm, log
            )
            head = {name for key, name in mapping.items() if not _is_lora(key)}
            shapes = {name: value.shape for name, value in built.items()}
            for spec in specs:
                relative = f"{ADAPTER_DIR}/{spec.name}{ADAPTER_SUFFIX}"
                details = write_adapter(
                    spec,
                    mapping,
                    shapes,
                    work / "adapters" / relative,
                    transposed=transposed.__contains__,
                    graph_scaling=first.scaling,
                    dtypes=lambda name: HEAD_DTYPE if name in head else ADAPTER_DTYPE,
                )
                adapter_files[spec.name] = {"file": relative, **details}
        else:
            # the unmerged base: the builder loads the first run's adapter onto it itself
            wrapped = load_run(first.run_dir, merged=False, pm=pm).model
            base_model = wrapped.unload() if hasattr(wrapped, "unload") else wrapped
            base_model.float().eval()
            log(f"export: {EXPORTER} with {first.name}'s adapter as the LoRA layout")
            with _quiet(log, f"the exporter {EXPORTER!r}"):
                exported = exporter.export(
                    base_model,
                    first_run.tokenizer,
                    task_kind,
                    work / "export",
                    adapter_path=first.run_dir / "adapter",
                )
            exported.exporter = exported.exporter or EXPORTER
            built = make_lora_overridable(exported.path)
            if not built:
                raise JobFailed(
                    "the genai builder wrote no LoRA weights for the first run's adapter"
                )
            mapping = name_map(built, _peft_weights(first.run_dir))
            shapes = {name: value.shape for name, value in built.items()}
            for spec in specs:
                relative = f"{ADAPTER_DIR}/{spec.name}{ADAPTER_SUFFIX}"
                details = write_adapter(spec, mapping, shapes, work / "adapters" / relative)
                adapter_files[spec.name] = {"file": relative, **details}
        log(f"adapters: {len(specs)} files of {len(built)} tensors each")
        quantizer = registries.kind("quantizers")[quantize]
        log(f"quantize: {quantize}")
        with _scratch_cwd(work / "scratch"), _quiet(log, f"the quantizer {quantize!r}"):
            quantized = quantize_export(
                quantizer, quantize, exported, work / "q", calibration, exporter
            )
        if quantized.quantization.get("name") != quantize:
            quantized.quantization = {**quantized.quantization, "requested": quantize}
        if "calibration_examples" in quantized.quantization:
            quantized.quantization = {
                **quantized.quantization,
                "calibration": f"held-out ({first.name})",
            }
        _check_still_overridable(quantized.path, list(built), quantize, allowed)
        stage = work / "stage"
        draft = _stage(
            quantized,
            stage,
            first_run.tokenizer,
            labels=first_run.labels,
            max_length=max_length,
            info=info,
            config=first_run.config,
            exporter=exporter,
            model=first_run.model,
        )
        for entry in adapter_files.values():
            _link(work / "adapters" / entry["file"], stage / entry["file"])
        draft["adapters"] = {
            name: {"file": entry["file"], "run": runs_info[name], "scaling": entry["scaling"]}
            for name, entry in adapter_files.items()
        }
        draft["model"]["lora_inputs"] = len(built) - len(head)
        draft["model"]["lora_dtype"] = np.dtype(ADAPTER_DTYPE).name
        if classifiers:
            # each adapter answers with its own run's label names; no adapter (the graph's
            # defaults: LoRA off, the first run's head) with the first run's
            for spec in specs:
                draft["adapters"][spec.name]["labels"] = spec.labels
            draft["model"]["head_inputs"] = sorted(head)
            draft["model"]["head_dtype"] = np.dtype(HEAD_DTYPE).name
            draft["model"]["default_adapter_weights"] = (
                f"LoRA zeros (the base encoder), the head of {first.name}"
            )
        predictor = predictor_for(stage, draft, pm=pm)
        reports = {}
        for spec in specs:
            log(f"parity: adapter {spec.name} against its run")
            report = measure_parity(
                predictor.for_adapter(spec.name),
                references[spec.name],
                threshold,
                model_bytes=quantized.size_bytes(),
            )
            log(f"  parity {'passed' if report.passed else 'FAILED'}\n{report.table()}")
            reports[spec.name] = report
        failed = [name for name, report in reports.items() if not report.passed]
        if failed:
            raise JobFailed(
                f"parity gate failed for adapter(s) {', '.join(failed)}: the bundle with that adapter "
                f"falls more than {threshold:g} points below its tuned run; no bundle written at {out}\n"
                + "\n".join(f"{name}:\n{reports[name].table()}" for name in failed)
            )
        with bundle_folder(out, overwrite=overwrite) as staging:
            copy_files(stage, staging)
            manifest = dict(draft)
            for name, report in reports.items():
                examples_file = f"parity/{name}.npz"
                (staging / "parity").mkdir(exist_ok=True)
                np.savez_compressed(staging / examples_file, **report.arrays)
                manifest["adapters"][name]["parity"] = {
                    **report.as_dict(),
                    "examples_file": examples_file,
                }
            # the manifest's own "parity": the adapter that dropped most (what one figure can say)
            worst = max(reports, key=lambda name: reports[name].drop)
            manifest["parity"] = {**manifest["adapters"][worst]["parity"], "adapter": worst}
            if bench:
                log("bench: batch 1 on this machine (the graph's defaults, no adapter)")
                bench_with = predictor_for(staging, manifest, pm=pm)
                manifest["benchmark"] = {
                    **bench_predictor(bench_with),
                    "machine": _machine(),
                    "size_mb": bundle_size_mb(staging),
                }
                del bench_with
            profile = _data_profile(staging, manifest, all_examples)
            if profile:
                manifest["data_profile"] = profile
            manifest = write_manifest(staging, manifest, started=started)
        del predictor
    log(
        f"bundle: {out} ({manifest['quantization']['name']}, {len(specs)} adapters, "
        f"{bundle_size_mb(out):.1f} MiB)"
    )
    result = ExportResult(out, manifest, reports[worst], [])
    for spec in specs:  # each run's on_export hooks (a tracker files the bundle under each run)
        announce_export(pm, spec.run_dir, result, log)
    return result


__all__ = [
    "export_runs",
    "check_runs",
    "locate_by_value",
    "make_lora_overridable",
    "make_overridable",
    "name_map",
    "write_adapter",
]
