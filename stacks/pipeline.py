"""`modelfleet-pipeline`: CDK Pipelines (CodePipeline V2), dev -> staging -> prod.

- Source: a CodeConnections connection to the repository (`pipeline.connection_arn`, `.repository`,
  `.branch`, defaults in stacks/defaults.py, `-c pipeline.<key>=...` to override).
- Build (the synth step): `npx cdk synth -c tag=<commit> -c pipeline=true`, so every stage's Helm
  values and dist/manifests/ name the images of this commit, and a missing stage plan fails the build
  rather than dropping the pipeline from its own self-update.
- Images: one privileged CodeBuild step per processor, in parallel, before the first stage: each builds
  its image with `python -m serving build --processor P` and pushes it to the shared ECR repository
  tagged with the commit (skipped when that immutable tag exists already).
- One stage per environment, each from its own config/<env>.yaml and plan; a manual approval before
  prod; after each stage a step that fails unless that stage's smoke Job completed
  (stacks/smoke.py says how the Job's result is read), printing what an operator runs to see why.
- Every CodeBuild project has an explicit timeout (`TIMEOUTS_MINUTES`): CodeBuild's own default is
  an hour, which a cold Neuron image build can outrun and a hung synth should not use up.
"""
from __future__ import annotations

from typing import Any, Callable, List, Mapping, Sequence, Tuple

from aws_cdk import Duration, Environment, Stack, pipelines
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.settings import EnvSettings, as_list

PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
# The pins the build step installs from requirements.txt (a regular expression for grep -E).
SYNTH_PINS = "^(pydantic|PyYAML|aws-cdk|constructs|cdk-nag|cdk8s|jsii|numpy)[-a-z0-9._]*=="
# What `python -m serving build` imports (it runs docker; the contracts it names need pydantic and YAML).
IMAGE_PINS = "^(pydantic|PyYAML)[-a-z0-9._]*=="
# Minutes per CodeBuild project: the synth (two charts synths and a cdk synth of every stage, ~5 min
# on X_LARGE), an image (the Neuron and CUDA images are several GB: ~30-60 min cold), the smoke check
# (reads one output), and every other project CDK Pipelines makes (self-mutation, asset publishing).
TIMEOUTS_MINUTES = {"synth": 30, "image": 120, "smoke": 10, "default": 30}
TAG = 'TAG="${CODEBUILD_RESOLVED_SOURCE_VERSION}"'


def synth_commands() -> List[str]:
    return [f"export {TAG}", 'npx cdk synth -c tag="$TAG" -c pipeline=true']


def image_commands(processor: str, registry_uri: str, repository: str, region: str) -> List[str]:
    """Build and push one processor's image, tagged with the commit, unless that tag exists (tags are immutable)."""
    return [
        f"export {TAG}",
        f"aws ecr get-login-password --region {region} | docker login --username AWS --password-stdin {registry_uri}",
        f'aws ecr describe-images --region {region} --repository-name {repository} --image-ids imageTag="$TAG" '
        f'>/dev/null 2>&1 || .venv/bin/python -m serving build --processor {processor} '
        f'--tag "modelfleet-serving:$TAG" --push {registry_uri}/{repository}',
    ]


def smoke_check_commands(operator_commands: Sequence[str] = ()) -> List[str]:
    """Fail unless the smoke Job's conditions include Complete; on failure, print what to run."""
    how = "; ".join(operator_commands) or "kubectl logs of the smoke Job"
    return [
        'echo "smoke Job conditions: ${SMOKE_CONDITIONS}"',
        'case " ${SMOKE_CONDITIONS} " in *" Complete "*) echo "smoke test passed";; '
        f'*) echo "smoke test failed (conditions: ${{SMOKE_CONDITIONS}}); to see why, run: {how}" >&2; exit 1;; esac',
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
        install = [
            "npm ci",
            "python3 -m venv .venv",
            # Only what synth and `charts synth` import: requirements.txt's torch would pull a CUDA build.
            ".venv/bin/pip install --quiet $(grep -E '" + SYNTH_PINS + "' requirements.txt)",
        ]
        env = {"JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
        synth = pipelines.CodeBuildStep(
            "Build",
            input=source,
            install_commands=install,
            commands=synth_commands(),
            env=env,
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0, compute_type=codebuild.ComputeType.X_LARGE),
            timeout=Duration.minutes(TIMEOUTS_MINUTES["synth"]),
            primary_output_directory="cdk.out",
        )
        push = [
            iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(actions=[
                "ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:CompleteLayerUpload",
                "ecr:DescribeImages", "ecr:InitiateLayerUpload", "ecr:PutImage", "ecr:UploadLayerPart"],
                resources=repo_arns),
        ]
        # One step per processor, none depending on another: CodePipeline runs them side by side.
        self.image_steps = [pipelines.CodeBuildStep(
            f"Image-{p}",
            input=source,
            install_commands=["python3 -m venv .venv",
                              ".venv/bin/pip install --quiet $(grep -E '" + IMAGE_PINS + "' requirements.txt)"],
            commands=image_commands(p, registry_uri, repositories[p], registry.region),
            build_environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0, privileged=True,
                compute_type=codebuild.ComputeType.X_LARGE),
            timeout=Duration.minutes(TIMEOUTS_MINUTES["image"]),
            role_policy_statements=push,
        ) for p in PROCESSORS]
        self.pipeline = pipelines.CodePipeline(
            self, "Pipeline",
            pipeline_name="modelfleet",
            pipeline_type=codepipeline.PipelineType.V2,
            cross_account_keys=True,
            enable_key_rotation=True,
            synth=synth,
            code_build_defaults=pipelines.CodeBuildOptions(timeout=Duration.minutes(TIMEOUTS_MINUTES["default"])),
        )
        approval_before = set(as_list(pipeline.get("approval_before")))
        self.stages = []
        for i, (settings, make) in enumerate(stages):
            stage = make(self, settings.env)
            platform = stage.platform
            pre: List[pipelines.Step] = list(self.image_steps) if i == 0 else []
            if settings.env in approval_before:
                pre.append(pipelines.ManualApprovalStep(f"Approve-{settings.env}", comment=f"Promote to {settings.env}?"))
            post = []
            if platform.smoke_test is not None:
                post.append(pipelines.CodeBuildStep(
                    f"Smoke-{settings.env}",
                    env_from_cfn_outputs={"SMOKE_CONDITIONS": platform.smoke_test.output},
                    commands=smoke_check_commands(platform.smoke_test.commands),
                    timeout=Duration.minutes(TIMEOUTS_MINUTES["smoke"])))
            self.pipeline.add_stage(stage, pre=pre, post=post)
            self.stages.append(stage)
        # Build now rather than at synth, so the generated constructs (roles, buckets) exist when the
        # acknowledgements are applied.
        self.pipeline.build_pipeline()
