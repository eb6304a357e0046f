"""``tunewright export RUN_DIR`` and ``tunewright edge run|bench|verify|serve BUNDLE``.

Added through ``register_commands`` as any plugin would. The ``edge`` commands use only
:mod:`tunewright.edge.runtime`; on a device without torch, ``python -m tunewright.edge.runtime``
offers the same three commands without loading the other plugins.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import click

from tunewright import JobFailed, UsageError, hookimpl


def _echo(message: str) -> None:
    click.echo(message, err=True)


@contextmanager
def _bundle_errors():
    from tunewright.edge.runtime import BundleError

    try:
        yield
    except BundleError as exc:
        raise UsageError(str(exc)) from None


@click.command("export")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Bundle folder to write: new, empty, or (with --overwrite) an existing bundle.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the bundle at --out (never a folder that is not one).",
)
@click.option(
    "--quantize",
    default="int8",
    show_default=True,
    help="A bit width (int8, int4: the faithful scheme for the model), a scheme (int8-dynamic, "
    "int8-static, int8-block, int4-block, fp16, none) or auto.",
)
@click.option(
    "--exporter", default="auto", show_default=True, help="A registered exporter, or auto."
)
@click.option(
    "--threshold",
    default=1.0,
    show_default=True,
    type=float,
    help="Largest allowed drop of the task metric, in points.",
)
@click.option(
    "--split",
    default="validation",
    show_default=True,
    type=click.Choice(["validation", "test"]),
    help="Held-out examples the parity gate runs on.",
)
@click.option(
    "--ort-format", is_flag=True, help="Also write the model in the ORT format for mobile runtimes."
)
@click.option(
    "--bench/--no-bench", default=True, help="Time the bundle and record it in the manifest."
)
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Several runs: the adapter names, once per run in the runs' order (default: each run "
    "folder's name).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
def export_command(
    pm,
    run_dirs: tuple[str, ...],
    out: str,
    overwrite: bool,
    quantize: str,
    exporter: str,
    threshold: float,
    split: str,
    ort_format: bool,
    bench: bool,
    names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Export the tuned model of RUN_DIR to a quantized ONNX bundle, proven against it.

    Fails with exit 1 and writes no bundle when the bundle's task metric falls more than
    --threshold points (hundredths of the metric) below the tuned model's on the run's held-out
    examples. Refuses (exit 2, nothing changed) an --out that holds anything but a bundle.

    Several runs (RUN_A RUN_B ...: LoRA runs of one base model, one causal-LM task, one rank and
    the same adapted modules) make one bundle: the base once and one adapter per run, each proven
    against its own run; a request picks the adapter by name.
    """
    if len(run_dirs) > 1 or names:
        from tunewright.edge.multi import export_runs

        if exporter != "auto":
            raise UsageError(
                "--exporter: several runs always take the genai exporter; leave it out"
            )
        multi = export_runs(
            run_dirs,
            out,
            names=list(names) if names else None,
            quantize=quantize,
            threshold=threshold,
            split=split,
            ort_format=ort_format,
            bench=bench,
            overwrite=overwrite,
            log=_echo,
            pm=pm,
        )
        adapters = multi.manifest["adapters"]
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "bundle": str(multi.bundle),
                        "quantization": multi.manifest["quantization"],
                        "adapters": {n: a["parity"] for n, a in adapters.items()},
                    },
                    indent=2,
                )
            )
        else:
            for name, entry in adapters.items():
                parity = entry["parity"]
                click.echo(
                    f"adapter {name}: {parity['metric']} {parity['bundle']:.4f} (tuned "
                    f"{parity['tuned']:.4f}, drop {parity['drop_points']:.2f} points)"
                )
            click.echo(f"bundle {multi.bundle}: {multi.manifest['quantization']['name']}")
        return
    from tunewright.edge import export_run

    [run_dir] = run_dirs
    result = export_run(
        run_dir,
        out,
        quantize=quantize,
        exporter=exporter,
        threshold=threshold,
        split=split,
        ort_format=ort_format,
        bench=bench,
        overwrite=overwrite,
        log=_echo,
        pm=pm,
    )
    manifest = result.manifest
    if as_json:
        click.echo(
            json.dumps(
                {
                    "bundle": str(result.bundle),
                    "quantization": manifest["quantization"],
                    "parity": manifest["parity"],
                    "benchmark": manifest.get("benchmark"),
                },
                indent=2,
            )
        )
    else:
        parity = manifest["parity"]
        click.echo(
            f"bundle {result.bundle}: {manifest['quantization']['name']}, "
            f"{parity['metric']} {parity['bundle']:.4f} (tuned {parity['tuned']:.4f}, "
            f"drop {parity['drop_points']:.2f} points)"
        )


