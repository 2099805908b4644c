"""Compression method plug-ins: one file per method, each registering a ``bench.method.Method``."""

from methods import baseline  # noqa: F401
from methods import hrf  # noqa: F401
from methods import expandnets, kd, lowrank, matched_compute, prune, prune_unstructured  # noqa: F401
from methods import quant, repadapter, svm  # noqa: F401
