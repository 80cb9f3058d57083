"""nfscale: distributed NFNet pretraining pipeline (ingest, dedup, pretrain, finetune, sweep, fit)."""
