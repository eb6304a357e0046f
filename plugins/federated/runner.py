"""The ``federated`` runner: the server side of a federated job, simulated or deployed.

``run_job`` prepares the server's run (its data is the central held-out set), then calls this
runner, which

- in deployment (inside the ServerApp that ``tunewright federate server`` submits) runs the rounds
  on the Flower grid the sites connected to;
- otherwise splits the run's training data into ``federated.sites`` sites and runs the same rounds
  with Flower's simulation engine (Ray), each site preparing its own run in a worker process.

Either way it leaves the aggregated state in ``run.model``; the engine evaluates it and writes the
run directory as for a local run. Rounds are logged as steps (``step`` = round) to the run's
trackers and in detail to ``federated/rounds.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from tunewright import ConfigError, JobFailed, TrainResult, UsageError, atomic_directory

from .server_job import current_grid, site_names
from .settings import FederatedSettings


def federated_runner(run: Any) -> TrainResult:
    """Train ``run.model`` across sites; see the module docstring."""
    settings = run.config.section("federated")
    if settings is None:
        raise ConfigError("runner: federated needs a federated: section (at least federated: {})")
    grid = current_grid()
    if grid is not None:
        return serve(run, grid, settings, dp_sites=settings.min_sites)
    return simulate(run, settings)


def serve(run: Any, grid: Any, settings: FederatedSettings, *, dp_sites: int) -> TrainResult:
    """Run the rounds on ``grid`` and leave the final state in ``run.model``."""
    from tunewright import evaluate

    from .federation import Federation
    from .site import fingerprint, freeze_lora_a, load_state, travelling_state, use_threads

    started = time.monotonic()
    use_threads(run.config)
    if settings.aggregation == "ffa":
        freeze_lora_a(run.model, run.config.seed)
    initial = travelling_state(run.method, run.model, settings.aggregation)
    folder = Path(run.run_dir) / "federated"
    folder.mkdir(parents=True, exist_ok=True)
    rounds_path = folder / "rounds.jsonl"
    rounds_path.write_text("")
    full_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())

    def central(state: dict) -> dict:
        if not run.validation_features:
            return {}
        load_state(run.method, run.model, state)
        return evaluate(run, run.validation_features)

    def on_round(record: dict) -> None:
        if "central" in record:
            record["central_examples"] = len(run.validation_features)
        with rounds_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=float) + "\n")
        # one row per round (step = round): report.png draws the rounds as a local run's steps
        row: dict[str, Any] = {"round": record["round"]}
        if "train_loss" in record["train"]:
            row["loss"] = record["train"]["train_loss"]
        row.update({f"eval_{k}": v for k, v in record.get("central", {}).items()})
        row.update({f"eval_sites_{k}": v for k, v in record.get("evaluate", {}).items()})
        if any(k.startswith("eval_") for k in row):
            row["eval_stage"] = "training"
        row["sites_aggregated"] = sum(s["status"] == "ok" for s in record["sites"])
        row["sent_bytes_per_site"] = max((s["received_bytes"] for s in record["sites"]), default=0)
        row["received_bytes_per_site"] = max((s["sent_bytes"] for s in record["sites"]), default=0)
        run.log(record["round"], row)
        ok = sum(s["status"] == "ok" for s in record["sites"])
        shown = {k: v for k, v in row.items() if k.startswith("eval_") and isinstance(v, float)}
        sites = ", ".join(f"{s['site']} {s['status']}" for s in record["sites"])
        run.say(
            f"round {record['round']}/{settings.rounds}: {ok}/{len(record['sites'])} sites aggregated ({sites})"
            + ("" if record["aggregated"] else f"; not aggregated: {record.get('skipped_reason')}")
            + f"  {record.get('seconds', 0.0):.1f} s  "
            + "  ".join(f"{k[5:]} {v:.4f}" for k, v in shown.items())
        )

    federation = Federation(
        grid,
        settings,
        initial,
        fingerprint(run.config, run.labels),
        dp_sites=dp_sites,
        names=site_names(),
        central_eval=central if run.validation_features else None,
        on_round=on_round,
        echo=run.say,
    )
    final, records = federation.run()
    load_state(run.method, run.model, final)
    summary = {
        "rounds": settings.rounds,
        "aggregation": settings.aggregation,
        "strategy": settings.strategy,
        "transfer_dtype": settings.transfer_dtype,
        "trainable_bytes": int(sum(v.nbytes for v in initial.values())),
        "full_model_bytes": int(full_bytes),
        "privacy": records[-1].get("privacy") if records else None,
        "seconds": round(time.monotonic() - started, 2),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    draw_rounds(records, folder / "rounds.png", run.primary_metric[0])
    tokens = sum(
        int(s.get("train_tokens", 0)) for r in records for s in r["sites"] if s["status"] == "ok"
    )
    last = records[-1]["train"] if records else {}
    return TrainResult(
        run_dir=Path(run.run_dir),
        global_step=settings.rounds,
        metrics={"train_loss": last.get("train_loss", float("nan"))},
        train_tokens=tokens,
        train_seconds=time.monotonic() - started,
    )


def draw_rounds(records: list[dict], path: Path, metric: str) -> Path | None:
    """``federated/rounds.png``: per round, each site's training loss (left) and each site's and
    the central figures of ``metric`` for the aggregate (right). Written atomically."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({str(s["site"]) for r in records for s in r["sites"]})
    for name in names:
        points = [
            (r["round"], s["train_loss"])
            for r in records
            for s in r["sites"]
            if str(s["site"]) == name and s["status"] == "ok" and "train_loss" in s
        ]
        if points:
            loss_ax.plot(*zip(*points), "o-", alpha=0.7, label=name)
        points = [
            (r["round"], e[metric])
            for r in records
            for e in r.get("evaluate_sites", [])
            if str(e["site"]) == name and e.get("status") == "ok" and metric in e
        ]
        if points:
            metric_ax.plot(*zip(*points), "o-", alpha=0.7, label=name)
    central = [
        (r["round"], r["central"][metric]) for r in records if metric in r.get("central", {})
    ]
    if central:
        metric_ax.plot(*zip(*central), "s-", color="black", label="central test set")
    weighted = [
        (r["round"], r["evaluate"][metric]) for r in records if metric in r.get("evaluate", {})
    ]
    if weighted:
        metric_ax.plot(*zip(*weighted), "--", color="gray", label="sites, weighted")
    for ax, title in ((loss_ax, "local training loss"), (metric_ax, f"{metric} of the aggregate")):
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


