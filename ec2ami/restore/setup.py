"""After launch: source/dest check, Elastic IPs, load balancers and DNS, as each instance
reaches running.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from ec2ami.facts import DNS_TTL_DEFAULT, UNAVAILABLE
from ec2ami.restore.config import RestoreConfig
from ec2ami.restore.model import LaunchError, describe_launched
from ec2ami.restore.network import target_label

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Attribute, Plan

log = logging.getLogger(__name__)


def set_up(
    clients: Clients, plan: Plan, config: RestoreConfig, ids: list[str], allocations: list[dict],
    instances: dict[str, dict],
) -> None:  # fmt: skip
    """What RunInstances cannot do, once the instances run: source/dest check, Elastic IPs
    on their addresses, load balancers, DNS."""
    ec2 = clients.ec2
    for instance_id in ids:
        for index in plan.source_dest_off:
            nic = interface_at(instances[instance_id], index)
            ec2.modify_network_interface_attribute(
                NetworkInterfaceId=nic["NetworkInterfaceId"], SourceDestCheck={"Value": False}
            )
    first = instances[ids[0]]
    for eip in allocations:
        associate(ec2, eip, first, config)
    register(clients, plan, config, ids[0])
    if plan.dns_records and plan.original_alive and not config.allow_reassociation:
        names = ", ".join(r["name"] for r in plan.dns_records)
        hold_back(plan, "DNS records", f"{names} stay with the original "
                  f"{plan.recorded.instance_id}, which still exists")  # fmt: skip
    elif plan.dns_records:  # after the Elastic IP: the public address may be new
        point_dns(clients, plan.dns_records, describe_launched(ec2, ids[:1])[0])


def interface_at(instance: dict, index: int) -> dict:
    """The instance's network interface at a device index."""
    for nic in instance.get("NetworkInterfaces", []):
        if int(nic.get("Attachment", {}).get("DeviceIndex", -1)) == index:
            return nic
    raise LaunchError(f"instance {instance['InstanceId']} has no network interface {index}")


def address_slots(nic: dict) -> list[str]:
    """An interface's private addresses: the primary, then the secondary ones in address
    order (the order the backup records them in)."""
    addresses = nic.get("PrivateIpAddresses", [])
    primary = [a["PrivateIpAddress"] for a in addresses if a.get("Primary")]
    secondary = [a["PrivateIpAddress"] for a in addresses if not a.get("Primary")]
    return primary + sorted(secondary, key=ipaddress.IPv4Address)


def associate(ec2: Any, eip: dict, instance: dict, config: RestoreConfig) -> None:
    """Associate an Elastic IP with its interface and address slot on the new instance."""
    nic = interface_at(instance, eip["index"])
    addresses = address_slots(nic)
    if eip["slot"] >= len(addresses):
        raise LaunchError(f"interface {eip['index']} of {instance['InstanceId']} has no address "
                          f"for Elastic IP {eip['allocation']}")  # fmt: skip
    address = addresses[eip["slot"]]
    ec2.associate_address(
        AllocationId=eip["allocation"], NetworkInterfaceId=nic["NetworkInterfaceId"],
        PrivateIpAddress=address, AllowReassociation=config.allow_reassociation,
    )  # fmt: skip
    log.info("associated Elastic IP %s with %s (%s)", eip["allocation"], instance["InstanceId"],
             address)  # fmt: skip


def register(clients: Clients, plan: Plan, config: RestoreConfig, instance_id: str) -> None:
    """Register the new instance in its target groups and Classic Load Balancers; skip
    (with a warning) a target group where the original is still registered and healthy."""
    original = plan.recorded.instance_id
    for group in plan.target_groups:
        target = {"Id": instance_id, **({"Port": group["port"]} if group.get("port") else {})}
        if original and not config.allow_reassociation:
            held = {**target, "Id": original}
            health = clients.elbv2.describe_target_health(
                TargetGroupArn=group["arn"], Targets=[held]
            ).get("TargetHealthDescriptions", [])
            if any(h.get("TargetHealth", {}).get("State") == "healthy" for h in health):
                hold_back(plan, f"target group {target_label(group)}", f"the original "
                          f"{original} is still registered and healthy, so the new instance "
                          "was not registered")  # fmt: skip
                continue
        clients.elbv2.register_targets(TargetGroupArn=group["arn"], Targets=[target])
        log.info("registered %s in target group %s", instance_id, target_label(group))
    for name in plan.classic_load_balancers:
        if original and plan.original_alive and not config.allow_reassociation:
            health = clients.elb.describe_instance_health(
                LoadBalancerName=name, Instances=[{"InstanceId": original}]
            ).get("InstanceStates", [])
            if any(h.get("State") == "InService" for h in health):
                why = f"the original {original} is still in service there, so the new instance "
                hold_back(plan, f"Classic Load Balancer {name}", why + "was not registered")
                continue
        clients.elb.register_instances_with_load_balancer(
            LoadBalancerName=name, Instances=[{"InstanceId": instance_id}]
        )
        log.info("registered %s with Classic Load Balancer %s", instance_id, name)


def hold_back(plan: Plan, what: str, why: str) -> None:
    """A production-facing change left undone beside the live original: warned, unchecked."""
    warning = f"{what}: {why}; set ALLOW_REASSOCIATION = True to make it too"
    plan.warnings.append(warning)
    log.warning("%s", warning)
    mark_attributes(plan.attributes, [what])


def mark_attributes(attributes: list[Attribute], names: list[str]) -> None:
    """Attributes that cannot be reproduced (a warning says why): shown so, not checked."""
    for attribute in attributes:
        if attribute.name in names:
            attribute.origin = UNAVAILABLE


def point_dns(clients: Clients, records: list[dict], instance: dict) -> None:
    """UPSERT each DNS_RECORDS entry with the new instance's address, keeping its TTL."""
    for record in records:
        key = "PrivateIpAddress" if record["value"] == "private" else "PublicIpAddress"
        address = instance.get(key)
        if not address:
            raise LaunchError(f"DNS record {record['name']}: the new instance has no "
                              f"{record['value']} address")  # fmt: skip
        listed = clients.route53.list_resource_record_sets(
            HostedZoneId=record["zone_id"], StartRecordName=record["name"],
            StartRecordType=record["type"], MaxItems="1",
        ).get("ResourceRecordSets", [])  # fmt: skip
        name = record["name"].rstrip(".") + "."
        same = [r for r in listed if r["Name"] == name and r["Type"] == record["type"]]
        ttl = same[0].get("TTL", DNS_TTL_DEFAULT) if same else DNS_TTL_DEFAULT
        change = {"Action": "UPSERT", "ResourceRecordSet": {
            "Name": name, "Type": record["type"], "TTL": ttl,
            "ResourceRecords": [{"Value": address}]}}  # fmt: skip
        clients.route53.change_resource_record_sets(
            HostedZoneId=record["zone_id"], ChangeBatch={"Changes": [change]}
        )
        log.info("DNS %s %s -> %s (TTL %s)", name, record["type"], address, ttl)
