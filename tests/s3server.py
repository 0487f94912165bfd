"""A real S3 endpoint on loopback for tests: ``moto_server`` as a subprocess on a free port.

DESIGN asks for a real S3 server, never an in-process mock, so the store's HTTP path (timeouts,
multipart, checksums) is what gets tested. moto keeps buckets in memory: one server per test
session is enough, and stopping it loses everything.

    with moto_server() as s3, dummy_aws_env():
        create_bucket(s3.endpoint_url, "r1flow")
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


def free_port() -> int:
    """A TCP port nobody listens on right now (also handy as a 'closed port')."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_moto_server(timeout: float = 30.0) -> S3Server:
    """Start ``moto_server -H 127.0.0.1 -p <free port>``; return once it answers HTTP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode} on port {port}")
        try:
            urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=1).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto_server on port {port} not ready after {timeout:.0f} s")


@contextmanager
def moto_server() -> Iterator[S3Server]:
    server = start_moto_server()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def dummy_aws_env() -> Iterator[dict[str, str]]:
    """Dummy credentials in os.environ (restored afterwards) so boto3 never finds real ones."""
    saved = {k: os.environ.get(k) for k in (*DUMMY_AWS_ENV, *_UNSET)}
    os.environ.update(DUMMY_AWS_ENV)
    for k in _UNSET:
        os.environ.pop(k, None)
    try:
        yield dict(DUMMY_AWS_ENV)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def create_bucket(endpoint_url: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1").create_bucket(Bucket=bucket)
