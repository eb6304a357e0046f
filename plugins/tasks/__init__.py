"""Built-in tasks: ``chat`` (a causal LM on the chat template) and ``classification`` (text).

Each task owns its data: what a valid example is, its labels, how it is split, how it is
tokenized and scored (the ``tunewright.Task`` protocol). Vision tasks come from
``tunewright.plugins.vision`` in the same way. ``losses`` holds the chat task's cross-entropy over
a large vocabulary, in fp32 blocks of rows.
"""

from tunewright import hookimpl

from .chat import ChatTask
from .classification import ClassificationTask, classification_metrics


@hookimpl(trylast=True)
def register_tasks(register):
    register("chat", ChatTask())
    register("classification", ClassificationTask())


__all__ = ["ChatTask", "ClassificationTask", "classification_metrics", "register_tasks"]
