"""Data contracts shared by every step (ARCHITECTURE.md, "Data contracts")."""
from contracts.loading import ContractError, load, parse, read_data, write_atomic, write_json_atomic
from contracts.models import (
    PROCESSORS,
    Accelerator,
    InstanceCatalogue,
    InstanceType,
    LatencyPoint,
    ModelCatalogue,
    ModelSpec,
    Placement,
    Plan,
    Predicted,
    PreviousPlan,
    Processor,
    Profile,
    ReferenceProfile,
    ReferenceProfiles,
    Requests,
    Resources,
    Routes,
    Server,
    check_dns_label,
)

__all__ = [
    "PROCESSORS", "Accelerator", "ContractError", "InstanceCatalogue", "InstanceType", "LatencyPoint",
    "ModelCatalogue", "ModelSpec", "Placement", "Plan", "Predicted", "PreviousPlan", "Processor",
    "Profile", "ReferenceProfile", "ReferenceProfiles", "Requests", "Resources", "Routes", "Server", "check_dns_label", "load", "parse",
    "read_data", "write_atomic", "write_json_atomic",
]
