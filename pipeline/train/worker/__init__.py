"""A training worker: the trainer and what it is made of (engine + AGC, checkpoints, resharding, export, EMA, callbacks, data, preemption)."""
