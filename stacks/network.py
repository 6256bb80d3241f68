"""Network: a VPC over 2-3 AZs, nodes in private subnets, S3 gateway and ECR interface endpoints."""
from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct


class Network(Construct):
    """Props in: CIDR, AZ count, NAT gateways, flow-log retention. Out: `vpc`."""

    def __init__(self, scope: Construct, id: str, *, cidr: str, max_azs: int, nat_gateways: int,
                 log_retention_days: int, cluster_name: str) -> None:
        super().__init__(scope, id)
        if not 2 <= max_azs <= 3:
            raise ValueError(f"max_azs must be 2 or 3, got {max_azs}")
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(cidr),
            max_azs=max_azs,
            nat_gateways=nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                # /19 per AZ: the VPC CNI gives every pod a VPC address.
                ec2.SubnetConfiguration(name="nodes", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                                        cidr_mask=19),
            ],
            restrict_default_security_group=True,
        )
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=retention(log_retention_days),
                                  removal_policy=RemovalPolicy.DESTROY)
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                              traffic_type=ec2.FlowLogTrafficType.REJECT)
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        # Image layers and the model store come through S3: the gateway endpoint is free.
        self.vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[private])
        # Multi-GB Neuron/CUDA images are pulled through these, not through the NAT gateways. HTTPS from
        # inside the VPC only (its CIDR as a literal, so the rule is reviewable in the template).
        endpoints_sg = ec2.SecurityGroup(self, "EndpointsSg", vpc=self.vpc, allow_all_outbound=False,
                                         description="ECR interface endpoints: HTTPS from the VPC")
        endpoints_sg.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), "HTTPS from the VPC")
        for name, service in (("EcrApi", ec2.InterfaceVpcEndpointAwsService.ECR),
                              ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER)):
            self.vpc.add_interface_endpoint(name, service=service, subnets=private, private_dns_enabled=True,
                                            security_groups=[endpoints_sg], open=False)
        # Subnet tags the load balancer controller and the cluster look for.
        for subnet in self.vpc.private_subnets:
            _tag(subnet, "kubernetes.io/role/internal-elb", "1")
            _tag(subnet, f"kubernetes.io/cluster/{cluster_name}", "shared")
        for subnet in self.vpc.public_subnets:
            _tag(subnet, "kubernetes.io/role/elb", "1")


def _tag(scope: Construct, key: str, value: str) -> None:
    from aws_cdk import Tags

    Tags.of(scope).add(key, value)


_RETENTION = {1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS", 30: "ONE_MONTH",
              60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS", 150: "FIVE_MONTHS", 180: "SIX_MONTHS",
              365: "ONE_YEAR", 400: "THIRTEEN_MONTHS", 545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS"}


def retention(days: int) -> logs.RetentionDays:
    if days in _RETENTION:
        return getattr(logs.RetentionDays, _RETENTION[days])
    raise ValueError(f"log_retention_days {days} is not a CloudWatch Logs retention (e.g. 30, 90, 365)")
