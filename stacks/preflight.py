"""`python -m stacks preflight --env ENV`: the EC2 vCPU quotas a deployment needs, before it trips on them.

EC2 limits running on-demand instances per quota family, counted in vCPUs, per account and region
(Service Quotas, service code `ec2`). A node group whose instances exceed it does not wait: its Auto
Scaling group's launches fail ("You have requested more vCPU capacity than your current vCPU limit
of N allows for the instance bucket that the specified instance type belongs to"), the managed node
group reports AsgInstanceLaunchFailures and ends CREATE_FAILED, and the plan's nodes never join. A
new account's G and VT and Inf quotas are often 0 or a few vCPUs.

The arithmetic is pure (`quota_family`, `quota_needs`, `compare`): every node group's instance type,
desired and maximum size (the system node group's too), times its vCPUs, summed per quota family. The
account's quotas are read through boto3's Service Quotas client (`get_service_quota`, falling back on
`get_aws_default_service_quota` where the account has no applied value) only where credentials exist;
without them the report says it could not look, and the exit status says so too.

Exit status: 0 every need fits; 1 the desired size exceeds a quota (the deploy will fail); 3 the
quotas could not be read (no credentials, or the call failed). Needs that fit at desired size but
not at maximum are reported as warnings (the cluster autoscaler will stop short), exit 0.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from stacks import defaults
from stacks.settings import REPO_ROOT, SettingsError, load_env, load_plan
from stacks.sizing import plan_node_groups

EXIT_OK, EXIT_SHORT, EXIT_UNKNOWN = 0, 1, 3

# Running On-Demand instance quotas (vCPUs), service code ec2: family -> (quota code, instance families).
QUOTA_FAMILIES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "Standard (A, C, D, H, I, M, R, T, Z)": ("L-1216C47A", ("a", "c", "d", "h", "i", "m", "r", "t", "z")),
    "G and VT": ("L-DB2E81BA", ("g", "vt")),
    "Inf": ("L-1945791B", ("inf",)),
    "P": ("L-417A185B", ("p",)),
    "F": ("L-74FC7D96", ("f",)),
    "X": ("L-7295265B", ("x",)),
    "DL": ("L-6E869C2A", ("dl",)),
    "Trn": ("L-2C3B7624", ("trn",)),
    "HPC": ("L-F7808C92", ("hpc",)),
}
_LETTERS = re.compile(r"^[a-z]+")


class NoCredentials(RuntimeError):
    """No AWS credentials where boto3 looks (environment, config files, instance or container role)."""


def quota_family(instance_type: str) -> str:
    """The vCPU quota family of an instance type: c5.xlarge -> Standard, g4dn.xlarge -> G and VT,
    inf1.xlarge -> Inf (the letters before the generation digit decide: "inf" is not "i")."""
    m = _LETTERS.match(instance_type.split(".", 1)[0])
    letters = m.group(0) if m else ""
    for name, (_, prefixes) in QUOTA_FAMILIES.items():
        if letters in prefixes:
            return name
    raise ValueError(f"instance type {instance_type!r}: no on-demand vCPU quota family known for {letters!r} "
                     f"(known: {', '.join(QUOTA_FAMILIES)})")


@dataclass(frozen=True)
class Group:
    instance_type: str
    desired: int
    max_size: int


@dataclass(frozen=True)
class Need:
    family: str
    quota_code: str
    desired_vcpu: int
    max_vcpu: int
    groups: Tuple[Group, ...]


def quota_needs(groups: Sequence[Group], vcpus: Mapping[str, int]) -> List[Need]:
    """vCPUs per quota family at desired and at maximum size, in QUOTA_FAMILIES' order."""
    by_family: Dict[str, List[Group]] = {}
    for g in groups:
        if g.instance_type not in vcpus:
            raise ValueError(f"instance type {g.instance_type}: its vCPU count is unknown (config/instances.yaml, "
                             "or SYSTEM_INSTANCE_VCPU in stacks/defaults.py for the system node group)")
        by_family.setdefault(quota_family(g.instance_type), []).append(g)
    return [Need(family=name, quota_code=QUOTA_FAMILIES[name][0],
                 desired_vcpu=sum(g.desired * vcpus[g.instance_type] for g in by_family[name]),
                 max_vcpu=sum(g.max_size * vcpus[g.instance_type] for g in by_family[name]),
                 groups=tuple(by_family[name]))
            for name in QUOTA_FAMILIES if name in by_family]


@dataclass(frozen=True)
class Verdict:
    need: Need
    quota: Optional[float]  # None: not known

    @property
    def status(self) -> str:
        if self.quota is None:
            return "unknown"
        if self.need.desired_vcpu > self.quota:
            return "short"
        if self.need.max_vcpu > self.quota:
            return "short at max"
        return "ok"


def compare(needs: Sequence[Need], quotas: Optional[Mapping[str, float]]) -> List[Verdict]:
    return [Verdict(n, None if quotas is None else quotas.get(n.quota_code)) for n in needs]


