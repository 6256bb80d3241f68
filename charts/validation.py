"""A plan checked against the instance catalogue and the environment config before anything is built."""
from __future__ import annotations

from typing import Dict, List

from charts.config import EnvConfig
from charts.constants import ACCELERATOR_RESOURCE
from contracts import ContractError, InstanceCatalogue, Plan, check_dns_label


def plan_errors(plan: Plan, instances: InstanceCatalogue, config: EnvConfig) -> List[str]:
    """Everything wrong with the plan for this environment, one line each (empty: good)."""
    errors: List[str] = []
    types = instances.by_name()
    seen: Dict[str, str] = {}
    for i, s in enumerate(plan.servers):
        where = f"servers[{i}] ({s.id})"
        t = types.get(s.instance_type)
        if t is None:
            errors.append(f"{where}: instance type {s.instance_type!r} is not in the instance catalogue "
                          f"(known: {', '.join(sorted(types))})")
        elif t.processor != s.processor:
            errors.append(f"{where}: processor {s.processor!r} but {s.instance_type} is a {t.processor} instance")
        want = ACCELERATOR_RESOURCE[s.processor]
        got = s.requests.accelerator.name if s.requests.accelerator else None
        if got != want:
            errors.append(f"{where}: a {s.processor} pod asks for accelerator {got!r}; it must ask for {want!r}")
        if not s.models:
            errors.append(f"{where}: has no models")
        for j, m in enumerate(s.models):
            try:
                check_dns_label(m)
            except ValueError as exc:
                errors.append(f"{where}.models[{j}]: {exc} (model ids become URL paths and label values)")
            if m in seen:
                errors.append(f"{where}.models[{j}]: model {m!r} is also on server {seen[m]}: model ids must be unique")
            seen[m] = s.id
        if s.processor not in config.images:
            errors.append(f"{where}: the config has no image for processor {s.processor!r} (images.{s.processor})")
        if s.replicas < config.min_replicas:
            errors.append(f"{where}: {s.replicas} replica(s), but environment {config.environment!r} wants at least "
                          f"{config.min_replicas}: plan with --min-replicas {config.min_replicas}")
        if s.requests.memory_mib <= 0 or s.memory_budget_mib <= 0:
            errors.append(f"{where}: requests.memory_mib and memory_budget_mib must be above 0")
    if not plan.servers:
        errors.append("the plan has no servers")
    return errors


def check_plan(plan: Plan, instances: InstanceCatalogue, config: EnvConfig, label: str = "plan") -> None:
    errors = plan_errors(plan, instances, config)
    if errors:
        more = f"\n(and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise ContractError("\n".join(f"{label}: {e}" for e in errors[:20]) + more)
