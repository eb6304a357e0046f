"""The main job, shortened: real SmolLM2, real chatterbot-corpus data, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tunewright.quickstart import chatterbot_pairs


def test_chatterbot_pairs_are_real_one_turn_conversations():
    pairs = chatterbot_pairs()
    assert len(pairs) > 2000
    assert all([m["role"] for m in p["messages"]] == ["user", "assistant"] for p in pairs)
    assert all(m["content"].strip() for p in pairs for m in p["messages"])
    assert len({p["category"] for p in pairs}) > 10


@pytest.mark.slow
def test_quickstart_tunes_smollm2_and_beats_the_baseline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "tunewright", "quickstart", "--workdir", str(tmp_path / "qs"),
                             "--max-steps", "12"], capture_output=True, text=True, env=env, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "qs" / "runs" / "chat-lora"
    results = json.loads((run / "eval.json").read_text())
    assert results["final"]["loss"] < results["baseline"]["loss"] - 0.1
    assert "baseline" in result.stderr and "tuned" in result.stderr and str(run) in result.stderr
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "report.png").exists()
    # it ends with a verified 8-bit bundle, compared with PyTorch
    manifest = json.loads((tmp_path / "qs" / "bundle" / "manifest.json").read_text())
    # int8 is the bit width the user names; the scheme it chose for this decoder is block-wise
    assert manifest["quantization"]["requested"] == "int8" and manifest["quantization"]["name"] == "int8-block"
    assert manifest["parity"]["passed"]
    assert manifest["benchmark"]["versus_torch"]["size"] <= 0.3  # 8-bit weights, the tied table once
    assert "verified:" in result.stderr and "tokens/s" in result.stderr