@click.group("edge")
def edge_group() -> None:
    """Run, time and verify exported bundles (onnxruntime only, no torch)."""


@edge_group.command("run")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1)
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--seed", default=None, type=int)
@click.option(
    "--raw", is_flag=True, help="Generation: use the prompt as is, without the chat format."
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(),
    help="Image+text bundles: an image shown before each prompt (repeat for several).",
)
@click.option(
    "--adapter",
    default=None,
    help="A bundle of several adapters: the one to answer with (default: the base model).",
)
@click.pass_obj
def run_command(
    pm,
    bundle: str,
    inputs: tuple[str, ...],
    max_new_tokens: int,
    temperature: float,
    seed: int | None,
    raw: bool,
    images: tuple[str, ...],
    adapter: str | None,
) -> None:
    """Predict with BUNDLE for each input: texts, image paths, or prompts (with --image, an
    image+text bundle answers each prompt about the images)."""
    from tunewright.edge.runtime.__main__ import run_bundle

    if not inputs:
        raise UsageError("edge run: give at least one input (a text, an image path or a prompt)")
    with _bundle_errors():
        out = run_bundle(
            bundle,
            list(inputs),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
            as_chat=not raw,
            images=list(images),
            adapter=adapter,
            pm=pm,
        )
    click.echo(json.dumps(out, indent=2, ensure_ascii=False))


@edge_group.command("bench")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--tokens", default=16, show_default=True, help="Classifier input length.")
@click.option("--batch", default=1, show_default=True)
@click.option("--runs", default=50, show_default=True)
@click.option("--new-tokens", default=64, show_default=True, help="Tokens generated per run.")
@click.option("--threads", default=None, type=int, help="onnxruntime intra-op threads.")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(),
    help="Image+text bundles: time prompts that show this image (default: one of noise).",
)
@click.pass_obj
def bench_command(
    pm,
    bundle: str,
    tokens: int,
    batch: int,
    runs: int,
    new_tokens: int,
    threads: int | None,
    images: tuple[str, ...],
) -> None:
    """Latency p50/p95, throughput and peak memory of BUNDLE on this machine."""
    from tunewright.edge.runtime import bench_bundle

    with _bundle_errors():
        figures = bench_bundle(
            bundle,
            tokens=tokens,
            batch=batch,
            runs=runs,
            new_tokens=new_tokens,
            threads=threads,
            images=list(images),
            pm=pm,
        )
    click.echo(json.dumps(figures, indent=2))


@edge_group.command("verify")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.pass_obj
def verify_command(pm, bundle: str) -> None:
    """Check every file's sha256 and rerun the parity examples recorded in BUNDLE (exit 1 if they differ)."""
    from tunewright.edge.runtime import verify_bundle

    with _bundle_errors():
        report = verify_bundle(bundle, pm=pm)
    click.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        raise JobFailed(
            "verify: the bundle does not reproduce its recorded parity figures:\n  "
            + "\n  ".join(report["problems"])
        )


@edge_group.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def serve_command(pm, args: tuple[str, ...]) -> None:
    """Serve BUNDLE... over HTTP: OpenAI-compatible /v1 chat, Open Inference v2 classifiers,
    /metrics (serve --help lists the options; needs the serve extra)."""
    try:
        from tunewright.edge.runtime.serve.cli import PROG_ENV, main
    except ImportError as exc:
        raise UsageError(
            f"edge serve needs the serve extra: pip install 'tunewright[runtime,serve]' ({exc})"
        ) from None
    if "torch" in sys.modules and not {"-h", "--help"} & set(args):
        # the plugin manager behind this command loaded every plugin, and torch with them: over
        # 100 MB that a server of bundles never uses, on the device whose memory runs out first
        # (research/serving.md). The server runs without them, as `python -m
        # tunewright.edge.runtime serve`, in this process (same pid: signals reach it)
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ[PROG_ENV] = "tunewright edge serve"
        os.execv(sys.executable, [sys.executable, "-m", "tunewright.edge.runtime", "serve", *args])
    code = main(list(args), pm=pm)
    if code:
        raise SystemExit(code)


@hookimpl
def register_commands(cli):
    cli.add_command(export_command)
    cli.add_command(edge_group)
