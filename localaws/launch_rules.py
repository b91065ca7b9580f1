"""P38: RunInstances refuses what EC2 refuses, from the instance type's own data.

moto launches whatever it is asked for. EC2 does not, and a restore learns that during an
incident. Each rule below names the EC2 document it comes from, and answers with the error
code EC2's "Error codes for the Amazon EC2 API" page lists for the case. EC2 does not
publish its exact messages; the harness writes its own, naming the parameter.

The instance types are moto's bundled DescribeInstanceTypes data (the same answer the
endpoint gives DescribeInstanceTypes), so the restore's checks and these rules read one
table.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instance_types import INSTANCE_TYPES

USER_DATA_MAX = 16 * 1024  # EC2 User Guide, user data: "limited to 16 KB", raw form

Request = dict[str, Any]  # the RunInstances parameters, as moto parses them
ASKED = (
    "InstanceType",
    "CpuOptions",
    "NetworkInterfaces",
    "EbsOptimized",
    "HibernationOptions",
    "EnclaveOptions",
    "UserData",
    "Placement",
)


def refused(request: Request, backend: Any, groups: dict[str, dict]) -> EC2ClientError | None:
    """The first of EC2's refusals this RunInstances request meets, or None."""
    info = INSTANCE_TYPES.get(request.get("InstanceType") or "m1.small", {})
    checks = [
        cpu_options,
        network_size,
        public_ip_flag,
        ebs_optimized,
        hibernation,
        enclaves,
        user_data,
    ]
    for check in checks:
        error = check(request, info)
        if error:
            return error
    return one_zone(request, backend) or placement(request, groups)


def cpu_options(request: Request, info: dict) -> EC2ClientError | None:
    """CPU options only where the type lists ValidCores and ValidThreadsPerCore, and only
    those values (User Guide, "Specify CPU options": T2 and bare metal take none)."""
    cpu = request.get("CpuOptions") or {}
    wanted = {k: int(v) for k, v in cpu.items() if k in ("CoreCount", "ThreadsPerCore")}
    if not wanted:
        return None
    vcpu, name = info.get("VCpuInfo", {}), request.get("InstanceType")
    if "ValidCores" not in vcpu:
        return EC2ClientError(
            "InvalidParameterCombination", f"The instance type {name} does not support CPU options."
        )
    valid = {"CoreCount": vcpu["ValidCores"], "ThreadsPerCore": vcpu.get("ValidThreadsPerCore", [])}
    for key, value in wanted.items():
        if value not in valid[key]:
            return EC2ClientError(
                "InvalidParameterValue", f"{key} {value} is not valid for {name}: {valid[key]}"
            )
    return None


def network_size(request: Request, info: dict) -> EC2ClientError | None:
    """No more interfaces, nor addresses on one, than the type takes (NetworkInfo:
    MaximumNetworkInterfaces, Ipv4AddressesPerInterface, Ipv6AddressesPerInterface)."""
    network, name = info.get("NetworkInfo", {}), request.get("InstanceType")
    nics = request.get("NetworkInterfaces") or []
    most = network.get("MaximumNetworkInterfaces", 1)
    if len(nics) > most:
        return EC2ClientError(
            "AttachmentLimitExceeded", f"{name} takes at most {most} network interfaces."
        )
    for nic in nics:
        listed = nic.get("PrivateIpAddresses") or []
        ipv4 = len(listed) if listed else 1 + int(nic.get("SecondaryPrivateIpAddressCount", 0))
        ipv6 = int(nic.get("Ipv6AddressCount", 0))
        if ipv4 > network.get("Ipv4AddressesPerInterface", 1) or ipv6 > network.get(
            "Ipv6AddressesPerInterface", 0
        ):
            return EC2ClientError(
                "InvalidInterface.IpAddressLimitExceeded",
                f"Too many addresses on interface {nic.get('DeviceIndex')} for {name}.",
            )
    return None


