"""Corpora and features: the corpus contract and its folds, audio reading, feature extraction and its
cache, and the built-in dataset plug-ins (``bench.data.datasets``)."""
