"""Serving: export a trained run as a self-contained inference artifact, and score rows with it.

- ``export``: ``export_run`` (``recscale export``): checkpoint -> ``model.pt2`` + ``features.json`` +
  ``manifest.json`` + ``serve.py``;
- ``graph`` / ``tables``: the exported plain-torch model (row-wise quantized tables where asked);
- ``runtime``: ``load(path).predict(batch)`` and ``predict_file``; imports only torch, numpy and
  pyarrow, and is copied into every artifact as ``serve.py``.

See docs/serving.md.
"""

from recscale.serving.runtime import Predictor, ServingError, load, predict_file

__all__ = ["Predictor", "ServingError", "load", "predict_file"]
