"""Deterministic tar bytes: fixed metadata (mtime 0, uid/gid 0, mode 0644) and member order, so
the same samples give byte-identical shards on any machine, serially or in parallel."""

from __future__ import annotations

import io
import tarfile

from pipeline.data.manifest import MemberSpan, SampleIndex


def build_tar(samples: list[tuple[str, dict[str, bytes]]]) -> tuple[bytes, list[SampleIndex]]:
    buf = io.BytesIO()
    index = []
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            spans = {}
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
                spans[ext] = MemberSpan(offset=tar.offset + len(header), size=len(data))
                tar.addfile(info, io.BytesIO(data))
            index.append(SampleIndex(key=key, members=spans))
    return buf.getvalue(), index
