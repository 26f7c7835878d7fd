"""A local S3 endpoint for the object-store tests: moto's server on 127.0.0.1, behind a switchable TCP relay.

moto (in the test extra) answers the S3 API as AWS and MinIO do for what ftune uses: buckets, objects, listing,
copy, delete, conditional PUT (`If-None-Match: *`). Its data lives in the server process's memory, so "the server
goes down mid-run, then comes back" is played by the relay in front of it: `down()` closes the listening port and
cuts open connections (clients get "connection refused", as from a stopped MinIO), `up()` listens again on the
same port with every object still there.

Everything listens on 127.0.0.1 only; `environment()` gives the variables every layer reads (boto3 and Beam:
AWS_ENDPOINT_URL; TensorFlow's S3 filesystem: S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL; the credentials).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto checks signatures only once its first unauthenticated actions are spent: these make the one user whose
# key every later request must be signed with (so wrong credentials are refused, HTTP 403, as by MinIO).
_SETUP_ACTIONS = 3
_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class S3Server:
    """`auth=True`: requests must be signed with the key of a user the server creates (wrong keys get HTTP 403).
    moto then checks every request against IAM, which costs CPU the other test worker needs: only the tests of
    refused credentials ask for it."""

    def __init__(self, auth: bool = False):
        self.auth = auth
        self.backend_port = free_port()
        self.port = free_port()
        self._process: Optional[subprocess.Popen] = None
        self._listener: Optional[socket.socket] = None
        self._connections: List[socket.socket] = []
        self._lock = threading.Lock()
        self.access_key = self.secret_key = ""

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def environment(self, **overrides: str) -> Dict[str, str]:
        env = {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
            "S3_ENDPOINT": self.endpoint,
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
        }
        env.update(overrides)
        return env

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> S3Server:
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(_SETUP_ACTIONS)) if self.auth else None
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.backend_port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection((HOST, self.backend_port), timeout=1).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        self.up()
        if self.auth:
            self._make_user()
        else:
            self.access_key, self.secret_key = "ftune-test", "ftune-test-secret"
        return self

    def _make_user(self) -> None:
        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name=REGION,
        )
        iam.create_user(UserName="ftune")
        iam.put_user_policy(UserName="ftune", PolicyName="all", PolicyDocument=_POLICY)
        key = iam.create_access_key(UserName="ftune")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]

    def stop(self) -> None:
        self.down()
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def up(self) -> None:
        """Listens on `port` again (same port), relaying to moto."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stops listening and cuts every open connection: clients see a server that went away."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it (close alone does not)
            except OSError:
                pass
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    # --- the relay ----------------------------------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except OSError:
                if self._listener is listener:
                    time.sleep(0.05)  # e.g. out of file descriptors for a moment: keep serving
                    continue
                return  # closed by down()
            try:
                backend = socket.create_connection((HOST, self.backend_port))
            except OSError:
                client.close()
                continue
            pair = [client, backend]
            with self._lock:
                self._connections += pair
            ended = threading.Semaphore(0)
            for source, sink in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(source, sink, pair, ended), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, pair, ended: threading.Semaphore) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            # The second direction to end closes both sockets (a relay that only shut them down ran out of file
            # descriptors during a long test module, and then stopped accepting).
            if ended.acquire(blocking=False):
                with self._lock:
                    for s in pair:
                        if s in self._connections:
                            self._connections.remove(s)
                for s in pair:
                    s.close()
            else:
                ended.release()

    # --- helpers for tests ------------------------------------------------------------------------------------

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_tree(self, local_dir: str, uri: str) -> int:
        """Copies a local folder to `s3://bucket/prefix/` (keys relative to it); returns the file count."""
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        client, count = self.client(), 0
        for dirpath, _, filenames in os.walk(local_dir):
            for name in filenames:
                path = os.path.join(dirpath, name)
                key = "/".join(p for p in (prefix.strip("/"), os.path.relpath(path, local_dir)) if p)
                client.upload_file(path, bucket, key)
                count += 1
        return count

    def read_bytes(self, uri: str) -> bytes:
        """The object at `s3://bucket/key` (the test process reads the bucket with boto3: it never loads
        tensorflow-io, whose S3 client aborts at interpreter exit)."""
        bucket, _, key = uri[len("s3://") :].partition("/")
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def read_json(self, uri: str):
        return json.loads(self.read_bytes(uri))

    def download_tree(self, uri: str, local_dir: str) -> List[str]:
        """Copies every object under `s3://bucket/prefix` into local_dir (same relative paths); returns the paths."""
        paths = []
        for name in self.keys(uri):
            if name and not name.endswith("/"):
                path = os.path.join(local_dir, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(self.read_bytes(f"{uri.rstrip('/')}/{name}"))
                paths.append(path)
        return paths

    def keys(self, uri: str) -> List[str]:
        """Every key under `s3://bucket/prefix`, relative to the prefix."""
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        paginator = self.client().get_paginator("list_objects_v2")
        names = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
        return sorted(names)
