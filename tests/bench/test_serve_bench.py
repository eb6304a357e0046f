"""bench/serve_bench.py in its quick mode on a tiny onnxruntime-genai chat bundle (llama.cpp is
not installed in CI): the server is started and measured through HTTP, the figures and the
target verdicts are reported, concurrent streams are batched and the soak sees no 5xx."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "serve_bench.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def genai_chat_bundle(tiny_llama_dir, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright import get_plugin_manager
    from tunewright.edge import export_bundle

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    examples = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"It is {2 * i}."},
            ]
        }
        for i in range(8)
    ]
    out = tmp_path_factory.mktemp("serve-bench") / "chat"
    export_bundle(
        model,
        tokenizer,
        "chat",
        examples,
        out,
        exporter="genai",
        quantize="int8",
        info={"base_model": "tiny-llama", "method": "none", "task": "chat"},
        pm=get_plugin_manager(),
        fidelity_examples=3,
        new_tokens=8,
        log=lambda message: None,
    )
    return out


def test_quick_serve_bench_measures_the_server_and_reports_each_target(genai_chat_bundle, tmp_path):
    spec = importlib.util.spec_from_file_location("serve_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serve.json"
    code = bench.main(["--chat", str(genai_chat_bundle), "--quick", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    ours = report["tunewright"]
    assert ours["tokens_per_answer"] == 8  # ignore_eos: every answer is --tokens long
    assert ours["tokens_per_s"] > 0 and report["in_process_tokens_per_s"] > 0
    assert ours["aggregate_4_tokens_per_s"] > 0 and ours["aggregate_8_tokens_per_s"] > 0
    assert ours["peak_rss_concurrent_mb"] >= ours["peak_rss_mb"] > 0
    # the 4 and 8 concurrent streams (12 requests) went through the batching worker
    assert ours["batched_generations"] is not None
    assert report["soak"]["server_errors"] == 0 and report["soak"]["requests"] == 120
    assert report["exit_code"] == 0  # SIGTERM: a clean stop
    targets = report["targets"]
    assert targets["soak_no_5xx"]["met"] is True
    assert targets["http_versus_in_process"]["value"] > 0
    assert "versus_peer_tokens_per_s" not in targets  # no peer given: no peer verdicts