def public_ip_flag(request: Request, info: dict) -> EC2ClientError | None:
    """AssociatePublicIpAddress only on device index 0, and only when one interface is
    launched (API Reference, InstanceNetworkInterfaceSpecification)."""
    nics = request.get("NetworkInterfaces") or []
    flagged = [n for n in nics if "AssociatePublicIpAddress" in n]
    if flagged and (len(nics) > 1 or any(int(n.get("DeviceIndex", 0)) != 0 for n in flagged)):
        return EC2ClientError(
            "InvalidParameterCombination",
            "The associatePublicIPAddress parameter cannot be specified when launching with "
            "multiple network interfaces, nor for a network interface other than eth0.",
        )
    return None


def ebs_optimized(request: Request, info: dict) -> EC2ClientError | None:
    """EbsOptimized=true on a type whose EbsOptimizedSupport is "unsupported" (User Guide,
    "Amazon EBS-optimized instance types")."""
    wanted = str(request.get("EbsOptimized", "false")).lower() == "true"
    if wanted and info.get("EbsInfo", {}).get("EbsOptimizedSupport") == "unsupported":
        return EC2ClientError(
            "InvalidParameterCombination",
            "EBS-optimized instances are not supported for your requested configuration.",
        )
    return None


def hibernation(request: Request, info: dict) -> EC2ClientError | None:
    """Hibernation only on a type with HibernationSupported (User Guide, "Prerequisites
    for EC2 instance hibernation")."""
    wanted = str((request.get("HibernationOptions") or {}).get("Configured", "")).lower()
    if wanted == "true" and not info.get("HibernationSupported"):
        return EC2ClientError(
            "UnsupportedHibernationConfiguration",
            f"{request.get('InstanceType')} does not support hibernation.",
        )
    return None


def enclaves(request: Request, info: dict) -> EC2ClientError | None:
    """Nitro Enclaves only on a type whose NitroEnclavesSupport is "supported"."""
    wanted = str((request.get("EnclaveOptions") or {}).get("Enabled", "")).lower()
    if wanted == "true" and info.get("NitroEnclavesSupport") != "supported":
        return EC2ClientError(
            "InvalidParameterCombination",
            f"{request.get('InstanceType')} does not support Nitro Enclaves.",
        )
    return None


def user_data(request: Request, info: dict) -> EC2ClientError | None:
    """User data of at most 16 KB before base64 (User Guide, user data)."""
    data = request.get("UserData") or ""
    try:
        size = len(base64.b64decode(data))
    except (binascii.Error, ValueError):
        size = len(data)
    if size > USER_DATA_MAX:
        return EC2ClientError(
            "InvalidParameterValue", f"User data is limited to {USER_DATA_MAX} bytes."
        )
    return None


def one_zone(request: Request, backend: Any) -> EC2ClientError | None:
    """An instance and its interfaces in one Availability Zone and one VPC (User Guide,
    "Elastic network interfaces": an interface attaches only in its own zone)."""
    subnets = [n.get("SubnetId") for n in request.get("NetworkInterfaces") or []]
    places = set()
    for subnet_id in filter(None, subnets):
        subnet = backend.get_subnet(subnet_id)
        places.add((subnet.availability_zone, subnet.vpc_id))
    if len(places) > 1:
        return EC2ClientError(
            "InvalidParameterValue",
            "The network interfaces must be in the same Availability Zone and VPC as the instance.",
        )
    return None


def placement(request: Request, groups: dict[str, dict]) -> EC2ClientError | None:
    """A partition number only with a partition placement group, and host affinity only
    with host tenancy (API Reference, Placement)."""
    where = request.get("Placement") or {}
    if where.get("PartitionNumber") is not None:
        group = groups.get(where.get("GroupName") or "")
        if group is None or group.get("Strategy") != "partition":
            return EC2ClientError(
                "InvalidParameterCombination",
                "A partition number requires a partition placement group.",
            )
    if where.get("Affinity") and where.get("Tenancy") != "host":
        return EC2ClientError(
            "InvalidParameterCombination", "Affinity is valid only with host tenancy."
        )
    return None
