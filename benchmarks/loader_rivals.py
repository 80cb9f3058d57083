"""Rival training loaders on the same JPEGs, per core: the other side of the loader benchmark.

Each function reads the same images and returns images/s measured in one process with one
thread (torch.set_num_threads(1), no DataLoader workers), producing uint8 [3, res, res] tensors
with the project's Inception crop (``random_resized_box``) + horizontal flip:
- webdataset_pil: webdataset as its docs recommend for training: WebDataset with shard shuffle,
  a 1000-sample shuffle buffer, .decode("pil"), then a PIL crop/resize/flip;
- webdataset_reader_our_transform: the same webdataset reader, raw JPEG bytes handed to our
  transform (``pipeline.data.transforms.TrainTransform``): isolates reader cost from decode cost;
- streaming_pil: mosaicml-streaming's StreamingDataset (default shuffle, py1e) over the images
  rewritten as MDS, PIL decode + the same crop/flip; the MDS write is timed separately.
Inputs are the project's WebDataset tars (``<key>.jpg``, ``<key>.cls``, ``<key>.json``) as local
paths or gs:// URLs. From gs://, webdataset and our reader stream each shard; StreamingDataset
downloads each shard into a fresh local cache as it goes (the figure is a cold first epoch).
mosaicml-streaming is installed on first use (benchmarks/rival_packages.py).
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.gopen import gopen_schemes  # the module; `wds.gopen` is the function

from pipeline.data.transforms import TrainTransform, random_resized_box

Sample = tuple[bytes, int]


def pil_crop_flip(img: Image.Image, rng: np.random.Generator, res: int) -> torch.Tensor:
    """Decoded PIL image -> uint8 [3, res, res]: crop the box, bilinear resize, maybe flip."""
    box = random_resized_box(*img.size, rng)
    img = img.crop(tuple(round(v) for v in box)).resize((res, res), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def open_sequential(url: str, storage_options: dict | None = None):
    """A file for one front-to-back pass. cache_type="readahead" (fsspec's classic one): gcsfs
    2026.x defaults to "adaptive", which costs ~14 ms per small read() here (tarfile reads 10 KB
    at a time: ~4 s per 3 MB shard from the emulator against ~0.01 s with readahead)."""
    fs, path = fsspec.core.url_to_fs(str(url), **(storage_options or {}))
    return fs.open(path, "rb", cache_type="readahead")


def register_gs_opener(storage_options: dict | None) -> None:
    """webdataset opens gs:// by shelling out to gsutil; a user without it (or pointing at an
    emulator) registers an fsspec (gcsfs) opener instead, as done here."""

    def gopen_fsspec(url, mode="rb", bufsize=8192, **kw):
        return open_sequential(url, storage_options)

    gopen_schemes["gs"] = gopen_fsspec


def _wds_samples(urls: Sequence[str], storage_options, seed: int, shard_shuffle: int, buffer: int):
    """WebDataset reader: shard shuffle, one process (no node or worker split), sample buffer."""
    if any(str(u).startswith("gs://") for u in urls):
        register_gs_opener(storage_options)
    ds = wds.WebDataset(
        [str(u) for u in urls], shardshuffle=shard_shuffle, nodesplitter=None, seed=seed
    )
    return ds.shuffle(buffer, seed=seed)


def _measure(images: Iterable, count: int | None) -> tuple[int, float, float]:
    """Drains ``images`` (up to ``count``): (images, wall seconds, main-thread CPU seconds). The
    clock includes opening the first shard. CPU time resists other load on the machine but
    leaves out helper threads (gcsfs's IO loop, mosaic's download threads)."""
    start, cpu, n = time.perf_counter(), time.thread_time(), 0
    for img, _label in images:
        assert img.dtype == torch.uint8 and img.ndim == 3
        n += 1
        if count is not None and n >= count:
            break
    return n, time.perf_counter() - start, time.thread_time() - cpu


def _result(name: str, measured: tuple[int, float, float], res: int, **extra) -> dict:
    n, wall, cpu = measured
    return {"loader": name, "images": n, "res": res, "seconds": wall,
            "img_per_s_per_core": n / wall, "img_per_cpu_s_main_thread": n / cpu,
            **extra}  # fmt: skip


def webdataset_pil(
    urls: Sequence[str],
    res: int = 224,
    storage_options: dict | None = None,
    count: int | None = None,
    seed: int = 0,
    shard_shuffle: int = 100,
    buffer: int = 1000,
) -> dict:
    """webdataset's recommended pipeline, PIL decode. Only jpg and cls are decoded (``only=``):
    .json is left as bytes and pickle decoders never run."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    ds = (
        _wds_samples(urls, storage_options, seed, shard_shuffle, buffer)
        .decode("pil", only=("jpg", "cls"))
        .to_tuple("jpg", "cls")
        .map_tuple(lambda img: pil_crop_flip(img, rng, res), int)
    )
    return _result("webdataset_pil", _measure(ds, count), res, source=_source(urls))