def exit_status(verdicts: Sequence[Verdict]) -> int:
    statuses = {v.status for v in verdicts}
    if "short" in statuses:
        return EXIT_SHORT
    if "unknown" in statuses:
        return EXIT_UNKNOWN
    return EXIT_OK


def report(env: str, account: str, region: str, verdicts: Sequence[Verdict], note: Optional[str]) -> str:
    lines = [f"EC2 on-demand vCPU quotas for {env} (account {account}, {region}):",
             f"  {'quota family':<38} {'code':<11} {'desired':>8} {'max':>6} {'quota':>7}  status"]
    for v in verdicts:
        quota = "?" if v.quota is None else f"{v.quota:g}"
        lines.append(f"  {v.need.family:<38} {v.need.quota_code:<11} {v.need.desired_vcpu:>8} {v.need.max_vcpu:>6} "
                     f"{quota:>7}  {v.status}")
        for g in v.need.groups:
            lines.append(f"      {g.instance_type}: {g.desired} nodes desired, {g.max_size} at most")
    if note:
        lines.append(note)
    for v in verdicts:
        if v.status == "short":
            lines.append(f"SHORT: {v.need.family} needs {v.need.desired_vcpu} vCPUs at desired size, the quota is "
                         f"{v.quota:g}: the node groups' instances would never launch (node group CREATE_FAILED, "
                         f"AsgInstanceLaunchFailures). Ask for more: aws service-quotas request-service-quota-increase "
                         f"--region {region} --service-code ec2 --quota-code {v.need.quota_code} "
                         f"--desired-value {v.need.max_vcpu}")
        elif v.status == "short at max":
            lines.append(f"WARNING: {v.need.family} fits at desired size but not at maximum ({v.need.max_vcpu} > "
                         f"{v.quota:g}): the cluster autoscaler will stop short of the node groups' max")
    lines.append("Node group updates also launch replacement nodes before draining old ones: leave some room.")
    return "\n".join(lines)


def account_quotas(region: str, codes: Sequence[str], session=None) -> Tuple[Dict[str, float], Optional[str]]:
    """{quota code: value} of the account the credentials belong to, and that account's id (None if STS
    cannot say). Raises NoCredentials where boto3 finds none."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    session = session or boto3.Session(region_name=region)
    if session.get_credentials() is None:
        raise NoCredentials("no AWS credentials found (environment, ~/.aws, instance or container role)")
    client = session.client("service-quotas", region_name=region)
    out: Dict[str, float] = {}
    for code in codes:
        try:
            value = client.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        except client.exceptions.NoSuchResourceException:
            value = client.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"]
        out[code] = float(value)
    try:
        caller = session.client("sts", region_name=region).get_caller_identity()["Account"]
    except (BotoCoreError, ClientError):
        caller = None
    return out, caller


def vcpu_table(instances_path: Path) -> Dict[str, int]:
    data = yaml.safe_load(instances_path.read_text()) or {}
    table = {str(i["name"]): int(i["vcpu"]) for i in data.get("instances", [])}
    return {**defaults.SYSTEM_INSTANCE_VCPU, **table}


def groups_for(env: str, *, plan: Optional[str] = None, config_dir: Optional[Path] = None):
    settings = load_env(env, plan=plan, config_dir=config_dir)
    specs = plan_node_groups(load_plan(settings), burst_factor=settings.burst_factor,
                             allowed_families=settings.allowed_instance_families, label=str(settings.plan_path))
    groups = [Group(settings.system_instance_type, settings.system_nodes, settings.system_max_nodes)]
    groups += [Group(s.instance_type, s.desired, s.max_size) for s in specs]
    return settings, groups


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stacks preflight", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, choices=list(defaults.ENVIRONMENTS))
    p.add_argument("--plan", default=None, help="plan.json (default: the config's stacks.plan)")
    p.add_argument("--instances", type=Path, default=REPO_ROOT / "config" / "instances.yaml")
    args = p.parse_args(argv)
    try:
        settings, groups = groups_for(args.env, plan=args.plan)
        needs = quota_needs(groups, vcpu_table(args.instances))
    except (SettingsError, ValueError) as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    note: Optional[str] = None
    quotas: Optional[Dict[str, float]] = None
    try:
        quotas, caller = account_quotas(settings.region, [n.quota_code for n in needs])
        if caller and caller != settings.account:
            note = (f"NOTE: these are the quotas of account {caller} (your credentials), not of {settings.account} "
                    f"(config/{args.env}.yaml irsa.account)")
    except NoCredentials as exc:
        note = (f"COULD NOT LOOK: {exc}, so the account's quotas were not compared. Run again with credentials "
                f"for account {settings.account}, or compare by hand: aws service-quotas get-service-quota "
                f"--region {settings.region} --service-code ec2 --quota-code CODE")
    except Exception as exc:  # a failed AWS call: say so, do not pretend the quotas fit
        detail = " ".join(str(exc).split())[:300]
        note = f"COULD NOT LOOK: reading the quotas failed ({type(exc).__name__}: {detail}), so they were not compared"
    verdicts = compare(needs, quotas)
    print(report(args.env, settings.account, settings.region, verdicts, note))
    return exit_status(verdicts)
