"""The data layer: from the files a config names to checked, tokenized examples, before training.

=============  ====================================================================
module         what
=============  ====================================================================
``reading``    a file (or folder) to examples through a registered dataset format
``checks``     the task's rules, ``validate_example`` hooks, duplicates, counts, lengths
``splits``     seeded held-out splits and balancing, stratified as the task says
``summary``    what the data holds, and the text report of ``tunewright validate``
``pipeline``   one file read, checked, tokenized and measured: for a job, validate and eval
``prepare``    the whole path for a job, raising every error at once
=============  ====================================================================

The core knows no format and no task by name: formats come from the ``dataset_formats``
registry, the rules of an example from its task and from ``validate_example`` hooks.
"""

from .checks import MIN_EXAMPLES, RECOMMENDED_EXAMPLES, check_examples, check_lengths, sort_problems
from .pipeline import CheckedFile, check_file, tokenize_examples, transform_example
from .prepare import DataProblems, PreparedData, Split, prepare_data
from .reading import ReadFile, read_examples, read_file, task_for_file
from .splits import balance, split
from .summary import render_report, summarize

__all__ = [
    "read_examples",
    "read_file",
    "ReadFile",
    "task_for_file",
    "check_examples",
    "check_lengths",
    "sort_problems",
    "MIN_EXAMPLES",
    "RECOMMENDED_EXAMPLES",
    "split",
    "balance",
    "summarize",
    "render_report",
    "check_file",
    "CheckedFile",
    "prepare_data",
    "PreparedData",
    "Split",
    "DataProblems",
    "transform_example",
    "tokenize_examples",
]