def webdataset_reader_our_transform(
    urls: Sequence[str],
    res: int = 224,
    storage_options: dict | None = None,
    count: int | None = None,
    transform: Callable[[bytes, np.random.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    shard_shuffle: int = 100,
    buffer: int = 1000,
) -> dict:
    """The same webdataset reader, raw JPEG bytes through ``transform`` (TrainTransform(res))."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    transform = transform or TrainTransform(res)
    ds = (
        _wds_samples(urls, storage_options, seed, shard_shuffle, buffer)
        .to_tuple("jpg", "cls")
        .map_tuple(lambda data: transform(data, rng), int)
    )
    measured = _measure(ds, count)
    return _result("webdataset_reader_our_transform", measured, res, source=_source(urls))


def read_tar_samples(urls: Sequence[str], storage_options: dict | None = None) -> list[Sample]:
    """(jpeg bytes, label) pairs from WebDataset tars, in shard order."""
    out: list[Sample] = []
    for url in urls:
        with open_sequential(url, storage_options) as f:
            members: dict[str, dict[str, bytes]] = {}
            with tarfile.open(fileobj=f, mode="r|*") as tar:
                for m in tar:
                    key, _, ext = m.name.partition(".")
                    if m.isfile() and ext in ("jpg", "cls"):
                        members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            out += [(v["jpg"], int(v["cls"])) for v in members.values() if len(v) == 2]
    return out


def point_streaming_at_gcs_emulator() -> None:
    """mosaic's GCSDownloader authenticates with google.auth.default() (no credentials exist
    for an emulator) or HMAC keys against a hard-coded storage.googleapis.com. Its transfer is
    google-cloud-storage, which honours STORAGE_EMULATOR_HOST; give it an anonymous client."""
    from google.cloud.storage import Client
    from streaming.base.storage.download import GCSDownloader

    def anonymous(self) -> None:
        self._gcs_client = Client.create_anonymous_client()

    GCSDownloader._create_gcs_client = anonymous


def write_mds(samples: Sequence[Sample], out: str, shard_bytes: int) -> float:
    """Writes ``samples`` as uncompressed MDS under the local folder ``out``; returns seconds.
    Noisy by design of MDSWriter: before index.json it polls its (here no-op) upload queue with
    1 s sleeps, so a run takes ~0.01 s or ~1 s depending on a thread race."""
    from streaming import MDSWriter

    start = time.perf_counter()
    columns = {"jpg": "bytes", "cls": "int"}
    with MDSWriter(out=out, columns=columns, size_limit=shard_bytes) as writer:
        for jpg, cls in samples:
            writer.write({"jpg": jpg, "cls": cls})
    return time.perf_counter() - start


def streaming_pil(
    samples_or_urls: Sequence[Sample] | Sequence[str],
    res: int = 224,
    remote: str | None = None,
    storage_options: dict | None = None,
    count: int | None = None,
    shard_bytes: int = 1 << 26,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """StreamingDataset over MDS, PIL decode + crop/flip. ``remote=None`` reads the MDS folder in
    place (local disk); ``remote="gs://..."`` uploads it there (gcsfs) and streams it into a
    fresh cache; against the emulator (STORAGE_EMULATOR_HOST) with an anonymous client.
    ``batch_size`` only sets mosaic's partitioning and its default predownload (8 x batch)."""
    from benchmarks.rival_packages import ensure_streaming

    streaming = ensure_streaming()
    torch.set_num_threads(1)
    samples = samples_or_urls
    if samples and isinstance(samples[0], str):
        samples = read_tar_samples(samples, storage_options)
    with tempfile.TemporaryDirectory() as tmp:
        mds = os.path.join(tmp, "mds")
        write_s = write_mds(samples, mds, shard_bytes)
        extra = {"mds_write_s": write_s, "mds_shards": len(list(Path(mds).glob("*.mds")))}
        if remote is None:
            source, kwargs = "local disk (MDS folder read in place)", {"local": mds}
        else:
            fs, root = fsspec.core.url_to_fs(remote, **(storage_options or {}))
            start = time.perf_counter()
            for f in sorted(Path(mds).iterdir()):
                fs.put_file(str(f), f"{root.rstrip('/')}/{f.name}")
            extra["mds_upload_s"] = time.perf_counter() - start
            if remote.startswith("gs://") and os.environ.get("STORAGE_EMULATOR_HOST"):
                point_streaming_at_gcs_emulator()
                source = "gs:// GCS emulator (anonymous google-cloud-storage client), cold cache"
            else:
                source = f"{remote} (cold cache)"
            kwargs = {"remote": remote, "local": os.path.join(tmp, "cache")}
        ds = streaming.StreamingDataset(
            **kwargs, shuffle=True, shuffle_seed=seed, batch_size=batch_size
        )
        rng = np.random.default_rng(seed)
        images = (
            (pil_crop_flip(Image.open(io.BytesIO(s["jpg"])).convert("RGB"), rng, res), s["cls"])
            for s in ds
        )
        measured = _measure(images, count)
        if hasattr(ds, "_iterator"):
            ds._iterator.exit()  # stop its download threads if we stopped before the epoch end
        del ds
    return _result("streaming_pil", measured, res, source=source, **extra)


def _source(urls: Sequence[str]) -> str:
    return "gs://" if str(urls[0]).startswith("gs://") else "local disk"


def write_tars(samples: Sequence[Sample], folder: Path, shards: int) -> list[Path]:
    """Plain WebDataset tars like ingest's: <key>.jpg, <key>.cls, <key>.json (for self-tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, per = [], -(-len(samples) // shards)
    for s in range(shards):
        paths.append(folder / f"rv-{s:06d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for i in range(s * per, min(len(samples), (s + 1) * per)):
                jpg, cls = samples[i]
                meta = f'{{"id": {i}}}'.encode()
                for ext, data in (("jpg", jpg), ("cls", str(cls).encode()), ("json", meta)):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return paths


def run(count: int = 512, res: int = 224, shards: int = 4, repeats: int = 2) -> list[dict]:
    """All three rivals on ``count`` ImageNet-like JPEGs, from local tars and from the GCS
    emulator, each measured ``repeats`` times after one untimed warm-up pass of each."""
    from benchmarks.loader import make_sources
    from tests.storage_servers import gcs_emulator

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_sources(root / "raw", count)
        files = sorted((root / "raw" / "c").glob("*.jpg"))
        samples = [(f.read_bytes(), i % 10) for i, f in enumerate(files)]
        tars = [str(p) for p in write_tars(samples, root / "shards", shards)]
        shard_bytes = sum(len(j) for j, _ in samples) // shards + (1 << 16)
        with gcs_emulator() as opts:
            fs = fsspec.filesystem("gs", **opts)
            urls = []
            for p in tars:
                urls.append(f"gs://bucket/shards/{Path(p).name}")
                fs.put_file(p, urls[-1][5:])
            webdataset_pil(tars, res, None, 64)  # untimed warm-up: lazy imports, first use
            webdataset_reader_our_transform(tars, res, None, 64)
            streaming_pil(samples[:64], res, None, None, 64, shard_bytes)
            for _ in range(repeats):
                for u in (tars, urls):
                    results.append(webdataset_pil(u, res, opts, count))
                    results.append(webdataset_reader_our_transform(u, res, opts, count))
                results.append(streaming_pil(samples, res, None, opts, count, shard_bytes))
                remote = f"gs://bucket/mds-{len(results)}"
                results.append(streaming_pil(samples, res, remote, opts, count, shard_bytes))
    return results


if __name__ == "__main__":
    from pipeline.process import setup_process

    setup_process()  # as the jobs do
    for r in run():
        print(r)
