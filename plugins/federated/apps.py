"""Flower's ClientApp and ServerApp: thin glue between Flower messages and :mod:`site` /
:mod:`federation`.

``client_app`` and ``server_app`` at the bottom are what a deployed federation runs (the app that
``tunewright federate server`` submits names them); simulation builds its own with
:func:`make_client_app` and a closure over the prepared run.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

# no public name for the error codes of an error reply; this one is what Flower itself sets when a
# ClientApp raises (flwr.app.Error takes a bare int)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECURE_CONFIGS
from flwr.serverapp import Grid, ServerApp

from .federation import CLIENT_CLIPPING, REFUSED_MARK
from .messages import in_dtypes_of, to_arrays, to_state
from .secure import CLIPPING_KEY, MAX_WEIGHT_KEY, NAMES_KEY, update_problems
from .server_job import active_grid, read_site_names, run_without_data
from .strategies import WEIGHT_KEY

#: a process starts once and may serve many messages (simulation actors): when it started
_PROCESS_STARTED = time.time()


def process_age() -> float:
    """Seconds since this process started (the OS's clock where readable, else this module's import)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time() - _PROCESS_STARTED


def clipping_when_asked(msg: Message, context: Context, call_next: Callable) -> Message:
    """Flower's ``fixedclipping_mod`` for the rounds whose config asks for it (the server runs
    Flower's client-side DP wrapper, which also sends the clipping norm); a pass-through
    otherwise, so one ClientApp serves both."""
    configs = msg.content.config_records
    if (
        msg.metadata.message_type.startswith("train")
        and "config" in configs
        and configs["config"].get(CLIENT_CLIPPING)
    ):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


class _SiteFailed(Exception):
    """The inner app's error reply, carried out of Flower's SecAgg+ mod with its reason."""


def secure_when_asked(msg: Message, context: Context, call_next: Callable) -> Message:
    """Flower's ``secaggplus_mod`` for the train messages of a secure round (they carry its
    stage config, see :mod:`secure`); a pass-through otherwise. A failure at any stage becomes an
    error reply that names the site, as :func:`named_failures` does."""
    if not (
        msg.metadata.message_type.startswith("train")
        and SECURE_CONFIGS in msg.content.config_records
    ):
        return call_next(msg, context)

    def inner(msg: Message, context: Context) -> Message:
        reply = call_next(msg, context)
        if reply.has_error():
            raise _SiteFailed(reply.error.reason)
        return reply

    try:
        return secaggplus_mod(msg, context, inner)
    except Exception as exc:  # every failure becomes the reply; Flower's own would lose the name
        reason = (
            str(exc)
            if isinstance(exc, _SiteFailed)
            else f"[site {site_name(context)}] secure aggregation: {type(exc).__name__}: {exc}"
        )
        return Message(
            Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
        )


def site_name(context: Context) -> str:
    node = context.node_config
    return (
        str(node["name"]) if "name" in node else f"site-{node.get('partition-id', context.node_id)}"
    )


def named_failures(
    handler: Callable[[Message, Context], Message],
) -> Callable[[Message, Context], Message]:
    """Turn an exception into an error reply whose reason starts with ``[site NAME]``: an error
    reply carries no content, and the server's records should say which site failed."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (
            Exception
        ) as exc:  # every failure becomes the reply; Flower's own would lose the name
            kind = getattr(
                exc, "kind", type(exc).__name__
            )  # an error raised in a deployed site's process
            if kind in ("ConfigError", "DataError", "UsageError"):
                # the site cannot train for this server (config or data): left out from now on
                reason = f"[site {site_name(context)}{REFUSED_MARK}{exc}"
            else:
                reason = f"[site {site_name(context)}] {kind}: {exc}"
            return Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg
            )

    return wrapped


def make_client_app(get_site: Callable[[Context], Any]) -> ClientApp:
    """A ClientApp whose train and evaluate handlers run ``get_site(context)``'s site."""
    app = ClientApp(mods=[secure_when_asked, clipping_when_asked])

    @app.train()
    @named_failures
    def train(msg: Message, context: Context) -> Message:
        age = process_age()
        started = time.monotonic()
        site = get_site(context)
        if LEGACY_PARAMETERS in msg.content.array_records:
            return _train_secure(msg, site, age, started)
        config = dict(msg.content["config"])
        received = to_state(msg.content["arrays"])
        state, examples, metrics = site.fit(dict(received), config)
        # in the dtypes they came in (federated.transfer_dtype), the keys in the order they were
        # sent (Flower's clipping mod compares the order)
        state = in_dtypes_of(state, received)
        arrays = to_arrays(
            {k: state[k] for k in received if k in state}
            | {k: v for k, v in state.items() if k not in received}
        )
        metrics.update(
            {
                WEIGHT_KEY: examples,
                "process_age_seconds": age,
                "load_seconds": site.load_seconds,
                "site_seconds": getattr(site, "site_seconds", time.monotonic() - started),
            }
        )
        return Message(
            RecordDict(
                {
                    "arrays": arrays,
                    "metrics": MetricRecord(metrics),
                    "site": ConfigRecord({"name": site.name}),
                }
            ),
            reply_to=msg,
        )

    @app.evaluate()
    @named_failures
    def evaluate(msg: Message, context: Context) -> Message:
        site = get_site(context)
        config = dict(msg.content["config"]) if "config" in msg.content.config_records else {}
        examples, metrics = site.evaluate(to_state(msg.content["arrays"]), config)
        return Message(
            RecordDict(
                {
                    "metrics": MetricRecord({WEIGHT_KEY: examples, **metrics}),
                    "site": ConfigRecord({"name": site.name}),
                }
            ),
            reply_to=msg,
        )

    return app


