"""Metrics, the digits feature classifier, plots and the report."""
