"""hrf-bench harness: CLI, registry, data, training, measurement, results, reports, tuning."""
