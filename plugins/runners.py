"""The ``local`` runner: trains the job in this process (and, under ``torchrun`` or ``accelerate
launch``, in each of its processes with distributed data parallel)."""

from tunewright import Run, TrainResult, hookimpl, train


def local(run: Run) -> TrainResult:
    """``tunewright.train(run)``: a resumed run continues from its last checkpoint."""
    return train(run)


@hookimpl(trylast=True)
def register_runners(register):
    register("local", local)
