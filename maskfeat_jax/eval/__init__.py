"""Evaluators: multi-view testing (multiview.py) and its reports (report.py), the linear probe (probe.py)."""
