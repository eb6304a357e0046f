"""Built-in vision plugins: the ``vision:`` config section and the image transform (``data``),
image classification data formats (``formats``), face screening (``faces``), and the vision tasks
and models. Each module is an entry point of its own in the ``tunewright`` group."""
