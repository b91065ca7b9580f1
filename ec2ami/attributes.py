"""One declaration per launch attribute: what an instance runs with that its image forgets.

Each entry below is the one place an attribute is described. From it come:

- the launch record: the backup reads the attribute off the instance (read) and records
  it under key, unless it has the record's default;
- the plan: the restore takes the setting, else the record, else default;
- the RunInstances argument (send), and the reference's row (api);
- the read-back after launch (read again, on the new instance) and the twin comparison.

Interfaces, addresses, Elastic IPs and load balancers are structured, with functions of
their own (ec2ami.backup.look, ec2ami.restore.network); these are the scalar attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ec2ami.contract import LAUNCH_DEFAULTS
from ec2ami.facts import BURSTABLE_RE

Reader = Callable[[dict, dict], Any]  # (DescribeInstances entry, GetLaunchTemplateData) -> value
Sender = Callable[[Any], dict[str, Any]]  # the chosen value -> RunInstances arguments
MONITORING_ON = ("enabled", "pending")


@dataclass(frozen=True)
class LaunchAttribute:
    """One attribute: its name in the record, the plan, the settings and RunInstances."""

    key: str  # in the launch record (LAUNCH_DEFAULTS)
    label: str  # in the plan, the dry run, the twin check and the docs
    setting: str | None  # the restore setting that overrides it (None: as recorded)
    api: str  # where RunInstances takes it, for the reference
    read: Reader
    send: Sender
    option: tuple[str, str] | None = None  # (dict setting, its key) that also overrides it
    data_key: str | None = None  # read from GetLaunchTemplateData, not DescribeInstances
    false_means_none: bool = False  # a setting of False leaves it out of the launch
    ec2_chooses: bool = False  # planned None: EC2 picks, so the twin has nothing to compare
    applies: Callable[[str], bool] = lambda instance_type: True  # on this instance type

    @property
    def default(self) -> Any:
        """What the restore plans when neither a setting nor the record says."""
        return "required" if self.key == "http_tokens" else LAUNCH_DEFAULTS[self.key]


def placement(name: str) -> Reader:
    return lambda instance, _: instance.get("Placement", {}).get(name)


def in_placement(name: str) -> Sender:
    return lambda value: {"Placement": {} if value is None else {name: value}}


def metadata(name: str) -> Reader:
    return lambda instance, _: instance.get("MetadataOptions", {}).get(name)


def dns_name(name: str) -> Reader:
    return lambda instance, _: instance.get("PrivateDnsNameOptions", {}).get(name)


def from_data(name: str) -> Reader:
    return lambda _, data: data.get(name)


def flag(section: str, name: str) -> Reader:
    return lambda instance, _: bool(instance.get(section, {}).get(name))


def only_if(arguments: Callable[[Any], dict[str, Any]]) -> Sender:
    return lambda value: arguments(value) if value else {}


def cpu_options(instance: dict, _: dict) -> dict | None:
    cpu = instance.get("CpuOptions", {})
    return {k: cpu[k] for k in ("CoreCount", "ThreadsPerCore") if k in cpu} or None


def credits(instance: dict, data: dict) -> str | None:
    if not BURSTABLE_RE.match(instance.get("InstanceType", "")):
        return None
    return data.get("CreditSpecification", {}).get("CpuCredits")


def reservation(instance: dict, _: dict) -> str:
    spec = instance.get("CapacityReservationSpecification", {})
    return spec.get("CapacityReservationPreference", "open")


def burstable(instance_type: str) -> bool:
    return bool(BURSTABLE_RE.match(instance_type))


ATTRIBUTES: tuple[LaunchAttribute, ...] = (
    LaunchAttribute("tenancy", "tenancy", "TENANCY", "Placement.Tenancy",
                    placement("Tenancy"), in_placement("Tenancy")),
    LaunchAttribute("placement_group", "placement group", "PLACEMENT_GROUP",
                    "Placement.GroupName", lambda i, _: placement("GroupName")(i, _) or None,
                    in_placement("GroupName"), false_means_none=True),
    LaunchAttribute("partition", "partition", None, "Placement.PartitionNumber",
                    placement("PartitionNumber"), in_placement("PartitionNumber"),
                    ec2_chooses=True),
    LaunchAttribute("host_id", "host", "HOST_ID", "Placement.HostId", placement("HostId"),
                    in_placement("HostId"), false_means_none=True, ec2_chooses=True),
    LaunchAttribute("host_resource_group", "host resource group", None,
                    "Placement.HostResourceGroupArn", placement("HostResourceGroupArn"),
                    in_placement("HostResourceGroupArn"), ec2_chooses=True),
    LaunchAttribute("affinity", "affinity", None, "Placement.Affinity", placement("Affinity"),
                    in_placement("Affinity"), ec2_chooses=True),
    LaunchAttribute("cpu_options", "CPU options", "CPU_OPTIONS", "CpuOptions", cpu_options,
                    only_if(lambda v: {"CpuOptions": dict(v)}), false_means_none=True,
                    ec2_chooses=True),
    LaunchAttribute("credits", "CPU credits", "CREDIT_SPECIFICATION",
                    "CreditSpecification.CpuCredits", credits,
                    only_if(lambda v: {"CreditSpecification": {"CpuCredits": v}}),
                    ec2_chooses=True, applies=burstable),
    LaunchAttribute("ebs_optimized", "EBS-optimized", "EBS_OPTIMIZED", "EbsOptimized",
                    lambda i, _: bool(i.get("EbsOptimized")),
                    lambda v: {"EbsOptimized": bool(v)}),
    LaunchAttribute("hibernation", "hibernation", None, "HibernationOptions.Configured",
                    flag("HibernationOptions", "Configured"),
                    only_if(lambda v: {"HibernationOptions": {"Configured": True}})),
    LaunchAttribute("nitro_enclave", "Nitro Enclaves", None, "EnclaveOptions.Enabled",
                    flag("EnclaveOptions", "Enabled"),
                    only_if(lambda v: {"EnclaveOptions": {"Enabled": True}})),
    LaunchAttribute("capacity_reservation", "capacity reservation", None,
                    "CapacityReservationSpecification.CapacityReservationPreference",
                    reservation,
                    lambda v: {} if v in (None, "open") else {
                        "CapacityReservationSpecification": {"CapacityReservationPreference": v}}),
    LaunchAttribute("http_tokens", "IMDS tokens", "IMDSV2", "MetadataOptions.HttpTokens",
                    metadata("HttpTokens"), lambda v: {"MetadataOptions": {"HttpTokens": v}},
                    option=("METADATA_OPTIONS", "HttpTokens")),
    LaunchAttribute("http_hop_limit", "IMDS hop limit", None,
                    "MetadataOptions.HttpPutResponseHopLimit",
                    metadata("HttpPutResponseHopLimit"),
                    lambda v: {"MetadataOptions": {"HttpPutResponseHopLimit": v}},
                    option=("METADATA_OPTIONS", "HttpPutResponseHopLimit")),
    LaunchAttribute("http_endpoint", "IMDS endpoint", None, "MetadataOptions.HttpEndpoint",
                    metadata("HttpEndpoint"), lambda v: {"MetadataOptions": {"HttpEndpoint": v}},
                    option=("METADATA_OPTIONS", "HttpEndpoint")),
    LaunchAttribute("http_ipv6", "IMDS IPv6 endpoint", None, "MetadataOptions.HttpProtocolIpv6",
                    metadata("HttpProtocolIpv6"),
                    lambda v: {"MetadataOptions": {"HttpProtocolIpv6": v}},
                    option=("METADATA_OPTIONS", "HttpProtocolIpv6")),
    LaunchAttribute("metadata_tags", "IMDS instance tags", None,
                    "MetadataOptions.InstanceMetadataTags", metadata("InstanceMetadataTags"),
                    lambda v: {"MetadataOptions": {"InstanceMetadataTags": v}},
                    option=("METADATA_OPTIONS", "InstanceMetadataTags")),
    LaunchAttribute("hostname_type", "host name type", None,
                    "PrivateDnsNameOptions.HostnameType", dns_name("HostnameType"),
                    lambda v: {"PrivateDnsNameOptions": {"HostnameType": v}},
                    option=("PRIVATE_DNS_NAME_OPTIONS", "HostnameType")),
    LaunchAttribute("dns_a_record", "DNS A record", None,
                    "PrivateDnsNameOptions.EnableResourceNameDnsARecord",
                    dns_name("EnableResourceNameDnsARecord"),
                    lambda v: {"PrivateDnsNameOptions": {"EnableResourceNameDnsARecord": v}},
                    option=("PRIVATE_DNS_NAME_OPTIONS", "EnableResourceNameDnsARecord")),
    LaunchAttribute("dns_aaaa_record", "DNS AAAA record", None,
                    "PrivateDnsNameOptions.EnableResourceNameDnsAAAARecord",
                    dns_name("EnableResourceNameDnsAAAARecord"),
                    lambda v: {"PrivateDnsNameOptions": {"EnableResourceNameDnsAAAARecord": v}},
                    option=("PRIVATE_DNS_NAME_OPTIONS", "EnableResourceNameDnsAAAARecord")),
    LaunchAttribute("termination_protection", "termination protection",
                    "TERMINATION_PROTECTION", "DisableApiTermination",
                    from_data("DisableApiTermination"),
                    lambda v: {"DisableApiTermination": bool(v)},
                    data_key="DisableApiTermination"),
    LaunchAttribute("stop_protection", "stop protection", "STOP_PROTECTION", "DisableApiStop",
                    from_data("DisableApiStop"), lambda v: {"DisableApiStop": bool(v)},
                    data_key="DisableApiStop"),
    LaunchAttribute("shutdown_behavior", "shutdown behaviour", "SHUTDOWN_BEHAVIOR",
                    "InstanceInitiatedShutdownBehavior",
                    from_data("InstanceInitiatedShutdownBehavior"),
                    lambda v: {"InstanceInitiatedShutdownBehavior": v},
                    data_key="InstanceInitiatedShutdownBehavior"),
    LaunchAttribute("monitoring", "detailed monitoring", "MONITORING", "Monitoring.Enabled",
                    lambda i, _: i.get("Monitoring", {}).get("State") in MONITORING_ON,
                    lambda v: {"Monitoring": {"Enabled": bool(v)}}),
    LaunchAttribute("auto_recovery", "auto-recovery", "AUTO_RECOVERY",
                    "MaintenanceOptions.AutoRecovery",
                    lambda i, _: i.get("MaintenanceOptions", {}).get("AutoRecovery"),
                    lambda v: {"MaintenanceOptions": {"AutoRecovery": v}}),
)  # fmt: skip
BY_LABEL = {a.label: a for a in ATTRIBUTES}
# GetLaunchTemplateData's answer -> launch record key: what DescribeInstances does not say.
# One call per instance gives all of them (three DescribeInstanceAttribute calls would).
LAUNCH_DATA_KEYS = {a.data_key: a.key for a in ATTRIBUTES if a.data_key}


def chosen_by_ec2(label: str) -> bool:
    """Whether EC2 picks this attribute when the plan leaves it None: nothing to compare."""
    return label in BY_LABEL and BY_LABEL[label].ec2_chooses


def read_all(instance: dict, data: dict) -> dict[str, Any]:
    """Every attribute of an instance, by record key (credits only on a T type)."""
    return {a.key: a.read(instance, data) for a in ATTRIBUTES}


def launch_arguments(chosen: dict[str, Any]) -> dict[str, Any]:
    """RunInstances' arguments for the chosen value of each attribute, by label."""
    arguments: dict[str, Any] = {}
    for attribute in ATTRIBUTES:
        for name, value in attribute.send(chosen[attribute.label]).items():
            if isinstance(value, dict):
                arguments.setdefault(name, {}).update(value)
            else:
                arguments[name] = value
    return arguments
