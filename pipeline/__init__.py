"""nfscale: distributed NFNet pretraining pipeline (ingest, dedup, pretrain, finetune, sweep, fit).

Importing it changes nothing in the process: the jobs, Ray tasks and training workers that need
object storage or log lines set them up themselves (`pipeline.process`)."""
