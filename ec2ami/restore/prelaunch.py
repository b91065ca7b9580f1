"""Before launch: what EC2 would refuse, and what is gone, checked with one describe per
kind for the whole fleet (Facts).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.facts import (
    DESCRIBED,
    ERR_LOAD_BALANCER_NOT_FOUND,
    ERR_NO_SUCH_ENTITY,
    ERR_TARGET_GROUP_NOT_FOUND,
    FILTER_VALUES_MAX,
    HOST_GONE_CODES,
    HOST_USABLE_STATES,
    INSTANCE_TYPES_MAX,
    NOT_FOUND_CODES,
    PLACEMENT_GONE_CODES,
)
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.fit import fit_to_type
from ec2ami.restore.keys import check_keys, describe_keys, encrypted_snapshots
from ec2ami.restore.model import describe_launched
from ec2ami.restore.network import target_label
from ec2ami.restore.setup import mark_attributes

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Plan

log = logging.getLogger(__name__)


class Facts:
    """What the checks before launch look up, asked once for the whole fleet: one call per
    kind of resource (FILTER_VALUES_MAX values a call), and one call per distinct instance
    profile, placement group, host or load balancer, which EC2 cannot describe in a batch
    without failing whole on one that is gone."""

    def __init__(self) -> None:
        self.subnets: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.key_pairs: set[str] = set()
        self.types: dict[str, dict] = {}
        self.in_use: dict[str, list[dict]] = {}  # private address -> interfaces holding it
        self.addresses: dict[str, dict] = {}  # allocation id -> its DescribeAddresses entry
        self.own: set[str] = set()  # instances this run's client tokens launched already
        self.snapshot_keys: dict[str, str] = {}  # encrypted snapshot -> its KMS key
        self.keys: dict[str, dict | str] = {}  # KMS key -> DescribeKey's metadata, or error
        self.listed_keys: set[str] = set()  # BACKUP_KMS_KEYS
        self.kms_key_id: str | None = None
        self._asked: dict[tuple, Any] = {}

    def once(self, key: tuple, ask: Any, *args: Any, **kwargs: Any) -> Any:
        """ask(*args, **kwargs), made once per key in the run."""
        if key not in self._asked:
            self._asked[key] = ask(*args, **kwargs)
        return self._asked[key]


def gather_facts(clients: Clients, plans: list[Plan], config: RestoreConfig) -> Facts:
    """Describe what every plan uses: subnets, security groups, key pairs, instance types,
    fixed private addresses, Elastic IPs and the KMS keys of encrypted snapshots, each kind
    in one call for the fleet (each key: one DescribeKey)."""
    facts, ec2 = Facts(), clients.ec2
    if not plans:
        return facts
    facts.kms_key_id, facts.listed_keys = config.kms_key_id, set(config.backup_kms_keys)
    encrypted = sorted({s for p in plans for s in encrypted_snapshots(p.image)})
    for snapshot in filtered(ec2, "snapshots", "snapshot-id", encrypted):
        if snapshot.get("KmsKeyId"):
            facts.snapshot_keys[snapshot["SnapshotId"]] = snapshot["KmsKeyId"]
    wanted = {*facts.snapshot_keys.values(), *([config.kms_key_id] if config.kms_key_id else [])}
    if wanted:
        facts.keys = describe_keys(clients.client("kms"), wanted)
    nics = [n for p in plans for n in launch_interfaces(p.params)]
    subnets = sorted({n["SubnetId"] for n in nics})
    facts.subnets = {s["SubnetId"]: s for s in filtered(ec2, "subnets", "subnet-id", subnets)}
    groups = sorted({g for n in nics for g in n.get("Groups", [])})
    found = filtered(ec2, "security_groups", "group-id", groups)
    facts.groups = {g["GroupId"]: g for g in found}
    keys = sorted({p.params["KeyName"] for p in plans if p.params.get("KeyName")})
    facts.key_pairs = {k["KeyName"] for k in filtered(ec2, "key_pairs", "key-name", keys)}
    launched = {p.params["InstanceType"] for p in plans}  # and the recorded: its defaults
    recorded = {p.recorded.instance_type for p in plans if p.recorded.instance_type}
    facts.types = instance_types(ec2, sorted(launched | recorded))
    fixed = sorted({a for n in nics for a in fixed_addresses(n)})
    for eni in filtered(ec2, "network_interfaces", "addresses.private-ip-address", fixed):
        for address in eni.get("PrivateIpAddresses", []):
            facts.in_use.setdefault(address["PrivateIpAddress"], []).append(eni)
    if facts.in_use:  # a rerun with the token: its own instance holds the address already
        tokens = sorted({p["ClientToken"] for plan in plans for p in [plan.params, *plan.others]})
        for reservation in filtered(ec2, "instances", "client-token", tokens):
            facts.own |= {i["InstanceId"] for i in reservation.get("Instances", [])}
    allocations = sorted({e["allocation"] for p in plans for e in p.elastic_ips})
    found = filtered(ec2, "addresses", "allocation-id", allocations)
    facts.addresses = {a["AllocationId"]: a for a in found}
    return facts


def filtered(ec2: Any, what: str, name: str, values: list[str]) -> list[dict]:
    """describe_<what> by one filter, FILTER_VALUES_MAX values a call. A value that matches
    nothing is missing from the answer, where a list of ids would fail the call whole."""
    found: list[dict] = []
    for start in range(0, len(values), FILTER_VALUES_MAX):
        filters = [{"Name": name, "Values": values[start : start + FILTER_VALUES_MAX]}]
        answer = getattr(ec2, f"describe_{what}")(Filters=filters)
        found += answer.get(DESCRIBED[what], [])
    return found


def instance_types(ec2: Any, names: list[str]) -> dict[str, dict]:
    """DescribeInstanceTypes for the names (100 a call); an unknown name fails its call,
    so that batch is asked again one name at a time, and the unknown one is left out."""
    found: dict[str, dict] = {}
    for start in range(0, len(names), INSTANCE_TYPES_MAX):
        batch = names[start : start + INSTANCE_TYPES_MAX]
        try:
            answers = ec2.describe_instance_types(InstanceTypes=batch)["InstanceTypes"]
        except ClientError as err:
            if err.response["Error"]["Code"] not in NOT_FOUND_CODES:
                raise
            answers = [] if len(batch) == 1 else [
                t for name in batch for t in instance_types(ec2, [name]).values()
            ]  # fmt: skip
        found.update({t["InstanceType"]: t for t in answers})
    return found


def launch_interfaces(params: dict) -> list[dict]:
    """RunInstances' network interfaces (network.network_params always sends them)."""
    return list(params["NetworkInterfaces"])


