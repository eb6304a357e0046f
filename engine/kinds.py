"""Task kinds: what shape of model a task trains, in one word.

A task kind names the head and the inputs and outputs of the model a task loads, so that a method
knows what it wraps (PEFT's task type, which head to train) and an exporter knows what it writes.
It is a plain string and the set is open: the constants below are the kinds of the built-in and
packaged tasks, and a plugin may bring a task of a kind of its own. A method says which kinds it
supports (``Method.task_kinds``), an exporter answers ``supports(model, task_kind)`` and an edge
runtime is registered per kind; anything that meets a kind it does not know says so by name.

==========================  ======================================================  =============
kind                        model                                                   inputs
==========================  ======================================================  =============
``causal_lm``               a decoder with a language-model head                    token ids
``sequence_classification`` an encoder (or decoder) with a classification head      token ids
``image_classification``    an image backbone with a classification head            pixel values
``image_text_to_text``      a vision tower, a projector and a language model        both
==========================  ======================================================  =============
"""

from __future__ import annotations

CAUSAL_LM = "causal_lm"
SEQUENCE_CLASSIFICATION = "sequence_classification"
IMAGE_CLASSIFICATION = "image_classification"
IMAGE_TEXT_TO_TEXT = "image_text_to_text"

#: the kinds of the built-in and packaged tasks; others are welcome
KNOWN = (CAUSAL_LM, SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION, IMAGE_TEXT_TO_TEXT)

#: kinds whose head predicts one label (or one number) per example
CLASSIFICATION_KINDS = (SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION)

__all__ = [
    "CAUSAL_LM",
    "SEQUENCE_CLASSIFICATION",
    "IMAGE_CLASSIFICATION",
    "IMAGE_TEXT_TO_TEXT",
    "KNOWN",
    "CLASSIFICATION_KINDS",
]
