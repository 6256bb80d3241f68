"""The app tests/test_stacks_observability.py synthesizes, in a process of its own: one CDK App holding the
platforms of several environments at once (each `build_platform`, exactly as stacks/app.py builds it, from its
own config, overrides and plan), with cdk-nag and the acknowledgements on, as `build_app` does.

    python -m tests.observability_app OUTDIR CASES_JSON

CASES_JSON: [{"env", "plan", "overrides", "dist_cache"}, ...], one environment at most once.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def build(outdir: str, cases: list) -> None:
    from aws_cdk import App, Validations

    from stacks.app import env_inputs, file_context
    from stacks.nag import apply_acknowledgements, nag_pack
    from stacks.platform import build_platform
    from stacks.settings import load_env

    app = App(context=file_context(), outdir=outdir)
    variables = []
    for case in cases:
        settings = load_env(case["env"], plan=case["plan"], overrides=case.get("overrides"))
        inputs = env_inputs(settings, None, case["dist_cache"])
        build_platform(app, settings, inputs.plan, dist=inputs.dist, cluster_objects=inputs.cluster_objects,
                       gateway_host=inputs.gateway_host, top_level=True)
        variables.append({"env": settings.env, "account": settings.account, "region": settings.region,
                          "bucket": settings.bucket_name, "pipeline_account": settings.account})
    apply_acknowledgements(app, variables)
    Validations.of(app).add_plugins(nag_pack(app))
    app.synth()


if __name__ == "__main__":
    build(sys.argv[1], json.loads(sys.argv[2]))
