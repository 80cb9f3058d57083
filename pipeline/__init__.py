"""nfscale: distributed NFNet pretraining pipeline (ingest, dedup, pretrain, finetune, sweep, fit).

Importing it changes nothing in the process: the jobs, Ray tasks and training workers that touch
object storage set its defaults themselves (`pipeline.storage.set_storage_defaults`)."""
