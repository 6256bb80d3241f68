"""Registry: one ECR repository per processor image (scan on push, immutable tags, lifecycle).

The repositories live in the shared stack (the pipeline's account); the stage accounts get pull
access through the repository policy. A single-account deployment deploys the same shared stack.
"""
from __future__ import annotations

from typing import Dict, Sequence

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from constructs import Construct

PULL_ACTIONS = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]


class ImageRegistry(Construct):
    """Props in: repository names per processor, the accounts that pull, how many images to keep.
    Out: `repositories` {processor: Repository}."""

    def __init__(self, scope: Construct, id: str, *, names: Dict[str, str], pull_accounts: Sequence[str],
                 keep_images: int, retain: bool = True) -> None:
        super().__init__(scope, id)
        self.repositories: Dict[str, ecr.Repository] = {}
        for processor, name in sorted(names.items()):
            repo = ecr.Repository(
                self, f"Repo-{processor}",
                repository_name=name,
                image_scan_on_push=True,
                image_tag_mutability=ecr.TagMutability.IMMUTABLE,
                encryption=ecr.RepositoryEncryption.AES_256,
                removal_policy=RemovalPolicy.RETAIN if retain else RemovalPolicy.DESTROY,
                lifecycle_rules=[
                    ecr.LifecycleRule(description="untagged layers of failed pushes",
                                      tag_status=ecr.TagStatus.UNTAGGED,
                                      max_image_age=Duration.days(7), rule_priority=1),
                    ecr.LifecycleRule(description=f"keep the last {keep_images} images",
                                      tag_status=ecr.TagStatus.ANY, max_image_count=keep_images, rule_priority=2),
                ],
            )
            for account in sorted(set(pull_accounts)):
                repo.add_to_resource_policy(iam.PolicyStatement(
                    sid=f"Pull{account}",
                    principals=[iam.AccountPrincipal(account)],
                    actions=PULL_ACTIONS,
                ))
            self.repositories[processor] = repo

