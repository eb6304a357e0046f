"""``python -m tunewright.edge.runtime run|bench|verify|serve BUNDLE``: the device-side command line.

The same commands as ``tunewright edge ...``, for a device where only the runtime extra is
installed. Exit codes: 0 done, 1 verify found the bundle computes something else, 2 bad bundle or
usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from tunewright import TunewrightError

from . import BundleError, bench_bundle, load_bundle, verify_bundle


def run_bundle(
    folder,
    inputs: list[str],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int | None = None,
    as_chat: bool = True,
    images: Sequence[str] = (),
    adapter: str | None = None,
    pm: Any = None,
) -> list:
    """Predict for each input (texts, image paths, or prompts; an image+text bundle shows each
    prompt ``images`` first); returns JSON-ready results. Raises :class:`BundleError` for
    ``images`` given to a bundle that takes none beside its inputs, and for an ``adapter`` the
    bundle does not carry (``None``: its base model). ``pm``: the plugin manager
    whose ``edge_runtimes`` registry opens the bundle (default: the runtime plugins alone)."""
    from .bench import images_refused, takes_images

    predictor = load_bundle(folder, pm=pm)
    extra = {}
    if images:
        if not takes_images(predictor.run):
            raise BundleError(images_refused(predictor))
        extra["images"] = list(images)
    if adapter is not None:
        for_adapter = getattr(predictor, "for_adapter", None)
        if for_adapter is None:
            raise BundleError(f"--adapter {adapter!r}: this bundle carries no adapters")
        predictor = for_adapter(adapter)
    return predictor.run(
        list(inputs),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        raw=not as_chat,
        **extra,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its own parser (the serve extra: FastAPI, uvicorn)
        from .serve.cli import PROG_ENV
        from .serve.cli import main as serve

        prog = os.environ.pop(PROG_ENV, None) or "python -m tunewright.edge.runtime serve"
        return serve(argv[1:], prog=prog)
    parser = argparse.ArgumentParser(
        prog="python -m tunewright.edge.runtime",
        description="Run, time or verify a tunewright bundle without torch.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="predict for texts, image paths or prompts")
    run.add_argument("bundle")
    run.add_argument("inputs", nargs="+")
    run.add_argument("--max-new-tokens", type=int, default=64)
    run.add_argument("--temperature", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--raw", action="store_true", help="generation: use the prompt as is, no chat format"
    )
    run.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="image+text bundles: an image shown before each prompt (repeat for several)",
    )
    run.add_argument(
        "--adapter",
        default=None,
        help="a bundle of several adapters: the one to answer with (default: the base model)",
    )
    bench = commands.add_parser("bench", help="latency p50/p95, throughput, peak memory")
    bench.add_argument("bundle")
    bench.add_argument("--tokens", type=int, default=16)
    bench.add_argument("--batch", type=int, default=1)
    bench.add_argument("--runs", type=int, default=50)
    bench.add_argument("--new-tokens", type=int, default=64)
    bench.add_argument("--threads", type=int, default=None)
    bench.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="PATH",
        help="image+text bundles: time prompts that show this image (default: one of noise)",
    )
    verify = commands.add_parser(
        "verify", help="check hashes and rerun the recorded parity examples"
    )
    verify.add_argument("bundle")
    commands.add_parser(
        "serve", help="serve bundles over HTTP (serve BUNDLE... --help says more)", add_help=False
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            out = run_bundle(
                args.bundle,
                args.inputs,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                seed=args.seed,
                as_chat=not args.raw,
                images=args.image,
                adapter=args.adapter,
            )
            print(json.dumps(out, indent=2, ensure_ascii=False))
            return 0
        if args.command == "bench":
            print(
                json.dumps(
                    bench_bundle(
                        args.bundle,
                        tokens=args.tokens,
                        batch=args.batch,
                        runs=args.runs,
                        new_tokens=args.new_tokens,
                        threads=args.threads,
                        images=args.image,
                    ),
                    indent=2,
                )
            )
            return 0
        report = verify_bundle(args.bundle)
        print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1
    except (BundleError, TunewrightError) as exc:  # a bad bundle, or a broken plugin (exit 2)
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
