"""Federated fine-tuning across sites with Flower (https://flower.ai): the ``federated:`` config
section, the ``federated`` runner and the ``tunewright federate`` commands.

Modules: :mod:`.settings` (the section), :mod:`.aggregation` (fedavg, FFA-LoRA, FlexLoRA maths),
:mod:`.replies` (checks before aggregation), :mod:`.partition` (splitting data into sites) are
plain Python and numpy; :mod:`.strategies`, :mod:`.federation`, :mod:`.apps` are the Flower glue;
:mod:`.site` trains one site through the public engine API; :mod:`.runner` is the runner;
:mod:`.deploy` starts and stops Flower's processes. Importing this package imports neither Flower
nor torch.
"""

from tunewright import hookimpl

from .settings import FederatedSettings


@hookimpl
def register_config_sections(register):
    register("federated", FederatedSettings)


@hookimpl
def register_runners(register):
    from .runner import federated_runner

    register("federated", federated_runner)


@hookimpl
def register_commands(cli):
    from .commands import add_commands

    add_commands(cli)
