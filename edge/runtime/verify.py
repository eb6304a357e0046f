"""``verify``: check every file's hash, then rerun the parity examples recorded at export time.

The export stored, in ``parity.npz``, the inputs of a few held-out examples with the tuned PyTorch
model's outputs on them. Verify runs the bundle on the same inputs and compares with what the
manifest claims: a bundle that hashes right but computes something else (another runtime build,
another CPU) is caught here. Tolerances allow for the rounding differences between CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .bundle import BundleError, open_bundle
from .predictors import log_softmax
from .registry import predictor_for

#: how far a rerun may fall from the recorded figures before verify fails
AGREEMENT_SLACK = 0.05
DIFF_FACTOR = 2.0
DIFF_FLOOR = 1e-3


def _examples(arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    count = int(arrays["count"])
    return [
        {key.split(".", 1)[1]: arrays[key] for key in arrays if key.startswith(f"{i}.")}
        for i in range(count)
    ]


def _named(example: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix) :]: value for key, value in example.items() if key.startswith(prefix)}


def _rerun_classifier(predictor, examples) -> dict[str, float]:
    diffs, agree = [], []
    for example in examples:
        logits = predictor.logits(_named(example, "feed."))
        reference = example["reference_logits"]
        diffs.append(float(np.abs(logits - reference).max()))
        agree.extend((logits.argmax(-1) == reference.argmax(-1)).tolist())
    return {"max_abs_diff": max(diffs), "top1_agreement": float(np.mean(agree))}


def _rerun_generator(predictor, examples) -> dict[str, float]:
    agree, kl = [], []
    for example in examples:
        prompt = _named(example, "prompt.")
        if not prompt:  # bundles written before prompts were stored as model inputs
            prompt = {"input_ids": example["prompt_ids"][None, :]}
        # an image-text bundle records the pixel values of its prompts' images beside them
        pixels = example.get("pixel_values")
        if pixels is not None and len(pixels):
            prompt["pixel_values"] = pixels
        logits = predictor.teacher_forced_logits(prompt, example["continuation"].tolist())
        agree.extend((logits.argmax(-1) == example["reference_top1"]).tolist())
        # KL(tuned || bundle) over the reference's recorded top tokens (a lower bound of the full KL)
        ref_idx, ref_logp = (
            example["reference_top_ids"],
            example["reference_top_logprobs"].astype(np.float64),
        )
        ours = log_softmax(logits.astype(np.float64))
        ours_top = np.take_along_axis(ours, ref_idx.astype(np.int64), axis=-1)
        kl.append(float((np.exp(ref_logp) * (ref_logp - ours_top)).sum(-1).mean()))
    return {"top1_agreement": float(np.mean(agree)), "kl_top": float(np.mean(kl))}


def verify_bundle(
    folder: str | Path, *, threads: int | None = None, pm: Any = None
) -> dict[str, Any]:
    """Return ``{"ok", "files", "recorded", "rerun", "problems"}``; raise :class:`BundleError` when a
    file was changed or the format is newer. A bundle of several adapters answers
    ``{"ok", "files", "problems", "adapters": {name: {"ok", "recorded", "rerun", "problems"}}}``,
    each adapter's recorded examples rerun with that adapter active.

    ``ok`` is False, with a sentence per figure in ``problems``, when the rerun's top-1 agreement
    falls more than ``AGREEMENT_SLACK`` below the recorded one, or its largest logit difference
    exceeds ``DIFF_FACTOR`` times the recorded one (plus ``DIFF_FLOOR``).
    """
    folder = Path(folder)
    manifest = open_bundle(folder, verify=True)
    adapters = manifest.get("adapters") or {}
    if adapters:
        # a multi-adapter bundle: each adapter's examples, rerun with that adapter active
        predictor = predictor_for(folder, manifest, threads=threads, pm=pm)
        results: dict[str, Any] = {}
        problems: list[str] = []
        for name, entry in sorted(adapters.items()):
            one = _verify(folder, entry.get("parity") or {}, predictor.for_adapter(name))
            results[name] = one
            problems += [f"adapter {name}: {problem}" for problem in one["problems"]]
        return {
            "ok": not problems,
            "files": len(manifest.get("files", {})),
            "problems": problems,
            "adapters": results,
        }
    parity = manifest.get("parity") or {}
    report = {"files": len(manifest.get("files", {}))}
    if not parity.get("examples_file"):
        return {
            "ok": False,
            **report,
            "problems": ["the manifest records no parity examples to rerun"],
            "recorded": parity.get("bundle_vs_tuned", {}),
        }
    predictor = predictor_for(folder, manifest, threads=threads, pm=pm)
    return {**report, **_verify(folder, parity, predictor)}


def _verify(folder: Path, parity: dict[str, Any], predictor: Any) -> dict[str, Any]:
    """Rerun the examples that ``parity`` (a manifest's parity section) recorded on ``predictor``."""
    name = parity.get("examples_file")
    report: dict[str, Any] = {
        "ok": True,
        "problems": [],
        "recorded": parity.get("bundle_vs_tuned", {}),
    }
    if not name:
        report["problems"].append("the manifest records no parity examples to rerun")
        report["ok"] = False
        return report
    with np.load(folder / name, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    examples = _examples(arrays)
    rerun = (
        _rerun_generator(predictor, examples)
        if predictor.generates
        else _rerun_classifier(predictor, examples)
    )
    report["rerun"] = rerun
    recorded = report["recorded"]
    if (
        "top1_agreement" in recorded
        and rerun["top1_agreement"] < recorded["top1_agreement"] - AGREEMENT_SLACK
    ):
        report["problems"].append(
            f"top-1 agreement with the tuned model is {rerun['top1_agreement']:.3f} on the recorded "
            f"examples; the manifest records {recorded['top1_agreement']:.3f}"
        )
    if "max_abs_diff" in rerun and "max_abs_diff" in recorded:
        limit = max(recorded["max_abs_diff"] * DIFF_FACTOR, recorded["max_abs_diff"] + DIFF_FLOOR)
        if rerun["max_abs_diff"] > limit:
            report["problems"].append(
                f"max abs logit difference is {rerun['max_abs_diff']:.4g}; the manifest records "
                f"{recorded['max_abs_diff']:.4g} (allowed up to {limit:.4g})"
            )
    report["ok"] = not report["problems"]
    return report


__all__ = ["verify_bundle", "BundleError"]
