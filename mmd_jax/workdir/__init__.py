"""Workdir I/O: files on local disk or buckets, checkpoints, the lock, stage.json, parameter files."""
