"""Compression method plug-ins: one file per method, each registering a ``bench.method.Method``."""

from methods import baseline  # noqa: F401
from methods import hrf  # noqa: F401
from methods import expandnets, kd, lowrank, prune, prune_unstructured, quant, repadapter, svm  # noqa: F401
