"""A whole image-to-text job on the tiny composed model, then its export, run without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from tunewright import get_plugin_manager, run_job
from tunewright.config import load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 190, 30), "blue": (30, 30, 220)}


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def colour_data(folder: Path, per_colour: int = 8) -> Path:
    """Chat JSONL: solid colour images of varied shade and size, "What colour is this?" -> name."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (r, g, b) in COLOURS.items():
        for i in range(per_colour):
            shade = 1.0 - 0.01 * i
            path = folder / f"{name}-{i}.png"
            Image.new(
                "RGB", (24 + 9 * i, 40 - 2 * i), (int(r * shade), int(g * shade), int(b * shade))
            ).save(path)
            rows.append(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": path.name}},
                                {"type": "text", "text": "What colour is this?"},
                            ],
                        },
                        {"role": "assistant", "content": name},
                    ]
                }
            )
    data = folder / "colours.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def read_examples(data: Path) -> list[dict]:
    """The examples of a data file as the engine hands them to a task: with their image folder."""
    from tunewright.vision import prepare_example

    return [
        prepare_example(json.loads(line), root=data.parent)
        for line in data.read_text().splitlines()
    ]


def absolute(example: dict) -> list[dict]:
    """The prompt of an example as a user hands it to a bundle: image paths of their own."""
    root = Path(example["image_source"]["root"])
    user = dict(example["messages"][0])
    user["content"] = [
        dict(part, image_url={**part["image_url"], "url": str(root / part["image_url"]["url"])})
        if part["type"] == "image_url"
        else part
        for part in user["content"]
    ]
    return [user]


def job(model_dir: Path, data: Path, out: Path, **training) -> dict:
    return {
        "model": str(model_dir),
        "task": "image-to-text",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "validation": 0.25, "max_length": 128},
        "training": {
            "max_steps": 40,
            "batch_size": 6,
            "learning_rate": 5e-3,
            "lr_scheduler": "constant",
            "logging_steps": 5,
            "precision": "bf16",
            **training,
        },
        "output": str(out),
        "seed": 7,
    }


def test_job_learns_to_read_images_and_exports_a_bundle_that_runs_without_torch(
    tiny_image_text_dir, tmp_path
):
    pm = get_plugin_manager()
    out = tmp_path / "run"
    lines: list[str] = []
    result = run_job(
        load_config(job(tiny_image_text_dir, colour_data(tmp_path / "data"), out), pm.registries),
        pm,
        echo=lines.append,
    )
    assert result.global_step == 40
    results = json.loads((out / "eval.json").read_text())
    baseline, final = results["baseline"], results["final"]
    assert results["train"]["precision"] == "bf16"
    assert final["loss"] < baseline["loss"] - 5
    assert (baseline["exact_match"], final["exact_match"]) == (0.0, 1.0)
    assert final["image_tokens_per_example"] == 4 and final["pixels_per_example"] == 64 * 64
    assert (out / "adapter" / "adapter_config.json").is_file()
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (
        saved["modules_to_save"] == ["model.multi_modal_projector"] and saved["task_type"] is None
    )

    from tunewright.edge import export_run

    bundle = tmp_path / "bundle"
    exported = export_run(out, bundle, quantize="none", pm=pm, log=lines.append, bench=False)
    parity = exported.manifest["parity"]
    assert parity["passed"] and parity["metric"] == "mean_token_accuracy"
    assert parity["bundle_vs_tuned"]["top1_agreement"] == 1.0
    assert parity["bundle_vs_tuned"]["kl_per_token"] < 1e-4
    assert parity["bundle_metrics"]["exact_match"] == parity["tuned_metrics"]["exact_match"] == 1.0
    assert sorted(p.name for p in bundle.iterdir()) == [
        "embeddings.npy",
        "manifest.json",
        "model.onnx",
        "model.onnx.data",
        "parity.npz",
        "tokenizer.json",
        "vision.onnx",
    ]

    # verify reruns the recorded examples, images included, and finds what the export recorded
    from tunewright.edge.runtime import verify_bundle

    report = verify_bundle(bundle)
    assert report["ok"], report
    assert report["rerun"]["top1_agreement"] == 1.0

    # the bundle cuts, resizes and tokenizes a user's prompt exactly as training did
    from tunewright.edge.runtime import load_bundle

    predictor = load_bundle(bundle)
    task = pm.registries.get("tasks", "image-to-text")
    processor = task.load_tokenizer(out / "tokenizer")
    held_out = [
        json.loads(line) for line in (out / "data" / "validation.jsonl").read_text().splitlines()
    ]
    for example in held_out[:2]:
        batch = task.collate([task.tokenize(example, processor)], processor)
        prompt, pixels = task.prompt_of(
            batch, SimpleNamespace(config=processor)
        )  # its image_token_id
        ids, ours = predictor.encode(absolute(example))
        assert ids == prompt.tolist()
        assert abs(ours - pixels.numpy()).max() < 1e-5

    # the bundle on its own: no torch, no transformers; it names each held-out colour
    prompts = [absolute(example) for example in held_out]
    expected = [example["messages"][-1]["content"] for example in held_out]
    script = (
        "import json, sys\n"
        "from tunewright.edge.runtime import load_bundle\n"
        f"model = load_bundle({str(bundle)!r})\n"
        f"prompts = json.loads({json.dumps(json.dumps(prompts))})\n"
        "answers = [model.generate(p, max_new_tokens=4) for p in prompts]\n"
        "print(json.dumps({'answers': answers,\n"
        "                  'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["heavy"] == []
    assert report["answers"] == expected


def test_export_refuses_a_bundle_that_falls_below_the_gate(tiny_image_text_dir, tmp_path):
    from tunewright import JobFailed
    from tunewright.edge import export_bundle
    from tunewright.plugins.vision.image_text import ImageTextTask

    task = ImageTextTask()
    processor = task.load_tokenizer(tiny_image_text_dir)
    model = task.load_model(tiny_image_text_dir, None, None, processor)
    data = colour_data(tmp_path / "data", per_colour=1)
    examples = read_examples(data)
    bundle = tmp_path / "bundle"
    # a negative threshold: even a perfect bundle "falls" below it, so the gate must refuse
    with pytest.raises(JobFailed, match="parity gate failed"):
        export_bundle(
            model,
            processor,
            task,
            examples,
            bundle,
            exporter="image-text",
            quantize="none",
            threshold=-1.0,
            bench=False,
            log=lambda line: None,
        )
    assert not bundle.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
