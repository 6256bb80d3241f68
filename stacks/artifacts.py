"""Artifacts: the model store's S3 bucket (SSE-KMS, versioning, no public access, TLS only, access logs)."""
from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct


class ArtifactStore(Construct):
    """Props in: bucket name (None: generated), removal policy. Out: `bucket`, `logs_bucket`, `key`."""

    def __init__(self, scope: Construct, id: str, *, bucket_name: str | None = None,
                 retain: bool = True, noncurrent_days: int = 90) -> None:
        super().__init__(scope, id)
        removal = RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY
        self.key = kms.Key(self, "Key", enable_key_rotation=True, removal_policy=removal,
                           description="modelfleet artifact store (SSE-KMS)")
        # Server access logs go to a bucket of their own; S3 log delivery needs SSE-S3 there.
        self.logs_bucket = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365),
                                              noncurrent_version_expiration=Duration.days(30))],
            removal_policy=removal,
            auto_delete_objects=False,
        )
        self.bucket = s3.Bucket(
            self, "Bucket",
            bucket_name=bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            versioned=True,
            server_access_logs_bucket=self.logs_bucket,
            server_access_logs_prefix="artifacts/",
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(noncurrent_version_expiration=Duration.days(noncurrent_days),
                                              abort_incomplete_multipart_upload_after=Duration.days(7))],
            removal_policy=removal,
        )
