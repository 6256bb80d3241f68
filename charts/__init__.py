"""cdk8s charts from a plan and an environment config (ARCHITECTURE.md, "Getting manifests to the cluster").

`python -m charts synth --plan plan.json --config config/dev.yaml --out dist/`. The constructs are
`charts.server.ModelServer`, `charts.cluster.ClusterWide` and `charts.routes.ServerRoutes`; the names
the stacks share (taint keys, labels) are in `charts.constants`, which imports no cdk8s.
"""
import os

# jsii prints a banner on every start under Node 20; the versions pinned here work with it.
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
