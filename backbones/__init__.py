"""Backbone plug-ins: one file per architecture, each registering a builder with its presets."""

from backbones import conformer, convtransformer, speechformer  # noqa: F401
