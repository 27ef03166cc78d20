"""Transfer Lab's UI-free core. Importing it does not import TensorFlow or Streamlit.

Modules, bottom to top: ``config`` (validated experiment settings), ``images``
(the one decode path), ``data`` (datasets, checks, splits, the sample),
``bases`` (registry, weights, preprocessing), ``freeze`` (locking, layer
table), ``head`` / ``augment`` / ``model`` (one Keras model), ``train``
(compiling, listeners, runs), ``export`` / ``predict`` (files in and out),
``cli`` (``python -m core``).
"""
