"""Ingest to object stores through fsspec: gs:// against the GCS emulator and s3:// against
moto, both real servers on loopback, and the GCS emulator behind a faulty proxy."""

import os

import fsspec
import pytest

from pipeline.ingest.run import ingest
from pipeline.storage import set_storage_defaults
from tests.builders import ingest_config, round_trip
from tests.loading import rank_batches
from tests.storage_servers import faulty_proxy, gcs_emulator, s3_server


@pytest.mark.parametrize(
    "server,url", [(gcs_emulator, "gs://bucket/shards"), (s3_server, "s3://bucket/shards")]
)
def test_object_store_round_trip(image_tree, tmp_path, server, url):
    """gs:// against the GCS emulator, s3:// against moto, both real servers on loopback."""
    local = ingest(ingest_config(image_tree, tmp_path / "local", parallel=False), progress=False)
    with server("bucket") as opts:
        remote = round_trip(image_tree, url, opts)
    assert [s.sha256 for s in remote.shards] == [s.sha256 for s in local.shards]


def test_a_flaky_object_store_loses_nothing(image_tree, tmp_path):
    """The GCS emulator behind a proxy that answers 1 request in 12 with a 5xx and stalls 1 in
    30: ingest and reads retry with backoff; shards are byte-identical, every sample reads back."""
    local = ingest(ingest_config(image_tree, tmp_path / "local", parallel=False), progress=False)
    set_storage_defaults(stall_s=0.5)  # a stall ends after 0.5 s without a byte, then a retry
    try:
        with gcs_emulator("bucket") as opts:
            upstream = os.environ["STORAGE_EMULATOR_HOST"]
            with faulty_proxy(upstream, fail_every=12, stall_every=30, stall_s=2) as (url, n):
                os.environ["STORAGE_EMULATOR_HOST"] = url  # gcs_emulator restores it
                # gcsfs is imported here, after gcs_emulator's environment (see ENVIRONMENT.md);
                # its instances remember the endpoint they were made for
                fsspec.get_filesystem_class("gs").clear_instance_cache()
                cfg = ingest_config(
                    image_tree, "gs://bucket/shards", parallel=False, storage_options=opts
                )
                remote = ingest(cfg, progress=False)
                batches = rank_batches("gs://bucket/shards", "t", tmp_path / "cache",
                                       global_batch=1, storage_options=opts)  # fmt: skip
            os.environ["STORAGE_EMULATOR_HOST"] = upstream  # the proxy is gone: read directly
            fs = fsspec.filesystem("gs", skip_instance_cache=True, **opts)
            remote_bytes = {r.name: fs.cat_file(f"bucket/shards/{r.name}") for r in remote.shards}
    finally:
        set_storage_defaults()
        fsspec.get_filesystem_class("gs").clear_instance_cache()
    assert n.failed >= 4 and n.stalled >= 1, vars(n)  # the faults did happen
    assert remote.model_dump(exclude={"settings"}) == local.model_dump(exclude={"settings"})
    for rec in local.shards:
        assert remote_bytes[rec.name] == (tmp_path / "local" / rec.name).read_bytes()
    ids = sorted(i for b in batches for i in b.sample_ids.tolist())  # the loader's path
    assert ids == list(range(local.num_samples)) and not any(b.skipped for b in batches)


# Ray-task ingest against inline, byte for byte: tests/e2e/test_data_plane.py (in its Ray instance).
