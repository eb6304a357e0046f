"""The ``local`` runner: trains the job in this process (and, under ``torchrun`` or ``accelerate
launch``, in each of its processes with distributed data parallel)."""

from tunewright import hookimpl, train


def local(run):
    """``tunewright.train(run)``, from the checkpoint a resumed run continues from."""
    return train(run, resume_from=run.resume_from)


@hookimpl(trylast=True)
def register_runners(register):
    register("local", local)
