"""`mmray compare`: a fair, tuned, multi-seed comparison of balancing methods (plan.py, run.py, report.py)."""
