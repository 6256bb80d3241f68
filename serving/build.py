"""The build step: `python -m serving build --processor cpu|gpu|inf1|inf2` builds the server's image.

It runs `docker build -f serving/docker/Dockerfile.<processor> -t <tag> .` from the repository root
(the build context), and with --push REPO also tags the image REPO:<tag's tag part> and pushes it (log
in to the registry first, e.g. `aws ecr get-login-password | docker login ...`). Where no Docker engine
answers it says so and prints the exact command to run elsewhere (exit 2); --dry-run only prints it.

Standard library only, Python 3.10: this module is copied into every image with the rest of serving/.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

PROCESSORS = ("cpu", "gpu", "inf1", "inf2")
REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER_DIR = "serving/docker"
IMAGE_NAME = "modelfleet-serving"
# Every node type of the fleet (c5, g4dn, inf1, inf2) is x86_64: say so, so a build on an arm64 laptop
# does not produce an image the nodes cannot run.
PLATFORM = "linux/amd64"
ENGINE_CHECK_TIMEOUT_S = 20.0
EXIT_NO_ENGINE = 2


def dockerfile_for(processor: str) -> str:
    """The Dockerfile of `processor`, relative to the repository root."""
    if processor not in PROCESSORS:
        raise ValueError(f"unknown processor {processor!r}: expected one of {', '.join(PROCESSORS)}")
    return f"{DOCKER_DIR}/Dockerfile.{processor}"


def default_tag(processor: str) -> str:
    return f"{IMAGE_NAME}:{processor}"


def build_command(processor: str, tag: str, extra_tags: Sequence[str] = ()) -> List[str]:
    """The `docker build` command line for `processor`, to run from the repository root."""
    command = ["docker", "build", "--platform", PLATFORM, "-f", dockerfile_for(processor), "-t", tag]
    for extra in extra_tags:
        command += ["-t", extra]
    command.append(".")
    return command


def push_reference(repo: str, tag: str) -> str:
    """REPO:<tag part of `tag`> (modelfleet-serving:cpu pushed to 1234.dkr.ecr...../serving -> ...serving:cpu)."""
    repo = repo.strip()
    if not repo or any(c.isspace() for c in repo):
        raise ValueError(f"--push takes a repository such as 123456789012.dkr.ecr.us-east-1.amazonaws.com/modelfleet-serving, got {repo!r}")
    last = repo.rsplit("/", 1)[-1]
    if ":" in last or "@" in repo:
        raise ValueError(f"--push takes a repository without a tag or digest, got {repo!r}: the tag comes from --tag")
    name = tag.rsplit("/", 1)[-1]
    suffix = name.split(":", 1)[1] if ":" in name else "latest"
    return f"{repo}:{suffix}"


def push_command(reference: str) -> List[str]:
    return ["docker", "push", reference]


def docker_engine_problem(timeout_s: float = ENGINE_CHECK_TIMEOUT_S) -> Optional[str]:
    """None when a Docker engine answers `docker info`, else a one-line reason."""
    if shutil.which("docker") is None:
        return "docker info failed: the docker command is not installed"
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                                timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return f"docker info failed: no answer within {timeout_s:g} s"
    except OSError as exc:
        return f"docker info failed: {exc}"
    if result.returncode != 0 or not result.stdout.strip():
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        # The client prints its own section first; the engine's error is the last line.
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        return f"docker info failed: {detail}"
    return None


def add_build_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `build` on the subparsers object of `python -m serving` (serving/cli.py)."""
    p = sub.add_parser(
        "build",
        help="build the server's image for one processor (docker build)",
        description="Build the model server's image: docker build -f serving/docker/Dockerfile.<processor> -t <tag> . "
                    "from the repository root. Exit 2 where no Docker engine is reachable.",
    )
    p.add_argument("--processor", required=True, choices=PROCESSORS, help="which image: cpu (c5), gpu (g4dn), inf1, inf2")
    p.add_argument("--tag", default=None, help="image tag (default modelfleet-serving:<processor>)")
    p.add_argument("--push", default=None, metavar="REPO",
                   help="also tag the image REPO:<tag part of --tag> and push it (log in to the registry first)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and run nothing")
    p.set_defaults(func=run_build)
    return p


def plan(processor: str, tag: Optional[str], push: Optional[str]) -> Tuple[List[str], Optional[List[str]]]:
    """The build command and the push command (None without --push)."""
    tag = tag or default_tag(processor)
    if not tag.strip() or any(c.isspace() for c in tag):
        raise ValueError(f"--tag must be an image reference such as {default_tag(processor)}, got {tag!r}")
    if push is None:
        return build_command(processor, tag), None
    reference = push_reference(push, tag)
    return build_command(processor, tag, extra_tags=[reference]), push_command(reference)


def run_build(args: argparse.Namespace) -> int:
    """The `build` subcommand. Returns the exit code."""
    try:
        build, push = plan(args.processor, args.tag, args.push)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = f"(cd {shlex.quote(str(REPO_ROOT))} && {shlex.join(build)})"
    if push is not None:
        shown = f"(cd {shlex.quote(str(REPO_ROOT))} && {shlex.join(build)} && {shlex.join(push)})"
    if args.dry_run:
        print(shown)
        return 0
    problem = docker_engine_problem()
    if problem is not None:
        print(f"error: no Docker engine is reachable here ({problem}); build on a machine with Docker, or in CI, with:\n"
              f"  {shown}", file=sys.stderr)
        return EXIT_NO_ENGINE
    env = dict(os.environ, DOCKER_BUILDKIT="1")  # BuildKit reads serving/docker/Dockerfile.<p>.dockerignore
    print(f"+ {shlex.join(build)}", flush=True)
    code = subprocess.run(build, cwd=REPO_ROOT, env=env, check=False).returncode
    if code != 0:
        print(f"error: docker build failed with exit status {code}", file=sys.stderr)
        return code
    if push is not None:
        print(f"+ {shlex.join(push)}", flush=True)
        code = subprocess.run(push, cwd=REPO_ROOT, env=env, check=False).returncode
        if code != 0:
            print(f"error: docker push failed with exit status {code} (logged in to {push[-1].split('/', 1)[0]}?)", file=sys.stderr)
            return code
    return 0


def main_for_tests(argv: Optional[Sequence[str]] = None) -> int:
    """`build` through a parser of its own, as serving/cli.py wires it: main_for_tests(["build", "--processor", "cpu"])."""
    parser = argparse.ArgumentParser(prog="python -m serving")
    sub = parser.add_subparsers(dest="command", required=True)
    add_build_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main_for_tests(["build", *sys.argv[1:]]))
