"""Check the twin: read each new instance back and compare every attribute with the plan."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ec2ami.attributes import ATTRIBUTES, chosen_by_ec2
from ec2ami.facts import FILTER_VALUES_MAX, UNAVAILABLE
from ec2ami.restore.model import LaunchError, describe_launched, failing
from ec2ami.restore.network import address_slot, target_label
from ec2ami.restore.setup import address_slots

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.restore.model import Plan, Restore

log = logging.getLogger(__name__)


def check_twins(clients: Clients, restores: list[Restore]) -> None:
    """Read each server's first new instance back and compare it with its plan: one
    DescribeInstances and one DescribeAddresses for them all, then each instance's
    GetLaunchTemplateData (EC2 has no batch form) and load balancers."""
    ec2 = clients.ec2
    ids = [r.ids[0] for r in restores]
    instances = {i["InstanceId"]: i for i in describe_launched(ec2, ids)}
    held: dict[str, list[dict]] = {}
    for start in range(0, len(ids), FILTER_VALUES_MAX):
        filters = [{"Name": "instance-id", "Values": ids[start : start + FILTER_VALUES_MAX]}]
        for address in ec2.describe_addresses(Filters=filters).get("Addresses", []):
            held.setdefault(address.get("InstanceId", ""), []).append(address)
    for restore in restores:
        with failing(restore):
            instance = instances.get(restore.ids[0])
            if instance is None:
                raise LaunchError(f"instance {restore.ids[0]} is no longer described")
            restore.differences = check_twin(
                clients, restore.planned, instance, held.get(restore.ids[0], [])
            )
            for difference in restore.differences:
                log.warning("%s", difference)


def check_twin(clients: Clients, plan: Plan, instance: dict, held: list[dict]) -> list[str]:
    """Compare each attribute of the new instance with the plan; return one warning per
    difference, naming the attribute and both values."""
    instance_id = instance["InstanceId"]
    now = read_back(clients, plan, instance, held)
    differences = []
    for attribute in plan.attributes:
        if attribute.origin.startswith(UNAVAILABLE) or attribute.name not in now:
            continue
        attribute.now, attribute.checked = now[attribute.name], True
        if attribute.planned is None and chosen_by_ec2(attribute.name):
            continue
        if normal(attribute.now) != normal(attribute.planned):
            differences.append(
                f"{instance_id}: {attribute.name} is {shown(attribute.now)}, but the restore "
                f"asked for {shown(attribute.planned)} ({attribute.origin}; recorded: "
                f"{shown(attribute.recorded)})"
            )
    return differences


def normal(value: Any) -> Any:
    """Values compared as EC2 reports them: "" and None alike."""
    return None if value in ("", None) else value


def shown(value: Any) -> str:
    """An attribute value for a person."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def read_back(clients: Clients, plan: Plan, instance: dict, held: list[dict]) -> dict[str, Any]:
    """Every attribute of the new instance, by the plan's attribute names; held: the
    Elastic IPs it holds."""
    ec2, instance_id = clients.ec2, instance["InstanceId"]
    data = ec2.get_launch_template_data(InstanceId=instance_id)["LaunchTemplateData"]
    instance_type = instance.get("InstanceType", "")
    values = {
        a.label: a.read(instance, data) for a in ATTRIBUTES if a.applies(instance_type)
    }  # fmt: skip
    values.update(interfaces_now(instance))
    values.update(addresses_now(plan, instance, held))
    values.update(balancers_now(clients, plan, instance_id))
    return values


def interfaces_now(instance: dict) -> dict[str, Any]:
    """The per-interface attributes of the new instance."""
    nics = sorted(
        instance.get("NetworkInterfaces", []), key=lambda n: n["Attachment"]["DeviceIndex"]
    )
    values: dict[str, Any] = {"network interfaces": len(nics)}
    for nic in nics:
        label = f"interface {nic['Attachment']['DeviceIndex']}"
        addresses = nic.get("PrivateIpAddresses", [])
        values.update({
            f"{label} subnet": nic.get("SubnetId"),
            f"{label} security groups": sorted(g["GroupId"] for g in nic.get("Groups", [])),
            f"{label} secondary IPs": len([a for a in addresses if not a.get("Primary")]),
            f"{label} IPv6 addresses": len(nic.get("Ipv6Addresses", [])),
            f"{label} source/dest check": nic.get("SourceDestCheck", True),
            f"{label} description": nic.get("Description", ""),
            f"{label} delete on termination": nic["Attachment"].get("DeleteOnTermination"),
            f"{label} private IP": nic.get("PrivateIpAddress"),
        })  # fmt: skip
    return values


def addresses_now(plan: Plan, instance: dict, held: list[dict]) -> dict[str, Any]:
    """Where each planned Elastic IP sits now, and whether the instance has a public IP
    of its own (not an Elastic IP)."""
    values: dict[str, Any] = {}
    elastic = {a.get("PublicIp") for a in held}
    public = [
        n.get("Association", {}).get("PublicIp") for n in instance.get("NetworkInterfaces", [])
    ]
    values["public IP"] = any(ip and ip not in elastic for ip in public)
    if plan.elastic_ips and any(e["index"] == 0 and e["slot"] == 0 for e in plan.elastic_ips):
        values.pop("public IP")  # an Elastic IP on the primary address replaces a launch one
    by_allocation = {a.get("AllocationId"): a for a in held}
    for eip in plan.elastic_ips:
        address = by_allocation.get(eip["allocation"])
        where = None
        if address:
            nic = next(n for n in instance["NetworkInterfaces"]
                       if n["NetworkInterfaceId"] == address.get("NetworkInterfaceId"))  # fmt: skip
            slot = address_slots(nic).index(address["PrivateIpAddress"])
            where = address_slot({"index": nic["Attachment"]["DeviceIndex"], "slot": slot})
        values[f"Elastic IP {eip['allocation']}"] = where
    return values


def balancers_now(clients: Clients, plan: Plan, instance_id: str) -> dict[str, Any]:
    """Whether the new instance is registered in each planned load balancer."""
    values: dict[str, Any] = {}
    for group in plan.target_groups:
        target = {"Id": instance_id, **({"Port": group["port"]} if group.get("port") else {})}
        health = clients.elbv2.describe_target_health(
            TargetGroupArn=group["arn"], Targets=[target]
        ).get("TargetHealthDescriptions", [])
        states = {h.get("TargetHealth", {}).get("State") for h in health}
        values[f"target group {target_label(group)}"] = (
            "registered" if states - {None, "unused"} else None
        )
    if plan.classic_load_balancers:
        described = clients.elb.describe_load_balancers(
            LoadBalancerNames=plan.classic_load_balancers
        ).get("LoadBalancerDescriptions", [])
        for balancer in described:
            members = {i["InstanceId"] for i in balancer.get("Instances", [])}
            values[f"Classic ELB {balancer['LoadBalancerName']}"] = (
                "registered" if instance_id in members else None
            )
    return values
