"""The driver side of a run: preflight and launch on Ray Train, the run identity, why a run stopped."""
