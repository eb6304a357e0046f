"""The ``local`` runner: trains the job on this machine (and, through accelerate, its GPUs)."""

from tunewright import hookimpl
from tunewright.trainer import train_local


@hookimpl(trylast=True)
def register_runners(register):
    register("local", train_local)
