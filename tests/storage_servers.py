"""Real object-store servers on loopback for tests: the GCS emulator and moto's S3 server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gcs_emulator(bucket: str = "bucket") -> Iterator[dict]:
    """gcp-storage-emulator in memory; yields gcsfs storage options. See ENVIRONMENT.md."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    saved = {
        k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    }
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # else gcsfs probes gRPC for 60 s
    try:
        yield {"token": "anon"}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def s3_server(bucket: str = "bucket") -> Iterator[dict]:
    """moto's S3 server on loopback; yields s3fs storage options with the bucket created."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    try:
        # boto3, not s3fs.mkdir: s3fs sends a LocationConstraint that us-east-1 rejects.
        boto3.client(
            "s3",
            endpoint_url=opts["client_kwargs"]["endpoint_url"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        yield opts
    finally:
        server.stop()


COUNTS_PATH, RESET_PATH = "/__proxy__/read_bytes", "/__proxy__/reset"


class FaultCounts:
    def __init__(self) -> None:
        self.requests = self.failed = self.stalled = 0
        self.read_bytes: dict[str, int] = {}  # object name -> body bytes of its media GETs

    def reset_reads(self) -> None:
        self.read_bytes = {}


def _object_name(path: str) -> str | None:
    """The object a GCS JSON-API media download is for (``.../o/<name>?alt=media``)."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(path)
    if "/o/" not in parts.path or parse_qs(parts.query).get("alt") != ["media"]:
        return None
    return unquote(parts.path.split("/o/", 1)[1])


@contextmanager
def faulty_proxy(
    upstream: str, fail_every: int = 10, stall_every: int = 0, stall_s: float = 3.0
) -> Iterator[tuple[str, FaultCounts]]:
    """A reverse proxy on loopback in front of `upstream` (http://host:port). Of every
    `fail_every` requests one is answered with a 5xx (503, 500, 429 in turn) and of every
    `stall_every` one is held for stall_s seconds and dropped, neither forwarded; the rest pass
    through. A fixed schedule, not chance: a retried request arrives as a later one and passes.
    Bytes of every object downloaded through it are counted (`FaultCounts.read_bytes`).
    Yields (its URL, the counts)."""
    import http.client
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    target = urlsplit(upstream)
    lock, counts = threading.Lock(), FaultCounts()
    hop = {"connection", "keep-alive", "transfer-encoding", "content-length"}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path in (COUNTS_PATH, RESET_PATH):  # the proxy's own: bytes read so far
                with lock:
                    if self.path == RESET_PATH:
                        counts.reset_reads()
                    data = json.dumps(counts.read_bytes).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            with lock:
                counts.requests += 1
                n = counts.requests
                fail = fail_every and n % fail_every == fail_every // 2
                stall = not fail and stall_every and n % stall_every == stall_every // 3
                counts.failed += bool(fail)
                counts.stalled += bool(stall)
            if fail:
                self.send_response((503, 500, 429)[counts.failed % 3])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if stall:
                time.sleep(stall_s)
                self.close_connection = True
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            conn.request(self.command, self.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            conn.close()
            name = _object_name(self.path) if self.command == "GET" else None
            if name is not None:
                with lock:
                    counts.read_bytes[name] = counts.read_bytes.get(name, 0) + len(data)
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in hop:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _handle

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", counts
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def gcs_in_another_process(bucket: str = "bucket") -> Iterator[tuple[dict, str]]:
    """The GCS emulator and a byte-counting proxy in front of it, in a process of their own (a
    benchmark's own process then runs nothing but the code measured); points this process's
    gcsfs at the proxy. Yields (gcsfs storage options, the proxy's URL); `proxy_reads(url)`
    returns the bytes read through it per object, `proxy_reads(url, reset=True)` zeroes them.
    `os.environ["NFSCALE_TEST_EMULATOR"]` is the emulator's own URL (no proxy on the way)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.storage_servers", bucket],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    try:
        emulator, proxy = proc.stdout.readline().split()
        keys = (
            "STORAGE_EMULATOR_HOST",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
            "NFSCALE_TEST_EMULATOR",
        )
        saved = {k: os.environ.get(k) for k in keys}
        os.environ.update(STORAGE_EMULATOR_HOST=proxy, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
                          NFSCALE_TEST_EMULATOR=emulator)  # fmt: skip
        try:
            yield {"token": "anon"}, proxy
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def proxy_reads(proxy: str, reset: bool = False) -> dict[str, int]:
    with urllib.request.urlopen(proxy + (RESET_PATH if reset else COUNTS_PATH), timeout=30) as r:
        return json.loads(r.read())


if __name__ == "__main__":  # serve until terminated: the emulator, then the counting proxy
    import time

    with (
        gcs_emulator(sys.argv[1]),
        faulty_proxy(os.environ["STORAGE_EMULATOR_HOST"], 0) as (url, _),
    ):
        print(os.environ["STORAGE_EMULATOR_HOST"], url, flush=True)
        while True:
            time.sleep(3600)
