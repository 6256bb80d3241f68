"""Data contracts shared by every step (ARCHITECTURE.md, "Data contracts")."""
from contracts.loading import ContractError, load, parse, parse_json, read_data, write_atomic, write_json_atomic
from contracts.models import (
    PROCESSORS,
    Accelerator,
    ArtifactFile,
    BundleManifest,
    Check,
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
    ServerBase,
    StoreEntry,
    check_dns_label,
    check_sha256,
)

__all__ = [
    "PROCESSORS", "Accelerator", "ArtifactFile", "BundleManifest", "Check", "ContractError",
    "InstanceCatalogue", "InstanceType", "LatencyPoint", "ModelCatalogue", "ModelSpec", "Placement", "Plan",
    "Predicted", "PreviousPlan", "Processor", "Profile", "ReferenceProfile", "ReferenceProfiles", "Requests",
    "Resources", "Routes", "Server", "ServerBase", "StoreEntry", "check_dns_label", "check_sha256", "load", "parse", "parse_json",
    "read_data", "write_atomic", "write_json_atomic",
]
