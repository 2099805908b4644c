"""Compression method plug-ins: one file per method, each registering a ``bench.method.Method``."""

from methods import baseline  # noqa: F401
