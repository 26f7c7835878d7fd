"""Reporting: a run's MLMD records (run_records), its numbers (collect, and predictions for what TFMA does not
give), the figures, the page (page, templates/report.html.j2), the HTML report (report) and the end-of-run summary."""