def fixed_addresses(nic: dict) -> list[str]:
    """The private addresses an interface asks for by address."""
    fixed = [nic.get("PrivateIpAddress")]
    fixed += [a["PrivateIpAddress"] for a in nic.get("PrivateIpAddresses", [])]
    return [a for a in fixed if a]


def found(ask: Any, gone: set[str], **kwargs: Any) -> bool:
    """Whether a describe of one named resource finds it: False on its not-found codes."""
    try:
        ask(**kwargs)
    except ClientError as err:
        if err.response["Error"]["Code"] not in gone:
            raise
        return False
    return True


def check_before_launch(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Check cheaply what EC2 would refuse or get wrong; raise RestoreError if so, and warn
    (dropping it from the plan) about what was recorded but can no longer be reproduced."""
    params = plan.params
    nics = launch_interfaces(params)
    missing = sorted({n["SubnetId"] for n in nics} - set(facts.subnets))
    subnet_setting = plan.network_settings[0]
    if missing:
        raise RestoreError(f"subnet{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                           f"does not exist; set {subnet_setting}")  # fmt: skip
    check_one_zone(nics, facts, subnet_setting)
    check_groups(nics, facts, plan.network_settings)
    if params.get("KeyName") and params["KeyName"] not in facts.key_pairs:
        raise RestoreError(f"key pair {params['KeyName']} does not exist")
    check_architecture(plan, facts)
    fit_to_type(plan, facts.types)
    check_keys(plan, facts.snapshot_keys, facts.keys, facts.listed_keys, facts.kms_key_id)
    for nic in nics:
        for fixed in fixed_addresses(nic):
            check_address_free(fixed, facts.subnets[nic["SubnetId"]], facts)
    check_instance_profile(clients, params.get("IamInstanceProfile"), facts)
    check_placement(clients.ec2, plan, facts)
    check_target_groups(clients, plan, facts)
    check_classic_load_balancers(clients, plan, facts)
    for eip in plan.elastic_ips:
        address = facts.addresses.get(eip["allocation"])
        if address is None:
            raise RestoreError(f"Elastic IP allocation {eip['allocation']} does not exist; set "
                               "ELASTIC_IP = None to restore without it")  # fmt: skip
        plan.holders[eip["allocation"]] = address_holder(address)
    plan.eip_holder = plan.holders.get(plan.elastic_ip or "")


def check_one_zone(nics: list[dict], facts: Facts, subnet_setting: str) -> None:
    """Every interface in one Availability Zone, as EC2 requires: a SUBNET_ID in another
    zone moves only the primary interface, and EC2 would refuse the launch."""
    zones = {n["DeviceIndex"]: facts.subnets[n["SubnetId"]].get("AvailabilityZone") for n in nics}
    if len(set(zones.values())) > 1:
        where = ", ".join(f"interface {i} in {z}" for i, z in sorted(zones.items()))
        raise RestoreError(
            f"the interfaces would be in different Availability Zones ({where}), which EC2 "
            f"refuses: {subnet_setting} moves the primary interface only; set "
            "NETWORK_INTERFACES to place every interface in the new zone"
        )


def check_groups(nics: list[dict], facts: Facts, settings: tuple[str, str]) -> None:
    """Every security group exists, in its interface's subnet's VPC; an error names the
    settings that place the launch (SUBNET_ID and SECURITY_GROUP_IDS, or DRILL_*)."""
    wanted = sorted({g for n in nics for g in n.get("Groups", [])})
    missing = [g for g in wanted if g not in facts.groups]
    if missing:
        raise RestoreError(f"security group(s) {', '.join(missing)} does not exist; set "
                           f"{settings[1]}")  # fmt: skip
    for nic in nics:
        subnet = facts.subnets[nic["SubnetId"]]
        for group in nic.get("Groups", []):
            vpc = facts.groups[group].get("VpcId")
            if vpc != subnet["VpcId"]:
                raise RestoreError(
                    f"security group {group} is in {vpc}, but subnet "
                    f"{subnet['SubnetId']} is in {subnet['VpcId']}; set {settings[0]} and "
                    f"{settings[1]} to a subnet and groups of one VPC"
                )


def check_instance_profile(clients: Clients, profile: dict | None, facts: Facts) -> None:
    """The instance profile still exists: EC2 would refuse the launch after the fact."""
    if not profile:
        return
    name = (profile.get("Name") or profile.get("Arn", "")).rsplit("/", 1)[-1]
    ask, gone = clients.iam.get_instance_profile, {ERR_NO_SUCH_ENTITY}
    if not facts.once(("instance profile", name), found, ask, gone, InstanceProfileName=name):
        raise RestoreError(
            f"instance profile {name} does not exist (deleted since the backup?); create it, "
            "or set IAM_INSTANCE_PROFILE to one that does"
        )


def check_placement(ec2: Any, plan: Plan, facts: Facts) -> None:
    """A recorded placement group or dedicated host that is gone is left out, with a warning."""
    placement = plan.params.get("Placement", {})
    group, host = placement.get("GroupName"), placement.get("HostId")

    def host_usable() -> bool:
        try:
            hosts = ec2.describe_hosts(HostIds=[host]).get("Hosts", [])
        except ClientError as err:
            if err.response["Error"]["Code"] not in HOST_GONE_CODES:
                raise
            hosts = []
        return bool(hosts) and hosts[0].get("State") in HOST_USABLE_STATES

    ask, gone = ec2.describe_placement_groups, PLACEMENT_GONE_CODES
    if group and not facts.once(("placement group", group), found, ask, gone, GroupNames=[group]):
        warning = (f"placement group {group} no longer exists: the instance launches outside "
                   "any placement group; create it, or set PLACEMENT_GROUP")  # fmt: skip
        names, keys = ["placement group", "partition"], ["GroupName", "PartitionNumber"]
        unreproducible(plan, names, keys, warning)
    if host and not facts.once(("host", host), host_usable):
        unreproducible(plan, ["host", "affinity"], ["HostId", "Affinity"],
                       f"dedicated host {host} is gone or not available: the instance "
                       "launches on any host of its tenancy; set HOST_ID")  # fmt: skip


def unreproducible(plan: Plan, names: list[str], keys: list[str], warning: str) -> None:
    """Leave placement keys out of every launch, and say so."""
    plan.warnings.append(warning)
    for params in [plan.params, *plan.others]:
        for key in keys:
            params.get("Placement", {}).pop(key, None)
    mark_attributes(plan.attributes, names)


def check_target_groups(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Target groups in another account or region, or gone, are left out with a warning."""
    account, region = plan.image.get("OwnerId"), clients.ec2.meta.region_name
    usable = []
    for group in plan.target_groups:
        parts = group["arn"].split(":")
        if len(parts) < 6 or parts[3] != region or (account and parts[4] != account):
            drop_target(plan, group, f"is not in this account and region ({region})")
            continue
        ask, gone = clients.elbv2.describe_target_groups, {ERR_TARGET_GROUP_NOT_FOUND}
        arn = group["arn"]
        if not facts.once(("target group", arn), found, ask, gone, TargetGroupArns=[arn]):
            drop_target(plan, group, "no longer exists")
            continue
        usable.append(group)
    plan.target_groups = usable


def check_classic_load_balancers(clients: Clients, plan: Plan, facts: Facts) -> None:
    """Classic Load Balancers that are gone are left out, with a warning."""
    usable = []
    for name in plan.classic_load_balancers:
        ask, gone = clients.elb.describe_load_balancers, {ERR_LOAD_BALANCER_NOT_FOUND}
        if not facts.once(("classic load balancer", name), found, ask, gone,
                          LoadBalancerNames=[name]):  # fmt: skip
            plan.warnings.append(f"Classic Load Balancer {name} does not exist here: the "
                                 "instance is not registered with it")  # fmt: skip
            mark_attributes(plan.attributes, [f"Classic ELB {name}"])
            continue
        usable.append(name)
    plan.classic_load_balancers = usable


def drop_target(plan: Plan, group: dict, why: str) -> None:
    """A target group the new instance cannot join: warn, and mark it."""
    plan.warnings.append(f"target group {group['arn']} {why}: the instance is not registered in it")
    mark_attributes(plan.attributes, [f"target group {target_label(group)}"])


def check_architecture(plan: Plan, facts: Facts) -> None:
    """The instance type must exist and run the image's architecture."""
    instance_type = plan.params["InstanceType"]
    info = facts.types.get(instance_type)
    if info is None:
        raise RestoreError(f"instance type {instance_type} does not exist")
    supported = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    architecture = plan.image.get("Architecture")
    if architecture and supported and architecture not in supported:
        raise RestoreError(
            f"instance type {instance_type} runs {', '.join(supported)}, but image "
            f"{plan.image['ImageId']} is {architecture}; set INSTANCE_TYPE"
        )


def check_address_free(address: str, subnet: dict, facts: Facts) -> None:
    """A fixed private address must lie in the subnet and be unused."""
    if ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(subnet["CidrBlock"]):
        raise RestoreError(
            f"private IP {address} is outside subnet {subnet['SubnetId']} ({subnet['CidrBlock']})"
        )
    for eni in facts.in_use.get(address, []):
        if eni.get("SubnetId") == subnet["SubnetId"]:
            holder = eni.get("Attachment", {}).get("InstanceId") or eni["NetworkInterfaceId"]
            if holder in facts.own:
                continue  # launched by this very restore's token: its setup is finished now
            raise RestoreError(f"private IP {address} is in use by {holder}; set PRIVATE_IP = None")


def address_holder(address: dict) -> str | None:
    """Who holds an Elastic IP (an instance or interface id), or None if it is free."""
    return address.get("InstanceId") or address.get("NetworkInterfaceId") or None


def settle_elastic_ip(
    ec2: Any, plan: Plan, config: RestoreConfig, launched: list[str], allocation: str
) -> bool:
    """Whether to associate the allocation now; warn when another instance held it when
    checked before launch."""
    holder = plan.holders.get(allocation)
    if holder and (holder in launched or holder in launched_interfaces(ec2, launched)):
        return False  # a rerun with the same client token: already done
    if holder and not config.allow_reassociation:
        warning = (
            f"Elastic IP {allocation} is held by {holder} and was not moved; "
            "set ALLOW_REASSOCIATION = True to move it"
        )
        plan.warnings.append(warning)
        log.warning("%s", warning)
        mark_attributes(plan.attributes, [f"Elastic IP {allocation}"])
        return False
    return True


def launched_interfaces(ec2: Any, ids: list[str]) -> set[str]:
    """The network interface ids of the launched instances."""
    instances = describe_launched(ec2, ids)
    return {n["NetworkInterfaceId"] for i in instances for n in i.get("NetworkInterfaces", [])}
