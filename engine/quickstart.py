"""``tunewright quickstart``: the main job on the packaged offline defaults.

Prepares chat data from chatterbot-corpus (English prompt/reply pairs in categories),
measures SmolLM2-135M-Instruct on held-out conversations, tunes it with LoRA, shows the tuned
figures beside the baseline, then exports an 8-bit ONNX bundle, proves it against the tuned model
and shows its size and speed beside PyTorch's.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import yaml

from .errors import DataError, UsageError

#: marks a folder ``tunewright quickstart`` made: only such a folder (or a new or empty one) is
#: written to, so that a rerun replaces its own data, config, run and bundle and nothing else
QUICKSTART_MARKER = ".tunewright-quickstart"


def chatterbot_pairs() -> list[dict]:
    """Every English chatterbot-corpus prompt/reply pair as a one-turn chat example.

    A corpus conversation is a list of statements, each the reply to the one before it; its
    pairs are the adjacent statements.
    """
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or spec.origin is None:
        raise DataError(
            "quickstart: the package chatterbot-corpus is not installed (pip install --no-deps chatterbot-corpus)"
        )
    folder = Path(spec.origin).parent / "data" / "english"
    examples = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        category = (data.get("categories") or [path.stem])[0]
        for conversation in data.get("conversations") or []:
            turns = [str(t).strip() for t in conversation if str(t).strip()]
            for prompt, reply in itertools.pairwise(turns):
                examples.append(
                    {
                        "messages": [
                            {"role": "user", "content": prompt},
                            {"role": "assistant", "content": reply},
                        ],
                        "category": category,
                    }
                )
    return examples


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    seen = set()
    with path.open("w", encoding="utf-8") as handle:
        for example in chatterbot_pairs():
            key = json.dumps(example["messages"], sort_keys=True)
            if key in seen:  # the corpus repeats a few pairs across categories
                continue
            seen.add(key)
            handle.write(json.dumps({"messages": example["messages"]}, ensure_ascii=False) + "\n")
    return path


def quickstart_config(workdir: Path, max_steps: int) -> dict:
    return {
        "model": "smollm2-135m-instruct",
        "task": "chat",
        "method": "lora",
        "lora": {"r": 8, "alpha": 16},
        "data": {
            "train": str(workdir / "data" / "train.jsonl"),
            "validation": 0.1,
            "max_length": 512,
        },
        # evaluating every 20 steps draws validation loss and token accuracy in report.png
        "training": {
            "epochs": 1,
            "max_steps": max_steps,
            "batch_size": 8,
            "learning_rate": 2.0e-4,
            "logging_steps": 5,
            "save_steps": 20,
            "eval_steps": 20,
            "warmup_ratio": 0.05,
        },
        "output": str(workdir / "runs" / "chat-lora"),
        "seed": 42,
    }


def claim_workdir(workdir: Path) -> None:
    """Refuse (exit 2, nothing written) a ``--workdir`` that holds files the quickstart did not
    write, and one whose bundle folder an export would refuse, before anything trains; then mark it."""
    from tunewright.edge import check_out

    if workdir.exists() or workdir.is_symlink():
        if not workdir.is_dir() or workdir.is_symlink():
            raise UsageError(
                f"--workdir: {workdir} exists and is not a folder; choose a new folder"
            )
        if any(workdir.iterdir()) and not (workdir / QUICKSTART_MARKER).is_file():
            shown = ", ".join(sorted(p.name for p in workdir.iterdir())[:5])
            raise UsageError(
                f"--workdir: {workdir} holds files tunewright quickstart did not write ({shown}); "
                "nothing was changed; choose a new or empty folder"
            )
        check_out(workdir / "bundle", overwrite=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / QUICKSTART_MARKER).write_text(
        "made by tunewright quickstart; a rerun replaces what is here\n"
    )


def run_quickstart(
    workdir: Path, *, max_steps: int = 60, echo: Callable[[str], None] = print, pm=None
) -> dict:
    from .config import load_config
    from .manager import get_plugin_manager
    from .run import run_job

    pm = pm or get_plugin_manager()
    claim_workdir(workdir)
    data_path = write_dataset(workdir / "data")
    lines = sum(1 for _ in data_path.open(encoding="utf-8"))
    echo(f"data: {lines} prompt/reply pairs from chatterbot-corpus in {data_path}")
    raw = quickstart_config(workdir, max_steps)
    (workdir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(raw, pm.registries, source=str(workdir / "config.yaml"))
    run_job(config, pm, overwrite=True, echo=echo)
    run_dir = Path(config.output)
    results = json.loads((run_dir / "eval.json").read_text())
    echo("")
    echo(f"{'held-out metric':<22}{'baseline':>10}{'tuned':>10}")
    for key in ("loss", "perplexity", "mean_token_accuracy"):
        echo(f"{key:<22}{results['baseline'][key]:>10.4f}{results['final'][key]:>10.4f}")
    echo(f"\nrun: {run_dir}  (config.yaml, eval.json, metrics.jsonl, report.png, adapter/)\n")
    results["bundle"] = export_and_verify(
        run_dir,
        workdir / "bundle",
        pm,
        echo,
        trained_precision=results.get("train", {}).get("precision"),
    )
    return results


def export_and_verify(
    run_dir: Path,
    out: Path,
    pm,
    echo: Callable[[str], None],
    *,
    trained_precision: str | None = None,
) -> dict:
    """Export the tuned model as an 8-bit bundle, verify it, and compare it with PyTorch.

    The parity line's ``tuned`` figure is the export's: the tuned model merged and in fp32, as it
    is exported, on the held-out examples. It differs a little from the table's, which is the
    run's own final evaluation in its training precision (bf16 frozen weights where the CPU
    multiplies bf16 fast); the line says so."""
    from tunewright.edge import export_run
    from tunewright.edge.runtime import verify_bundle

    # int8 names a bit width: for this decoder it means block-wise 8-bit weights (int8-block;
    # per-channel dynamic int8 damages it: activations into down_proj have large outliers).
    result = export_run(
        run_dir, out, quantize="int8", pm=pm, log=echo, overwrite=True
    )  # only ever a bundle
    check = verify_bundle(out)
    if not check["ok"]:
        from .errors import JobFailed

        raise JobFailed(f"{out}: the bundle did not verify: {'; '.join(check['problems'])}")
    bench = result.manifest["benchmark"]
    torch_figures = bench["torch_fp32"]
    ratios = bench["versus_torch"]
    parity = result.manifest["parity"]
    echo("")
    echo(f"{'':<24}{'PyTorch fp32':>14}{'bundle int8':>14}{'ratio':>8}")
    echo(
        f"{'size (MiB)':<24}{torch_figures['size_mb']:>14.1f}{bench['size_mb']:>14.1f}{ratios['size']:>8.2f}"
    )
    echo(
        f"{'generation (tokens/s)':<24}{torch_figures['tokens_per_second']:>14.1f}"
        f"{bench['tokens_per_second']:>14.1f}{ratios['speed']:>8.2f}"
    )
    echo(
        f"parity on held-out data: {parity['metric']} tuned {parity['tuned']:.4f}, bundle {parity['bundle']:.4f} "
        f"(drop {parity['drop_points']:.2f} points, allowed {parity['threshold_points']:.2f}); "
        + ", ".join(f"{k} {v:.4g}" for k, v in parity["bundle_vs_tuned"].items())
    )
    echo(parity_note(parity, trained_precision))
    echo(f"verified: {check['files']} files, recorded examples rerun")
    echo(f"bundle: {out}  (run it with: tunewright edge run {out} 'Hello!')")
    return {
        "path": str(out),
        "size_mb": bench["size_mb"],
        "speed_ratio": ratios["speed"],
        "size_ratio": ratios["size"],
        "parity": parity,
    }


def parity_note(parity: dict, trained_precision: str | None) -> str:
    """Why the parity line's ``tuned`` figure is not the table's (when it is not)."""
    examples = parity.get("bundle_vs_tuned", {}).get("examples")
    on = f"the same {int(examples)} held-out examples" if examples else "the same held-out examples"
    note = f"  (tuned here: the tuned model merged into fp32 weights, as exported, on {on}"
    if trained_precision and trained_precision != "fp32":
        note += (
            f"; the table's tuned column is the run's own evaluation in its training precision, "
            f"{trained_precision} frozen weights, so the two differ a little)"
        )
    else:
        note += ")"
    return note
