"""Scaling sweeps: a grid of models x epoch budgets x LR multipliers, each point a pretraining
run on Ray, recorded in one append-only results table under a parent MLflow run."""
