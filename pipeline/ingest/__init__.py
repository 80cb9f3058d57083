"""Ingest: image folders, (path, label) lists or existing shards -> WebDataset shards + manifest."""
