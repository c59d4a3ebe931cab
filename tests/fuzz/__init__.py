"""Fuzz drivers, one per target, and their common runner (run.py); README.md says how to
run them and what the last soak found."""
