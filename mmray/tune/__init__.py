"""The search: YAML search spaces -> validated objects -> Ray Tune + Optuna (TPE) + ASHA."""
