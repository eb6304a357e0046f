"""The image-to-text task: data rules, tokenization, collation, metrics and LoRA on tiny models."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from tunewright import DataError
from tunewright.edge.runtime.image_text import image_views
from tunewright.plugins.methods.lora import LoraMethod, LoraSettings
from tunewright.plugins.vision.image_text import (
    IGNORE,
    ImageTextTask,
    last_answer,
    split_pixel_values,
    strip_at_eos,
)
from tunewright.vision import prepare_example

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return ImageTextTask(exact_match_examples=8)


@pytest.fixture(scope="module")
def processor(task, tiny_image_text_dir):
    return task.load_tokenizer(tiny_image_text_dir)


@pytest.fixture
def model(task, tiny_image_text_dir, processor):
    return task.load_model(tiny_image_text_dir, None, None, processor)


def _png(path: Path, size=(40, 30), colour=(220, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return str(path)


def _example(
    path: str,
    answer: str = "red",
    detail: str | None = None,
    question: str = "What colour is this?",
):
    """A chat example naming the image by its path relative to its folder, which the example
    carries as the vision transform writes it (``image_source``) for an example of a data file."""
    spec = (
        {"url": Path(path).name} if detail is None else {"url": Path(path).name, "detail": detail}
    )
    return prepare_example(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": spec},
                        {"type": "text", "text": question},
                    ],
                },
                {"role": "assistant", "content": answer},
            ]
        },
        root=Path(path).parent,
    )


def _colour_examples(folder: Path, sizes=((40, 30),)) -> list[dict]:
    return [
        _example(_png(folder / f"{name}-{w}x{h}.png", (w, h), rgb), name)
        for name, rgb in COLOURS.items()
        for w, h in sizes
    ]


# -- views -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, detail, expected",
    [
        ((40, 30), "low", [(40, 30)]),
        ((1000, 600), "low", [(512, 307)]),  # fit within 512x512, aspect kept
        ((40, 30), "auto", [(40, 30)]),  # auto: an image within one low view stays low
        ((40, 30), "high", [(40, 30)] * 2),  # the overview and one (partial) tile
        # 768x768 after the shortest-side rule: 2x2 tiles of 512 and 256
        ((1024, 1024), "high", [(512, 512), (512, 512), (256, 512), (512, 256), (256, 256)]),
        ((1024, 1024), "auto", [(512, 512), (512, 512), (256, 512), (512, 256), (256, 256)]),
        # fit 2048x1024, shortest side 768 -> 1536x768: 3x2 tiles (OpenAI counts 6 x 170 + 85 tokens)
        ((4096, 2048), "high", [(512, 256)] + [(512, 512)] * 3 + [(512, 256)] * 3),
    ],
)
def test_views_follow_the_detail_geometry(size, detail, expected):
    assert [v.size for v in image_views(Image.new("RGB", size), detail)] == expected


# -- data rules ------------------------------------------------------------------------------------


def test_validate_accepts_a_good_example_and_warns_without_images(task, tmp_path):
    assert task.validate(_example(_png(tmp_path / "a.png")), "data.jsonl:1", None) == []
    problems = task.validate(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]
        },
        "data.jsonl:2",
    )
    assert [p.severity for p in problems] == ["warning"]


def test_validate_reports_each_broken_part(task, tmp_path):
    _png(tmp_path / "a.png")
    example = prepare_example(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "a.png", "detail": "medium"}},
                        {"type": "audio", "audio": "x"},
                        {"type": "image_url", "image_url": "not an object"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "image_url", "image_url": {"url": "a.png"}}],
                },
            ]
        },
        root=tmp_path,
    )
    messages = [str(p) for p in task.validate(example, "d.jsonl:3")]
    assert all(m.startswith("d.jsonl:3: ") for m in messages)
    assert any("unknown content part 'audio' (allowed: text, image_url)" in m for m in messages)
    # the image rules are tunewright.vision's: each image named, the example excluded
    assert any(
        "image 1 (a.png): message 1 part 1: 'detail' is 'medium' (allowed: low, high, auto)" in m
        for m in messages
    )
    assert any(
        "image 2 (malformed): message 1 part 3: 'image_url' must be an object" in m
        for m in messages
    )
    assert any("image 3 (a.png): in message 2, an assistant turn" in m for m in messages)


def test_validate_decodes_every_image(task, tmp_path):
    png = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png)
    png.write_bytes(png.read_bytes()[:-40])
    Image.new("RGB", (8, 8)).save(tmp_path / "animated.png", format="GIF")  # a GIF under a PNG name
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 9, 0)).save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    example = prepare_example(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "truncated.png"}},
                        {"type": "image_url", "image_url": {"url": "animated.png"}},
                        {"type": "image_url", "image_url": {"url": "nope.png"}},
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": "?"},
                    ],
                },
                {"role": "assistant", "content": "x"},
            ]
        },
        root=tmp_path,
    )
    problems = task.validate(example, "d.jsonl:4")
    # each at the example's location (the engine leaves the example out whole), naming the image
    assert [p.message.split(":")[0] for p in problems] == [
        "image 1 (truncated.png)",
        "image 2 (animated.png)",
        "image 3 (nope.png)",
    ]  # the data URL is fine
    assert {p.severity for p in problems} == {"excluded"}
    assert "does not decode" in problems[0].message and "GIF" in problems[1].message
    assert "no such file" in problems[2].message


# -- features --------------------------------------------------------------------------------------


def test_tokenize_trains_on_assistant_tokens_only(task, processor, tmp_path):
    example = _example(_png(tmp_path / "a.png"), "red")
    example["messages"] += [
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "still red"},
    ]
    features = task.tokenize(example, processor)
    ids, labels = features["input_ids"], features["labels"]
    assert len(ids) == len(labels) == len(features["attention_mask"])
    trained = processor.tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])
    assert trained == "red<|im_end|>\nstill red<|im_end|>\n"
    # the prompt (system, user turn with its image, assistant header) is masked
    assert labels[0] == IGNORE
    full = processor.tokenizer.decode(ids)
    assert (
        full.startswith("<|im_start|>system\n") and "<image>" * 4 + "What colour is this?" in full
    )
    assert features["views"] == 1 and features["image_tokens"] == 4  # 64x64 view: 2x2 tokens
    assert features["pixels"] == 64 * 64


def test_detail_changes_views_tokens_and_pixels(task, processor, tmp_path):
    url = _png(tmp_path / "big.png", (1024, 1024))
    low = task.tokenize(_example(url, detail="low"), processor)
    high = task.tokenize(_example(url, detail="high"), processor)
    auto = task.tokenize(_example(url), processor)
    assert (low["views"], high["views"], auto["views"]) == (1, 5, 5)
    assert (low["image_tokens"], high["image_tokens"]) == (4, 20)
    assert high["pixels"] == 5 * low["pixels"]
    assert len(high["input_ids"]) - len(low["input_ids"]) == 16


def test_collate_stacks_every_view_in_example_order(task, processor, tmp_path):
    features = [
        task.tokenize(
            _example(_png(tmp_path / "b.png", (1024, 600), (0, 0, 250)), detail="high"), processor
        ),
        task.tokenize(_example(_png(tmp_path / "r.png", (30, 30), (250, 0, 0))), processor),
    ]
    batch = task.collate(features, processor)
    views = features[0]["views"] + features[1]["views"]
    assert batch["pixel_values"].shape == (views, 3, 64, 64)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"][1].sum()) == len(features[1]["input_ids"])
    # the last view is the red one, the first the blue overview (normalised: red channel low)
    assert batch["pixel_values"][-1, 0].mean() > batch["pixel_values"][-1, 2].mean()
    assert batch["pixel_values"][0, 2].mean() > batch["pixel_values"][0, 0].mean()
    per_example = split_pixel_values(batch, processor.image_token_id)
    assert [p.shape[0] for p in per_example] == [features[0]["views"], 1]


def test_an_image_changed_after_tokenizing_is_caught(task, processor, tmp_path):
    url = _png(tmp_path / "c.png", (1024, 1024))
    features = task.tokenize(_example(url, detail="auto"), processor)
    _png(tmp_path / "c.png", (100, 100))  # now a single view
    with pytest.raises(DataError, match="changed since it was tokenized"):  # 1 view now, 5 before
        task.collate([features], processor)


def test_last_answer_and_eos():
    ids = torch.tensor([5, 6, 7, 8, 9, 2, 0, 0])
    labels = torch.tensor([IGNORE, IGNORE, 7, IGNORE, 9, 2, IGNORE, IGNORE])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    prompt, answer = last_answer(ids, labels, mask)
    assert prompt.tolist() == [5, 6, 7, 8] and answer == [9, 2]
    assert strip_at_eos(answer, {2}) == [9]
    assert last_answer(ids, torch.full_like(labels, IGNORE), mask) == (None, [])


# -- metrics and training --------------------------------------------------------------------------


def test_metrics_report_loss_accuracy_exact_match_and_image_cost(task, processor, model, tmp_path):
    examples = _colour_examples(tmp_path, sizes=((40, 30), (700, 600)))
    features = [task.tokenize(e, processor) for e in examples]
    metrics = task.metrics(
        model, [task.collate(features[:4], processor), task.collate(features[4:], processor)]
    )
    assert set(metrics) == set(task.metric_directions)
    assert metrics["loss"] > 5 and 0 <= metrics["mean_token_accuracy"] <= 1
    assert metrics["exact_match"] == 0.0  # a random model answers nothing right
    # three 1-view and three 5-view examples: 4 tokens of 64x64 pixels per view
    assert metrics["image_tokens_per_example"] == pytest.approx(4 * (1 + 5) / 2)
    assert metrics["pixels_per_example"] == pytest.approx(64 * 64 * (1 + 5) / 2)


def test_lora_adapts_the_language_model_and_trains_the_projector(
    task, processor, model, tmp_path, tiny_image_text_dir
):
    from peft import PeftModel

    method = LoraMethod()
    torch.manual_seed(0)
    tuned = method.apply(model, LoraSettings(r=8, alpha=16), "image_text_to_text")
    adapted = [n for n, m in tuned.named_modules() if n.endswith(".lora_A")]
    assert adapted and all(".language_model.layers." in n for n in adapted)
    trainable = {
        n.split(".modules_to_save.")[0]
        for n, p in tuned.named_parameters()
        if p.requires_grad and "lora_" not in n
    }
    assert trainable == {"base_model.model.model.multi_modal_projector"}

    examples = _colour_examples(tmp_path)
    batch = task.collate([task.tokenize(e, processor) for e in examples], processor)
    before = task.metrics(tuned, [batch])
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=1e-2)
    tuned.train()
    for _ in range(30):
        loss = tuned(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = task.metrics(tuned, [batch])
    assert after["loss"] < before["loss"] - 5
    assert after["exact_match"] == 1.0  # each colour named from its image

    method.save(tuned, tmp_path / "adapter")
    reloaded = method.load(
        task.load_model(tiny_image_text_dir, None, None, processor),
        tmp_path / "adapter",
        None,
        "image_text_to_text",
    )
    assert isinstance(reloaded, PeftModel)
    tuned.eval()
    reloaded.eval()
    with torch.no_grad():
        expected = tuned(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(
            reloaded(**{k: v for k, v in batch.items() if k != "labels"}).logits, expected
        )
        merged = method.merge(reloaded)
        assert type(merged).__name__ == "LlavaForConditionalGeneration"
        torch.testing.assert_close(
            merged(**{k: v for k, v in batch.items() if k != "labels"}).logits,
            expected,
            rtol=1e-4,
            atol=1e-4,
        )


def test_other_methods_refuse_the_kind(model):
    from tunewright import UsageError
    from tunewright.plugins.methods.ia3 import register_methods as register_ia3

    found = {}
    register_ia3(lambda name, method: found.setdefault(name, method))
    with pytest.raises(UsageError, match="cannot tune a model of task kind 'image_text_to_text'"):
        found["ia3"].apply(model, None, "image_text_to_text")


# -- any Hugging Face image-text model -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip_llava_dir(tiny_llama_dir, tmp_path_factory):
    """Stock Llava with a CLIP vision tower (16 patches + CLS at 32x32), random, with its processor."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from tunewright.vision.models import chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<image>"]}, replace_additional_special_tokens=False
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            image_seq_length=16,
            tie_word_embeddings=True,
        )
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template(),
    )
    path = tmp_path_factory.mktemp("tiny-clip-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_a_stock_hugging_face_llava_works_the_same_way(task, tiny_clip_llava_dir, tmp_path):
    processor = task.load_tokenizer(tiny_clip_llava_dir)
    model = task.load_model(tiny_clip_llava_dir, None, None, processor)
    features = [
        task.tokenize(e, processor)
        for e in _colour_examples(tmp_path, sizes=((40, 30), (700, 500)))
    ]
    assert {f["image_tokens"] for f in features} == {16, 48}  # 1 and 3 views of 16 patches
    metrics = task.metrics(model, [task.collate(features, processor)])
    assert metrics["image_tokens_per_example"] == pytest.approx(32)
    tuned = LoraMethod().apply(model, LoraSettings(), "image_text_to_text")
    adapted = [n for n, m in tuned.named_modules() if n.endswith(".lora_A")]
    # CLIP has q_proj/k_proj/v_proj too: none of them is adapted
    assert adapted and not any("vision_tower" in n for n in adapted)


def test_the_packaged_model_finds_its_language_model_in_the_registry_it_is_given(
    tmp_path, monkeypatch
):
    """The engine hands ``mobilenet-smollm2-vlm`` the registered models; it builds no plugin manager."""
    import tunewright
    from tunewright import ConfigError
    from tunewright.models import resolve_provider
    from tunewright.plugins.vision.image_text import MobileNetSmolLM2

    class Asked(Exception):
        pass

    class LanguageModel:
        def resolve(self):
            raise Asked  # far enough: the build would start from this folder

    def no_second_manager(*args, **kwargs):
        raise AssertionError("the model provider built a plugin manager of its own")

    monkeypatch.setattr(tunewright, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(tunewright, "get_plugin_manager", no_second_manager)
    with pytest.raises(Asked):
        resolve_provider(MobileNetSmolLM2(), {"smollm2-135m-instruct": LanguageModel()})
    with pytest.raises(ConfigError, match="needs the registered model 'smollm2-135m-instruct'"):
        resolve_provider(MobileNetSmolLM2(), {})