#: where a legacy FitIns (what Flower's SecAgg+ mod passes on) keeps its parameters
LEGACY_PARAMETERS = "fitins.parameters"


def _train_secure(msg: Message, site: Any, age: float, started: float) -> Message:
    """Train from a legacy ``FitIns`` and answer a legacy ``FitRes``, for Flower's SecAgg+ mod to
    mask. The site checks its own update first: once masked, nobody can (see :mod:`secure`)."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    names = json.loads(str(config[NAMES_KEY]))
    values = parameters_to_ndarrays(fitins.parameters)
    if len(values) != len(names):
        raise ValueError(f"the server sent {len(values)} arrays for {len(names)} names")
    received = dict(zip(names, values))
    state, examples, metrics = site.fit(dict(received), config)
    problems = update_problems(
        received,
        state,
        examples,
        max_weight=float(config[MAX_WEIGHT_KEY]),
        clipping_range=float(config[CLIPPING_KEY]),
    )
    if problems:
        raise ValueError("update not sent: " + "; ".join(problems))
    metrics.update(
        {
            "process_age_seconds": age,
            "load_seconds": site.load_seconds,
            "site_seconds": getattr(site, "site_seconds", time.monotonic() - started),
        }
    )
    reply = compat.fitres_to_recorddict(
        FitRes(
            status=Status(code=Code.OK, message="trained"),
            parameters=ndarrays_to_parameters([state[k] for k in names]),
            num_examples=int(examples),
            metrics=metrics,
        ),
        keep_input=True,
    )
    reply["site"] = ConfigRecord({"name": site.name})
    return Message(reply, reply_to=msg)


# -- deployment -------------------------------------------------------------------------------


def _deployed_site(context: Context) -> Any:
    """The site of this SuperNode: its ``tunewright federate site`` process, reached through the
    socket named in the SuperNode's ``--node-config`` (see :mod:`worker`)."""
    from .worker import RemoteSite

    node = context.node_config
    return RemoteSite(str(node["socket"]), str(node["name"]))


client_app = make_client_app(_deployed_site)
server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    """Run the server's job (``tunewright federate server``): the federated runner uses ``grid``.
    Whatever happens is written to the result file the command waits for."""
    from tunewright import TunewrightError, get_plugin_manager, run_job

    from .configs import federated_config

    run_config = context.run_config
    result_path = Path(str(run_config["result"]))
    outcome: dict[str, Any] = {"status": "failed"}
    progress = Path(str(run_config["progress"])) if "progress" in run_config else None

    def echo(message: str) -> None:
        """What the job says, for ``tunewright federate server`` to show (this process's output
        goes to Flower's log)."""
        print(message, flush=True)
        if progress is not None:
            with progress.open("a", encoding="utf-8") as handle:
                handle.write(message.replace("\n", " ") + "\n")

    try:
        pm = get_plugin_manager()
        config = federated_config(str(run_config["config"]), pm, server=True)
        overwrite = bool(run_config.get("overwrite", False))
        names = read_site_names(str(run_config["sites"])) if "sites" in run_config else {}
        with active_grid(grid, names):
            if config.section("federated").server.own_data:
                result = run_job(config, pm, overwrite=overwrite, echo=echo)
            else:
                result = run_without_data(config, pm, overwrite=overwrite, echo=echo)
        outcome = {"status": "completed", "run_dir": str(result.run_dir), "metrics": result.metrics}
    except TunewrightError as exc:
        outcome = {"status": "failed", "error": str(exc), "exit_code": exc.exit_code}
    except Exception as exc:  # reported to the waiting command, then re-raised for Flower's log
        outcome = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "exit_code": 1,
        }
        raise
    finally:
        tmp = result_path.with_name(f".{result_path.name}.tmp")
        tmp.write_text(json.dumps(outcome, default=str))
        tmp.replace(result_path)
