"""Built-in edge plugins: exporters, quantizers and the ``export`` / ``edge`` commands.

Each module is an ordinary plugin registered through the ``tunewright`` entry-point group, and
uses only public names of ``tunewright`` and ``tunewright.edge``.
"""
