"""Data: shard index, global order, resumable loader, transforms (and generated demo images)."""
