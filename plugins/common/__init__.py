"""Helpers the built-in plugins share: one place for each rule that more than one plugin keeps.

=============  ==============================================================================
module         what
=============  ==============================================================================
``records``    reading data files: UTF-8 lines, JSON Lines or a JSON array, CSV/TSV rows, the
               label a CSV cell holds, how a value's type is named in a message
``messages``   the rules of a conversation (roles, content, turn order), for chat and image-to-text
``labels``     the rules of class labels: a blank label, the order of label names, held-out
               labels that training never saw
``metrics``    macro precision, recall and F1 of a classifier's predictions
``batching``   padding token ids into a batch, the device of a model's inputs
=============  ==============================================================================

Public inside the package: a third-party plugin may use them too, as it may any public name of
``tunewright.plugins``; nothing here knows a task or a format by name.
"""
