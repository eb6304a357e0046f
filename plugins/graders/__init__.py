"""The built-in graders (``register_graders``): ``string_check``, ``text_similarity``, ``python``,
``score_model`` and ``multi``, configured with the hosted graders' fields so that a grader written
for a hosted service carries over with at most its model name changed.

A grader scores one sample (``{{sample.output_text}}``) against one item (``{{item.answer}}``);
see :mod:`.templates` for the template syntax.
"""

from __future__ import annotations

from tunewright import hookimpl

from .formula import multi
from .python_grader import python
from .score_model import score_model
from .similarity import text_similarity
from .string_check import string_check


@hookimpl(trylast=True)
def register_graders(register):
    register("string_check", string_check)
    register("text_similarity", text_similarity)
    register("python", python)
    register("score_model", score_model)
    register("multi", multi)
