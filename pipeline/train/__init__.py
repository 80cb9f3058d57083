"""Training: engine setup, loop, checkpointing, tracking."""
