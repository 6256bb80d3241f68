"""`modelfleet-pipeline`: CDK Pipelines (CodePipeline V2), dev -> staging -> prod.

- Source: a CodeConnections connection to the repository (`pipeline.connection_arn`, `.repository`,
  `.branch`, defaults in stacks/defaults.py, `-c pipeline.<key>=...` to override).
- Build (the synth step, privileged CodeBuild): builds each server image with
  `python -m serving build --processor P`, pushes it to the shared ECR repository tagged with the
  commit (skipped when that immutable tag exists already), then `npx cdk synth -c tag=<commit>`, so
  every stage's Helm values name the images just pushed.
- One stage per environment, each from its own config/<env>.yaml and plan; a manual approval before
  prod; after each stage a step that fails unless that stage's smoke Job completed
  (stacks/smoke.py says how the Job's result is read).
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Sequence, Tuple

from aws_cdk import Environment, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.settings import EnvSettings, as_list

PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
# The pins the build step installs from requirements.txt (a regular expression for grep -E).
SYNTH_PINS = "^(pydantic|PyYAML|aws-cdk|constructs|cdk-nag|cdk8s|jsii|numpy)[-a-z0-9._]*=="


def build_commands(registry_uri: str, repositories: Mapping[str, str], region: str) -> List[str]:
    commands = [
        'export TAG="${CODEBUILD_RESOLVED_SOURCE_VERSION}"',
        f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry_uri}",
    ]
    for p in PROCESSORS:
        repo = repositories[p]
        commands.append(
            f'aws ecr describe-images --region {region} --repository-name {repo} --image-ids imageTag="$TAG" '
            f'>/dev/null 2>&1 || .venv/bin/python -m serving build --processor {p} '
            f'--tag "modelfleet-serving:$TAG" --push {registry_uri}/{repo}')
    commands += [
        'npx cdk synth -c tag="$TAG"',
    ]
    return commands


def smoke_check_commands() -> List[str]:
    return [
        'echo "smoke Job conditions: ${SMOKE_CONDITIONS}"',
        'case " ${SMOKE_CONDITIONS} " in *" Complete "*) echo "smoke test passed";; '
        '*) echo "smoke test failed: see kubectl -n <namespace> logs job/<smoke job>" >&2; exit 1;; esac',
    ]


class PipelineStack(Stack):
    def __init__(self, scope: Construct, id: str, *, pipeline: Mapping[str, Any], registry: Any,
                 repositories: Mapping[str, str],
                 stages: Sequence[Tuple[EnvSettings, Callable[[Construct, str], Any]]]) -> None:
        super().__init__(scope, id, stack_name="modelfleet-pipeline",
                         description="modelfleet: CDK Pipelines, dev -> staging -> prod",
                         env=Environment(account=str(pipeline["account"]), region=str(pipeline["region"])))
        source = pipelines.CodePipelineSource.connection(
            str(pipeline["repository"]), str(pipeline["branch"]), connection_arn=str(pipeline["connection_arn"]))
        registry_uri = f"{registry.account}.dkr.ecr.{registry.region}.amazonaws.com"
        repo_arns = [f"arn:aws:ecr:{registry.region}:{registry.account}:repository/{repositories[p]}"
                     for p in PROCESSORS]
        synth = pipelines.CodeBuildStep(
            "Build",
            input=source,
            install_commands=[
                "npm ci",
                "python3 -m venv .venv",
                # Only what synth and `charts synth` import: requirements.txt's torch would pull a CUDA build.
                ".venv/bin/pip install --quiet $(grep -E '" + SYNTH_PINS + "' requirements.txt)",
            ],
            commands=build_commands(registry_uri, repositories, registry.region),
            env={"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"},
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0, privileged=True,
                compute_type=codebuild.ComputeType.X_LARGE),
            role_policy_statements=[
                iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
                iam.PolicyStatement(actions=[
                    "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:CompleteLayerUpload",
                    "ecr:DescribeImages", "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
                    resources=repo_arns),
            ],
            primary_output_directory="cdk.out",
        )
        self.pipeline = pipelines.CodePipeline(
            self, "Pipeline",
            pipeline_name="modelfleet",
            pipeline_type=codepipeline.PipelineType.V2,
            cross_account_keys=True,
            enable_key_rotation=True,
            docker_enabled_for_synth=True,
            synth=synth,
        )
        approval_before = set(as_list(pipeline.get("approval_before")))
        self.stages = []
        for settings, make in stages:
            stage = make(self, settings.env)
            platform = stage.platform
            pre = [pipelines.ManualApprovalStep(f"Approve-{settings.env}",
                                                comment=f"Promote to {settings.env}?")] \
                if settings.env in approval_before else []
            post = []
            if platform.smoke_test is not None:
                post.append(pipelines.ShellStep(
                    f"Smoke-{settings.env}",
                    env_from_cfn_outputs={"SMOKE_CONDITIONS": platform.smoke_test.output},
                    commands=smoke_check_commands()))
            self.pipeline.add_stage(stage, pre=pre, post=post)
            self.stages.append(stage)
        # Build now rather than at synth, so the generated constructs (roles, buckets) exist when the
        # acknowledgements are applied.
        self.pipeline.build_pipeline()
