"""nfscale: distributed NFNet pretraining pipeline (ingest, dedup, pretrain, finetune, sweep, fit).

Importing it changes nothing in the process: the jobs, Ray tasks and training workers that need
object storage or log lines set them up themselves (`pipeline.process`). It only checks that
this interpreter has the project's dependencies (`pipeline.interpreter`), so that a job started
by the wrong `python` says so in its first line."""

from pipeline import interpreter as _interpreter

_interpreter.check()
