"""Running a grid: settings and their files, the run identity and workspace, executing one run,
executors and claims that share a grid between workers, checkpoints, the dry-run estimate and the
environment every record carries."""
