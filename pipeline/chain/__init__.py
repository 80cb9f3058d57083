"""The main job end to end (`make demo`): demo data -> ingest -> dedup -> scaling sweep ->
SAM fine-tune of the best point -> fits -> report, each stage reusing what is complete."""
