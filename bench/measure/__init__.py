"""Measuring a deploy model: parameters, MACs and peak memory, latency timed against the reference,
ONNX export and checks, the deploy budget of shrinking methods, saved deploy models, and the
stand-alone device probe."""
