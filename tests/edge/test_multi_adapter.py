"""``tunewright export RUN_A RUN_B --out BUNDLE``: two LoRA runs of one tiny Llama as one base
and two adapters, proven per adapter, picked per call in Python and per request over HTTP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

TUNEWRIGHT = [sys.executable, "-m", "tunewright"]
#: each run learns its own reply, so the two adapters answer differently
REPLIES = {"alpha": "apple apple", "beta": "banana banana banana"}


def _write_run_config(folder, base, name: str, r: int = 4, method: str = "lora") -> None:
    with open(folder / f"train_{name}.jsonl", "w") as handle:
        for i in range(40):
            messages = [
                {"role": "user", "content": f"Say {i}"},
                {"role": "assistant", "content": f"{REPLIES.get(name, 'x')} {i}"},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")
    (folder / f"{name}.yaml").write_text(f"""model: {base}
task: chat
method: {method}
{method}: {{r: {r}, alpha: {2 * r}}}
data:
  train: train_{name}.jsonl
  validation: 0.25
training: {{epochs: 1, max_steps: 6, batch_size: 8, learning_rate: 5.0e-2}}
output: runs/{name}
""")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_llama_dir):
    """Two chat runs of the tiny Llama (LoRA r 4 on every block linear), about 12 s each."""
    work = tmp_path_factory.mktemp("multi")
    trainers = []
    for name in REPLIES:  # side by side: most of a tiny run is starting Python and loading
        _write_run_config(work, tiny_llama_dir, name)
        trainers.append(
            subprocess.Popen(
                [*TUNEWRIGHT, "train", f"{name}.yaml"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for trainer in trainers:
        _, err = trainer.communicate(timeout=600)
        assert trainer.returncode == 0, err[-3000:]
    return work


@pytest.fixture(scope="module")
def multi_bundle(two_runs):
    done = subprocess.run(
        [*TUNEWRIGHT, "export", "runs/alpha", "runs/beta", "--out", "bundle", "--no-bench"],
        cwd=two_runs,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return two_runs / "bundle"


@pytest.mark.slow
def test_manifest_lists_each_adapter_with_its_own_parity(multi_bundle, two_runs):
    manifest = json.loads((multi_bundle / "manifest.json").read_text())
    assert set(manifest["adapters"]) == set(REPLIES)
    assert manifest["task_kind"] == "causal_lm" and manifest["method"] == "lora"
    assert manifest["quantization"]["name"] == "int8-block"
    # the LoRA MatMuls stay in float: their weights are the graph inputs the adapters feed
    assert manifest["quantization"]["float_matmuls_with_overridable_weights"] == 28
    assert manifest["model"]["lora_inputs"] == 28
    # stored in float16 (cast to float32 before their MatMuls): each adapter file holds little
    # more than 2 bytes per LoRA weight
    assert manifest["model"]["lora_dtype"] == "float16"
    from safetensors.numpy import load_file

    weights = load_file(str(two_runs / "runs" / "alpha" / "adapter" / "adapter_model.safetensors"))
    count = sum(w.size for w in weights.values())
    size = (multi_bundle / "adapters" / "alpha.onnx_adapter").stat().st_size
    assert 2 * count <= size < 2 * count + 16_384
    for name, entry in manifest["adapters"].items():
        assert entry["file"] == f"adapters/{name}.onnx_adapter"
        assert entry["file"] in manifest["files"]
        assert entry["run"]["dir"] == str((two_runs / "runs" / name).resolve())
        assert entry["run"]["lora"] == {
            "r": 4,
            "alpha": 8.0,
            "target_modules": sorted(
                ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            ),
        }
        parity = entry["parity"]
        assert parity["passed"] and parity["drop_points"] <= 1.0
        assert parity["bundle_vs_tuned"]["top1_agreement"] >= 0.95
        assert parity["examples_file"] in manifest["files"]
    worst = manifest["parity"]["adapter"]
    assert manifest["parity"]["drop_points"] == manifest["adapters"][worst]["parity"]["drop_points"]
    # one base, and two adapter files each a small fraction of it
    base = (multi_bundle / "model.onnx").stat().st_size
    for name in REPLIES:
        assert (multi_bundle / "adapters" / f"{name}.onnx_adapter").stat().st_size < base / 10
    verify = subprocess.run(
        [*TUNEWRIGHT, "edge", "verify", str(multi_bundle)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert set(json.loads(verify.stdout)["adapters"]) == set(REPLIES)


@pytest.mark.slow
def test_each_adapter_answers_as_its_own_peft_run(multi_bundle, two_runs):
    import torch

    from tunewright import load_run
    from tunewright.edge.runtime import BundleError, load_bundle

    bundle = load_bundle(multi_bundle)
    assert bundle.adapter_names == sorted(REPLIES)
    ids = bundle.prompt_ids([{"role": "user", "content": "Say 7"}])
    ours = {
        name: list(bundle.generate_ids(ids, max_new_tokens=10, stop_at_eos=False, adapter=name))
        for name in [*REPLIES, None]
    }
    for name in REPLIES:
        peft = load_run(two_runs / "runs" / name, merged=False).model.eval()
        prompt = torch.tensor([ids])
        with torch.no_grad():
            tokens = peft.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=10,
                min_new_tokens=10,
                do_sample=False,
            )[0, len(ids) :].tolist()
            assert ours[name] == tokens, name
            if name == "alpha":  # the base: the same PEFT model with its adapter off
                with peft.disable_adapter():
                    base = peft.generate(
                        input_ids=prompt,
                        attention_mask=torch.ones_like(prompt),
                        max_new_tokens=10,
                        min_new_tokens=10,
                        do_sample=False,
                    )[0, len(ids) :].tolist()
                assert ours[None] == base
    # the three are different models: their logits differ well beyond quantization noise
    logits = {
        name: bundle.logits({"input_ids": np.asarray([ids])}, adapter=name)
        for name in [*REPLIES, None]
    }
    assert np.abs(logits["alpha"] - logits["beta"]).max() > 0.1
    assert np.abs(logits["alpha"] - logits[None]).max() > 0.1
    # the Python entry points, and a clear error for an adapter the bundle does not carry
    assert bundle.generate("Say 7", adapter="beta", max_new_tokens=10, stop_at_eos=False) == (
        bundle.codec.decode(ours["beta"])
    )
    assert bundle.for_adapter("alpha").generate_ids(ids, max_new_tokens=10, stop_at_eos=False)
    with pytest.raises(
        BundleError, match="unknown adapter 'gamma'; this bundle carries alpha, beta"
    ):
        bundle.generate("Say 7", adapter="gamma")
    # generations of different adapters stepped in turn (as the server's decode thread does) give
    # what each gives alone: each onnxruntime-genai generator keeps its own active adapter
    running = {
        name: bundle.generate_ids(ids, max_new_tokens=10, stop_at_eos=False, adapter=name)
        for name in [*REPLIES, None]
    }
    interleaved: dict = {name: [] for name in running}
    for _ in range(10):
        for name, tokens in running.items():
            interleaved[name].append(next(tokens))
    assert interleaved == ours
    # the numpy loop over the same file agrees with onnxruntime-genai on every adapter
    numpy_loop = bundle.numpy_generator
    for name in [*REPLIES, None]:
        tokens = list(
            numpy_loop.generate_ids(ids, max_new_tokens=10, stop_at_eos=False, adapter=name)
        )
        assert tokens == ours[name]


@pytest.mark.slow  # the two runs and their bundle
def test_a_batch_of_prompts_decodes_as_each_prompt_alone(multi_bundle):
    """onnxruntime-genai's batched generator (what the server runs for concurrent requests):
    prompts of different lengths, right-padded, each with its own max_new_tokens, give the tokens
    each gives alone, with an adapter and without."""
    from tunewright.edge.runtime import load_bundle

    bundle = load_bundle(multi_bundle)
    prompts = [
        bundle.prompt_ids([{"role": "user", "content": text}])
        for text in ("Say 7", "Say 1234567 and then some more words", "Say")
    ]
    assert len({len(p) for p in prompts}) == 3
    limits = [9, 4, 6]
    for adapter in ("beta", None):
        for stop_at_eos in (False, True):
            alone = [
                list(
                    bundle.generate_ids(
                        p, max_new_tokens=n, stop_at_eos=stop_at_eos, adapter=adapter
                    )
                )
                for p, n in zip(prompts, limits)
            ]
            rows: list[list[int]] = [[] for _ in prompts]
            ended = [False] * len(prompts)
            for step in bundle.generate_ids_batch(
                prompts, max_new_tokens=limits, stop_at_eos=stop_at_eos, adapter=adapter
            ):
                for row, token in enumerate(step):
                    if token is None:
                        ended[row] = True
                    else:
                        assert not ended[row]  # an ended row stays ended
                        rows[row].append(token)
            assert rows == alone, (adapter, stop_at_eos)
    # a prompt that ends with the pad token would read as padding: refused, it runs alone
    padded = [*prompts[0], bundle.pad_token_id]
    assert not bundle.can_batch(padded)
    with pytest.raises(ValueError, match="ends with the pad token"):
        bundle.generate_ids_batch([prompts[0], padded], max_new_tokens=[2, 2])


@pytest.mark.slow
def test_one_adapter_failing_the_gate_writes_no_bundle(multi_bundle, two_runs):
    # a negative threshold asks each adapter to beat its run: none can, so the export fails
    done = subprocess.run(
        [
            *[*TUNEWRIGHT, "export", "runs/alpha", "runs/beta", "--out", "gated"],
            *["--threshold", "-1", "--no-bench", "--name", "a", "--name", "b"],
        ],
        cwd=two_runs,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "parity gate failed for adapter(s) a, b" in done.stderr
    assert not (two_runs / "gated").exists()
    assert not [p for p in two_runs.iterdir() if p.name.startswith(".tmp")]
    # edge run picks an adapter too
    run = subprocess.run(
        [*TUNEWRIGHT, "edge", "run", str(multi_bundle), "Say 7", "--adapter", "beta"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    from tunewright.edge.runtime import load_bundle

    assert run.returncode == 0, run.stderr
    expected = load_bundle(multi_bundle).generate(
        [{"role": "user", "content": "Say 7"}], adapter="beta", max_new_tokens=64
    )
    assert json.loads(run.stdout)[0]["reply"] == expected


@pytest.mark.slow
def test_served_adapters_are_models_of_their_own(multi_bundle):
    import httpx
    from openai import NotFoundError, OpenAI

    from tunewright.edge.runtime import load_bundle

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            *[sys.executable, "-m", "tunewright.edge.runtime", "serve"],
            f"base={multi_bundle}",
            *["--port", "0", "--threads", "1"],
            # a long window, so that the three concurrent requests below surely meet
            *["--generation-batch-window-ms", "300"],
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        url = json.loads(line)["serving"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        listed = {m.id: m for m in client.models.list()}
        assert set(listed) == {"base", "alpha", "beta"}
        assert listed["alpha"].model_extra["adapter"] == "alpha"
        assert listed["alpha"].model_extra["base"] == "base"
        bundle = load_bundle(multi_bundle)
        messages = [{"role": "user", "content": "Say 7"}]
        for model, adapter in (("alpha", "alpha"), ("beta", "beta"), ("base", None)):
            expected = bundle.generate(
                messages, adapter=adapter, max_new_tokens=8, stop_at_eos=False
            )
            reply = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=8,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            assert reply.choices[0].message.content == expected, model
            streamed = client.chat.completions.create(
                model=model,
                messages=messages,
                max_tokens=8,
                temperature=0,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
                expected
            )
        with pytest.raises(NotFoundError) as missing:
            client.chat.completions.create(
                model="gamma", messages=messages, max_tokens=4, temperature=0
            )
        assert "unknown model 'gamma'; known: alpha, base, beta" in str(missing.value)
        metrics = httpx.get(url + "/metrics", timeout=10).text
        for model in ("alpha", "beta", "base"):
            assert f'tunewright_serve_generated_tokens_total{{model="{model}"}} 16.0' in metrics
        # requests for one adapter that arrive together are decoded as one batch, each answer
        # what it is alone
        prompts = [f"Say {i}" for i in (3, 45, 678)]
        expected = {
            p: bundle.generate(
                [{"role": "user", "content": p}],
                adapter="beta",
                max_new_tokens=6,
                stop_at_eos=False,
            )
            for p in prompts
        }
        answers: dict[str, str] = {}

        def ask(prompt: str) -> None:
            reply = client.chat.completions.create(
                model="beta",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=6,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            answers[prompt] = reply.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert answers == expected
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert 'tunewright_serve_batched_generations_total{model="beta"} 3.0' in metrics
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------
# runs that cannot share a bundle: exit 2 before any model loads, nothing at --out
# ---------------------------------------------------------------------------------------------


def _fake_run(folder, name: str, *, model="base-model", task="chat", method="lora", **adapter):
    """A run folder as far as the pre-flight checks read it: config.yaml and the adapter's config
    (they refuse before any model loads, so no weights are needed)."""
    run = folder / name
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {model}\ntask: {task}\nmethod: {method}\n")
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "use_dora": False,
        **adapter,
    }
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize(
    ("second", "says"),
    [
        ({"model": "another-model"}, "the base model is 'another-model'"),
        ({"r": 8}, "lora.r is 8, but"),
        ({"target_modules": ["q_proj"]}, "the adapted modules are"),
        ({"method": "dora", "use_dora": True}, "method 'dora' cannot share a bundle"),
        ({"task": "classification"}, "task 'classification' (sequence_classification)"),
        ({"modules_to_save": ["lm_head"]}, "trained modules in full (lm_head)"),
    ],
    ids=["base", "rank", "modules", "method", "task", "full-modules"],
)
def test_runs_that_cannot_share_a_bundle_exit_2(tmp_path, capsys, second, says):
    from tunewright.cli import main

    first = _fake_run(tmp_path, "one")
    other = _fake_run(tmp_path, "two", **second)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(first), str(other), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert says in err and str(other) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_adapter_names_must_be_unique(tmp_path, capsys):
    from tunewright.cli import main

    a = _fake_run(tmp_path / "x", "same")
    b = _fake_run(tmp_path / "y", "same")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(a), str(b), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "adapter name 'same' is taken by" in err and "--name" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(a), str(b), "--name", "one", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--name: 1 names for 2 runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    shutil.rmtree(tmp_path / "x")


def test_runs_with_other_tokenizers_cannot_share_a_bundle(tmp_path, capsys):
    from tunewright.cli import main

    first, other = _fake_run(tmp_path, "one"), _fake_run(tmp_path, "two")
    for run, added in ((first, []), (other, ["<tool>"])):
        (run / "tokenizer").mkdir()
        (run / "tokenizer" / "tokenizer.json").write_text(json.dumps({"added_tokens": added}))
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(first), str(other), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "its tokenizer (tokenizer/tokenizer.json) differs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
