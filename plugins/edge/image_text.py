"""The ``edge-image-text`` plugin: image+text -> text bundles.

=====================  =========================================================================
registers              what
=====================  =========================================================================
exporter image-text    :class:`tunewright.plugins.edge.image_text_export.ImageTextExporter`:
                       vision part, decoder and embedding table, proven and written by
                       :func:`tunewright.edge.export_bundle` as every bundle is
edge runtime           :class:`tunewright.edge.runtime.image_text.ImageTextGenerator`
image-text-generator   (``onnxruntime`` / ``image_text_to_text``), no torch
=====================  =========================================================================

This module imports neither: the exporter (torch, transformers) loads only when exporters are
registered, so a device with ``tunewright[runtime]`` alone loads this plugin for its runtime.
"""

from __future__ import annotations

from tunewright import hookimpl


@hookimpl(trylast=True)
def register_exporters(register):
    from .image_text_export import ImageTextExporter

    register("image-text", ImageTextExporter())


@hookimpl(trylast=True)
def register_edge_runtimes(register):
    from tunewright.edge.runtime.image_text import ImageTextGenerator

    register("image-text-generator", ImageTextGenerator)