# -- simulation ---------------------------------------------------------------------------------


def split_sites(run: Any, settings: FederatedSettings) -> list[dict]:
    """Partition the run's training examples into sites; returns ``{name, indices, values}`` each."""
    from .partition import by_field, dirichlet, field_values, iid

    examples = run.data.train.examples
    seed = run.config.seed
    if settings.partition == "iid":
        parts, held = iid(len(examples), settings.sites, seed), None
    elif settings.partition == "dirichlet":
        stratify = getattr(run.task, "stratify_key", None)
        keys = field_values(examples, settings.partition_field or "", stratify)
        # every label at every site: the data rules refuse a classification site with one label
        parts = dirichlet(
            keys,
            settings.sites,
            seed,
            settings.dirichlet_alpha,
            every_key_everywhere=run.labels is not None,
        )
        held = None
    else:
        # a site takes the server's labels, so one that lacks some still builds the whole head
        values = field_values(examples, settings.partition_field or "")
        parts, held = by_field(values, settings.sites, settings.partition_field or "")
    return [
        {"name": f"site-{k}", "indices": part, **({"values": held[k]} if held else {})}
        for k, part in enumerate(parts)
    ]


def simulate(run: Any, settings: FederatedSettings) -> TrainResult:
    """Split the data, then run the rounds with Flower's simulation engine."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from .apps import make_client_app
    from .configs import with_site_data

    if settings.min_sites > settings.sites:
        raise ConfigError(
            f"federated.min_sites ({settings.min_sites}) is more than federated.sites ({settings.sites})"
        )
    sites = split_sites(run, settings)
    root = Path(run.run_dir) / "federated" / "sites"
    base = run.config.to_dict()
    validation = (
        run.config.data.validation if isinstance(run.config.data.validation, float) else 0.1
    )
    specs = {}
    examples = run.data.train.examples
    for k, site in enumerate(sites):
        folder = root / site["name"]
        with (
            atomic_directory(folder) as staging,
            (staging / "train.jsonl").open("w", encoding="utf-8") as handle,
        ):
            for i in site["indices"]:
                handle.write(json.dumps(examples[i], ensure_ascii=False) + "\n")
        specs[k] = {
            "name": site["name"],
            "workdir": str(folder / "work"),
            "config": with_site_data(
                base, folder / "train.jsonl", folder / "work", validation=validation, format="auto"
            ),
        }
        run.say(
            f"{site['name']}: {len(site['indices'])} training examples"
            + (f" ({', '.join(site['values'])})" if site.get("values") else "")
        )
    (root.parent / "partition.json").write_text(
        json.dumps(
            {
                "partition": settings.partition,
                "dirichlet_alpha": settings.dirichlet_alpha,
                "field": settings.partition_field,
                "sites": [
                    {k: v for k, v in s.items() if k != "indices"} | {"examples": len(s["indices"])}
                    for s in sites
                ],
            },
            indent=2,
        )
        + "\n"
    )

    outcome: dict[str, TrainResult] = {}
    stopped = threading.Event()
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Any, context: Any) -> None:
        outcome["result"] = serve(
            run, _StoppableGrid(grid, stopped), settings, dp_sites=settings.sites
        )

    client_app = make_client_app(_SimulatedSites(specs))
    # Ray's handler of fatal signals would abort the process on SIGTERM (exit 134) before Python
    # sees it; without it, Ray's driver turns SIGTERM into sys.exit(15) in the main thread
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    # signal handlers belong to the main thread; None: one not installed from Python
    previous = (
        signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
        else None
    )
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=settings.sites,
            backend_config={
                "client_resources": {"num_cpus": settings.cpus_per_site, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": settings.simulation_cpus,
                    "num_gpus": 0,
                    "include_dashboard": False,
                },
            },
        )
    except BaseException as exc:
        stopped.set()  # the server app's thread ends at its next call to the grid
        if previous is not None and isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
            # Ray's driver caught a SIGTERM: hand it to the handler that was there before Ray's
            # (tunewright's CLI: exit 143 after everything unwound), as if Ray had not caught it
            # (Flower's threads still waiting on Ray workers that are gone do not hold the exit: the
            # CLI ends an interrupted command after a grace period)
            signal.signal(signal.SIGTERM, previous)
            signal.raise_signal(signal.SIGTERM)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # Ray's handler does not outlive the simulation
    for spec in specs.values():
        for work in Path(spec["workdir"]).parent.glob("work*"):
            shutil.rmtree(work, ignore_errors=True)
    if "result" not in outcome:
        raise UsageError("the federated simulation ended without a result; see Flower's log above")
    return outcome["result"]


class _StoppableGrid:
    """The simulation's grid as the server app's thread sees it: once the simulation has stopped
    (the main thread was interrupted or terminated), every call raises, so that the thread ends
    instead of waiting out its round for sites that are gone (and the process with it)."""

    def __init__(self, grid: Any, stopped: threading.Event):
        self._grid, self._stopped = grid, stopped

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._grid, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._stopped.is_set():
                raise JobFailed("the federated simulation was stopped")
            return attribute(*args, **kwargs)

        return call


class _SimulatedSites:
    """Builds a simulated site in the worker process that first gets one of its messages, and
    keeps it for later rounds (Ray workers live through the simulation). Small, so that Flower
    can send it to every worker."""

    def __init__(self, specs: dict[int, dict]):
        self.specs = specs

    def __call__(self, context: Any) -> Any:
        from tunewright import get_plugin_manager, load_config

        from .site import Site

        spec = self.specs[int(context.node_config["partition-id"])]
        # workers are not pinned to sites: two may prepare the same site, each in its own folder;
        # Ray may reuse a worker process for a later simulation: the folder names the federation
        key = (spec["workdir"], os.getpid())
        if key not in _SIMULATED:
            pm = get_plugin_manager()
            config = load_config(spec["config"], pm.registries, source=f"{spec['name']} config")
            _SIMULATED[key] = Site(config, pm, f"{spec['workdir']}-{os.getpid()}", spec["name"])
        return _SIMULATED[key]


_SIMULATED: dict[tuple[str, int], Any] = {}
