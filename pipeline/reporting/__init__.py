"""Reporting: a run's MLMD records (run_records), the end-of-run summary and the HTML report."""
