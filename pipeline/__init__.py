"""nfscale: distributed NFNet pretraining pipeline (ingest, dedup, pretrain, finetune, sweep, fit)."""

from pipeline.storage import set_storage_defaults

set_storage_defaults()  # every process that imports the pipeline: drivers, Ray tasks, workers
