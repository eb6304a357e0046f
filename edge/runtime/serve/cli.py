"""``serve`` on the command line: ``python -m tunewright.edge.runtime serve BUNDLE...`` and
``tunewright edge serve BUNDLE...`` parse the same arguments here."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

LOOPBACK_NAMES = ("localhost",)


def parser(prog: str = "tunewright edge serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve bundles over HTTP: OpenAI-compatible chat (/v1) for generators, the "
        "Open Inference Protocol v2 (/v2) for classifiers, Prometheus /metrics, /profile.",
    )
    p.add_argument(
        "bundles",
        nargs="+",
        metavar="BUNDLE",
        help="a bundle folder, or NAME=FOLDER; the model's name is the folder's name otherwise",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (default: 8000)")
    p.add_argument(
        "--api-key-file",
        type=Path,
        help="a file holding the API key clients send as 'Authorization: Bearer KEY' "
        "(or set TUNEWRIGHT_API_KEY); required to bind a non-loopback address",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="allow a non-loopback bind without an API key (anyone who reaches it may use it)",
    )
    p.add_argument(
        "--allow-remote-images",
        action="store_true",
        help="fetch http(s) image URLs (off: data URLs only)",
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (413)")
    p.add_argument("--max-queue", type=int, default=16, help="requests held at once; more get 429")
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="classifiers: gather requests arriving within this window into one batch",
    )
    p.add_argument("--max-batch", type=int, default=32, help="classifiers: items per batch")
    p.add_argument(
        "--generation-batch-window-ms",
        type=float,
        default=10.0,
        help="generators: an idle server given a request waits until no other has come for "
        "this long (at most 4 windows) and decodes the burst together (0: each request at once)",
    )
    p.add_argument(
        "--max-generation-batch",
        type=int,
        default=8,
        help="generators: requests decoded together at most",
    )
    p.add_argument(
        "--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask"
    )
    p.add_argument("--default-max-tokens", type=int, default=256, help="when a request gives none")
    p.add_argument(
        "--context", type=int, default=None, help="longest prompt in tokens (default: the bundle's)"
    )
    p.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="write served exchanges as JSONL (off by default): chat messages, or text + label",
    )
    p.add_argument(
        "--record-images", action="store_true", help="with --record: keep data-URL images too"
    )
    p.add_argument(
        "--grace", type=float, default=30.0, help="seconds SIGTERM waits for requests in flight"
    )
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per model")
    p.add_argument("--log-level", default="warning")
    return p


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        return args.api_key_file.read_text().strip() or None
    return os.environ.get("TUNEWRIGHT_API_KEY") or None


def load_models(specs: list[str], threads: int | None = None, pm: Any = None) -> dict[str, Any]:
    from .. import BundleError, load_bundle
    from .app import ServedModel
    from .profile import LiveProfile

    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, _, folder = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(folder)
        name = name or path.resolve().name
        if name in models:
            raise BundleError(f"two bundles named {name!r}; name them: NAME=FOLDER")
        predictor = load_bundle(path, threads=threads, pm=pm)
        models[name] = ServedModel(
            name, path, predictor, LiveProfile(predictor.manifest.get("data_profile"))
        )
        # a multi-adapter bundle: each adapter is a model id of its own over the one predictor
        for adapter in getattr(predictor, "adapter_names", []):
            if adapter in models:
                raise BundleError(
                    f"{path}: adapter {adapter!r} has the name of another model being served; "
                    "name the bundle NAME=FOLDER, or export the runs with other --name values"
                )
            models[adapter] = ServedModel(
                adapter,
                path,
                predictor,
                LiveProfile(predictor.manifest.get("data_profile")),
                adapter=adapter,
                base=name,
            )
    return models


def build(args: argparse.Namespace, key: str | None, pm: Any = None):
    from .app import ServeOptions, build_app
    from .engine import Batcher, Worker

    options = ServeOptions(
        api_key=key,
        allow_remote_images=args.allow_remote_images,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_queue=args.max_queue,
        batch_window=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
        max_tokens_cap=args.max_tokens_cap,
        default_max_tokens=min(args.default_max_tokens, args.max_tokens_cap),
        context=args.context,
        record_dir=args.record,
        record_images=args.record_images,
    )
    worker = Worker(
        options.max_queue,
        batch_window=args.generation_batch_window_ms / 1000,
        max_batch=args.max_generation_batch,
    )
    models = load_models(args.bundles, args.threads, pm=pm)
    for model in models.values():
        if not model.generates:
            # one batcher per model id: an adapter's requests are batched with its own only
            predict = model.predictor.predict
            if model.adapter is not None:
                predict = functools.partial(predict, adapter=model.adapter)
            model.batcher = Batcher(
                worker, predict, window=options.batch_window, max_batch=options.max_batch
            )
    return build_app(models, options, worker), models


#: the command name ``tunewright edge serve`` passes on when it hands over to ``python -m
#: tunewright.edge.runtime serve`` (plugins/edge/commands.py), for the usage lines
PROG_ENV = "TUNEWRIGHT_SERVE_PROG"


def main(
    argv: list[str] | None = None, pm: Any = None, *, prog: str = "tunewright edge serve"
) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a clean stop, 2 for bad usage or bundles."""
    from .. import BundleError

    argparser = parser(prog)
    args = argparser.parse_args(argv)
    for option, value, least in (
        ("--max-queue", args.max_queue, 1),
        ("--max-batch", args.max_batch, 1),
        ("--max-generation-batch", args.max_generation_batch, 1),
        ("--batch-window-ms", args.batch_window_ms, 0),
        ("--generation-batch-window-ms", args.generation_batch_window_ms, 0),
        ("--max-body-mb", args.max_body_mb, 0.001),
    ):
        if value < least:
            argparser.error(f"{option} {value}: at least {least}")
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as exc:
        print(
            f"error: serve needs the serve extra: pip install 'tunewright[runtime,serve]' ({exc})",
            file=sys.stderr,
        )
        return 2
    key = api_key(args)
    if not is_loopback(args.host) and not key and not args.no_auth:
        print(
            f"error: refusing to bind {args.host} without an API key: set TUNEWRIGHT_API_KEY or "
            "--api-key-file, or pass --no-auth to serve anyone who can reach it",
            file=sys.stderr,
        )
        return 2
    try:
        app, models = build(args, key, pm=pm)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot bind {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(args.grace) if args.grace else None,
        access_log=False,
    )
    server = quiet_sigterm_server(config)
    print(
        json.dumps(
            {
                "serving": f"http://{shown}:{port}",
                "models": {name: m.kind for name, m in models.items()},
                "auth": bool(key),
                "record": str(args.record) if args.record else None,
            }
        ),
        flush=True,
    )
    server.run(sockets=[sock])
    return 0


def quiet_sigterm_server(config: Any) -> Any:
    """uvicorn's server, except that SIGTERM ends with exit code 0 once the requests in flight
    are done (uvicorn re-raises the signal after its graceful shutdown)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    return Server(config)


__all__ = ["main", "parser", "load_models", "is_loopback", "build"]
