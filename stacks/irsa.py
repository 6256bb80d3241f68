"""IAM roles for service accounts: the one trust rule every pod role of the stacks uses."""
from __future__ import annotations

from aws_cdk import CfnJson
from aws_cdk import aws_eks_v2 as eks
from aws_cdk import aws_iam as iam
from constructs import Construct


def service_account_principal(scope: Construct, cluster: eks.ICluster, namespace: str,
                              service_account: str) -> iam.IPrincipal:
    """Who may assume a pod role: that ServiceAccount's tokens from the cluster's OIDC issuer, for STS only.
    The issuer is a token, so the condition keys go through CfnJson (created as `scope`'s TrustConditions)."""
    provider = cluster.open_id_connect_provider
    issuer = provider.open_id_connect_provider_issuer
    conditions = CfnJson(scope, "TrustConditions", value={
        f"{issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
        f"{issuer}:aud": "sts.amazonaws.com",
    })
    return iam.OpenIdConnectPrincipal(provider, conditions={"StringEquals": conditions})
