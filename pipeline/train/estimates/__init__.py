"""What a run will cost before it runs: the dry run, the memory model, FLOPs and MFU."""
