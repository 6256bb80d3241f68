"""s3:// stores: s3://bucket/prefix, through boto3.

Options go in the URI's query string (so a single STORE_URI carries them into pods):
  endpoint_url=http://127.0.0.1:5000   an S3-compatible endpoint (else boto3 reads AWS_ENDPOINT_URL itself)
  region=eu-west-1                     else AWS_DEFAULT_REGION, else AWS_REGION, else us-east-1
  max_attempts=8                       retries after a call's first request, as botocore counts them (0: none);
                                       "standard" mode, so with exponential backoff
  connect_timeout=5, read_timeout=60   seconds
Objects are written whole by PUT (or a multipart upload completed at once), so readers never see a part.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import boto3
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from store.base import FILE_MODE, Store, check_key, check_prefix
from store.errors import NotFoundError, StoreError

T = TypeVar("T")

MULTIPART_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 60.0
TRANSFER = TransferConfig(multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=8)

_CONNECTION_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


# One boto3 session for the process: making a client from a fresh session reloads the service model (~0.2 s),
# from a warm one it takes ~15 ms. Sessions are not thread-safe, so clients are made under a lock; clients are.
_SESSION: boto3.session.Session | None = None
_SESSION_LOCK = threading.Lock()


def _client(**kwargs: Any) -> Any:
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client("s3", **kwargs)


class S3Store(Store):
    read_workers = 16

    def __init__(
        self,
        uri: str,
        bucket: str,
        prefix: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max(self.read_workers, TRANSFER.max_request_concurrency),
        )
        self.client = _client(endpoint_url=endpoint_url, region_name=region, config=config)

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read_bytes(self, key: str) -> bytes:
        full = self.object_key(check_key(key))
        return self._call(key, lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self.object_key(check_key(key))
        self._call(key, lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data))

    def upload_file(self, local_path: Path, key: str) -> None:
        full = self.object_key(check_key(key))
        if not Path(local_path).is_file():
            raise StoreError(f"cannot upload {local_path} to {self.describe(key)}: no such file")
        self._call(key, lambda: self.client.upload_file(str(local_path), self.bucket, full, Config=TRANSFER))

    def download_file(self, key: str, local_path: Path) -> None:
        full = self.object_key(check_key(key))
        target = Path(local_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            self._call(key, lambda: self.client.download_file(self.bucket, full, tmp, Config=TRANSFER))
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def exists(self, key: str) -> bool:
        full = self.object_key(check_key(key))
        try:
            self._call(key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except NotFoundError:
            return False
        return True

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        check_prefix(prefix)
        full = self.object_key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0

        def run() -> dict[str, int]:
            found: dict[str, int] = {}
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for obj in page.get("Contents", []):
                    found[obj["Key"][strip:]] = obj["Size"]
            return found

        return self._call(prefix or "(everything)", run)

    def _call(self, key: str, action: Callable[[], T]) -> T:
        """Run one boto3 call, turning its errors into StoreErrors that say what to fix."""
        try:
            return action()
        except botocore.exceptions.ClientError as exc:
            raise self._client_error(key, exc) from None
        except boto3.exceptions.S3UploadFailedError as exc:
            cause = exc.__context__
            if isinstance(cause, botocore.exceptions.ClientError):
                raise self._client_error(key, cause) from None
            raise StoreError(f"upload to {self.describe(key)} failed: {exc}") from None
        except _CONNECTION_ERRORS as exc:
            where = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "the AWS S3 endpoint"
            raise StoreError(
                f"cannot reach {where} for store {self.uri} ({exc}): check the network, the endpoint_url "
                "in the store URI or AWS_ENDPOINT_URL, and that the S3 service is running"
            ) from None
        except botocore.exceptions.NoCredentialsError:
            raise StoreError(
                f"no AWS credentials for store {self.uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
                "or run with a role (IRSA / instance profile) that can read the bucket"
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"S3 request for {self.describe(key)} failed: {exc}") from None

    def _client_error(self, key: str, exc: botocore.exceptions.ClientError) -> StoreError:
        error: dict[str, Any] = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StoreError(f"bucket {self.bucket!r} does not exist (store {self.uri}): create it or fix the bucket in the store URI")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NotFoundError(self.not_found(key))
        if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
            return StoreError(
                f"access denied to {self.describe(key)}: give this role s3:GetObject, s3:PutObject and s3:ListBucket "
                f"on bucket {self.bucket!r}, or use credentials that have them"
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return StoreError(f"AWS rejected the credentials for store {self.uri} ({code}): refresh or fix them")
        return StoreError(f"S3 error for {self.describe(key)}: {code or status}: {error.get('Message', exc)}")
