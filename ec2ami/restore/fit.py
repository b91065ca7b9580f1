"""What the instance type allows: before RunInstances, every attribute that belongs to the
instance type is checked against its DescribeInstanceTypes entry, so that EC2 refuses
nothing the restore sends.

- The network (interfaces, and the addresses of each) and the boot mode are the server's
  identity: a type that cannot hold them stops the restore before any launch.
- CPU options, EBS optimization, hibernation and Nitro Enclaves are tuning: what the type
  cannot take is left out with a warning that names it, and the plan shows it as not
  reproducible on that type. A setting the type cannot take (CPU_OPTIONS, EBS_OPTIMIZED)
  stops the restore instead: the operator asked for it by name.

Sources: the DescribeInstanceTypes fields (EC2 API Reference, InstanceTypeInfo); the EC2
User Guide's "Specify CPU options for an Amazon EC2 instance" (a type without ValidCores
takes no CPU options: T2 and bare metal), "Amazon EBS-optimized instance types" (a type
that is EBS-optimized by default ignores EbsOptimized=false), "Prerequisites for EC2
instance hibernation", and "Boot modes" (an image's boot mode must be one the type
supports; uefi-preferred boots either way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ec2ami.attributes import BY_LABEL
from ec2ami.facts import UNAVAILABLE
from ec2ami.restore.config import RestoreError

if TYPE_CHECKING:
    from ec2ami.restore.model import Attribute, Plan

# Tuning a type may not take: the attribute's label, its RunInstances argument, and
# whether the type's DescribeInstanceTypes entry takes it.
TUNINGS: tuple[tuple[str, str, Callable[[dict], bool]], ...] = (
    ("EBS-optimized", "EbsOptimized",
     lambda t: t.get("EbsInfo", {}).get("EbsOptimizedSupport") != "unsupported"),
    ("hibernation", "HibernationOptions", lambda t: bool(t.get("HibernationSupported"))),
    ("Nitro Enclaves", "EnclaveOptions", lambda t: t.get("NitroEnclavesSupport") == "supported"),
)  # fmt: skip
BOOTS_EITHER_WAY = "uefi-preferred"


def fit_to_type(plan: Plan, types: dict[str, dict]) -> None:
    """Refuse what the launch's instance type cannot hold, and leave out (with a warning)
    the tuning it cannot take; types has the launch's type and the recorded one."""
    info = types[plan.params["InstanceType"]]
    check_network(plan, info)
    check_boot_mode(plan, info)
    fit_cpu_options(plan, info, types.get(plan.recorded.instance_type or ""))
    for label, argument, takes in TUNINGS:
        attribute = named(plan, label)
        if attribute.planned and not takes(info):
            refuse_setting(attribute, info, f"does not support {label}")
            leave_out(plan, attribute, argument, info, f"does not support {label}")


def check_network(plan: Plan, info: dict) -> None:
    """As many interfaces, and addresses on each, as the server had: fewer would change
    its network identity, so a type that cannot hold them stops the restore."""
    network, name = info.get("NetworkInfo", {}), info["InstanceType"]
    nics = plan.params["NetworkInterfaces"]
    problems = []
    most = network.get("MaximumNetworkInterfaces")
    if most and len(nics) > most:
        problems.append(f"{len(nics)} network interfaces (it takes {most})")
    for nic in nics:
        where = f"interface {nic['DeviceIndex']}"
        ipv4, per = ipv4_count(nic), network.get("Ipv4AddressesPerInterface")
        if per and ipv4 > per:
            problems.append(f"{ipv4} private IPv4 addresses on {where} (it takes {per})")
        ipv6 = nic.get("Ipv6AddressCount", 0)
        most_ipv6 = (
            network.get("Ipv6AddressesPerInterface", 0) if network.get("Ipv6Supported") else 0
        )
        if ipv6 > most_ipv6:
            problems.append(f"{ipv6} IPv6 addresses on {where} (it takes {most_ipv6})")
    if problems:
        raise RestoreError(
            f"instance type {name} cannot hold the server's network: {'; '.join(problems)}. "
            "Fewer would change its network identity, so nothing is launched; choose a type "
            "that holds them (INSTANCE_TYPE, or DRILL_INSTANCE_TYPE in a drill), or set "
            "NETWORK_INTERFACES"
        )


def ipv4_count(nic: dict) -> int:
    """The private IPv4 addresses a NetworkInterfaces entry asks for."""
    if nic.get("PrivateIpAddresses"):
        return len(nic["PrivateIpAddresses"])
    return 1 + nic.get("SecondaryPrivateIpAddressCount", 0)


def check_boot_mode(plan: Plan, info: dict) -> None:
    """The image's boot mode must be one the type boots (uefi-preferred boots either)."""
    mode, supported = plan.image.get("BootMode"), info.get("SupportedBootModes")
    if mode and supported and mode != BOOTS_EITHER_WAY and mode not in supported:
        raise RestoreError(
            f"image {plan.image['ImageId']} boots with {mode}, and instance type "
            f"{info['InstanceType']} boots only {', '.join(supported)}; set INSTANCE_TYPE"
        )


def fit_cpu_options(plan: Plan, info: dict, recorded_type: dict | None) -> None:
    """CPU options go only where they change something and the type takes them: at the
    recorded type's defaults they are left out (the new type's defaults apply), on another
    type than recorded they are left out (the counts fitted the old one), and a type without
    ValidCores (T2, bare metal) takes none at all."""
    attribute, name = named(plan, "CPU options"), info["InstanceType"]
    cpu = attribute.planned
    if not cpu:
        return
    if attribute.origin == "recorded" and at_defaults(cpu, recorded_type):
        attribute.planned, attribute.origin = None, "default"
        drop(plan, "CpuOptions")
        return
    if attribute.origin == "recorded" and name != plan.recorded.instance_type:
        why = f"is not the recorded {plan.recorded.instance_type}; set CPU_OPTIONS"
        leave_out(plan, attribute, "CpuOptions", info, why)
        return
    vcpu = info.get("VCpuInfo", {})
    cores, threads = vcpu.get("ValidCores", []), vcpu.get("ValidThreadsPerCore", [])
    if cpu["CoreCount"] in cores and cpu["ThreadsPerCore"] in threads:
        return
    why = (f"takes only cores {cores} and threads per core {threads}" if cores and threads
           else "takes no CPU options")  # fmt: skip
    refuse_setting(attribute, info, why)
    leave_out(plan, attribute, "CpuOptions", info, why)


def at_defaults(cpu: dict, info: dict | None) -> bool:
    """Whether the CPU options are the type's own defaults (nothing was chosen)."""
    vcpu = (info or {}).get("VCpuInfo", {})
    defaults = (vcpu.get("DefaultCores"), vcpu.get("DefaultThreadsPerCore"))
    return bool(vcpu) and (cpu["CoreCount"], cpu["ThreadsPerCore"]) == defaults


def refuse_setting(attribute: Attribute, info: dict, why: str) -> None:
    """A value the operator set that the type cannot take stops the restore."""
    if attribute.origin == "overridden":
        setting = BY_LABEL[attribute.name].setting
        raise RestoreError(f"{setting} = {attribute.planned!r}, but instance type "
                           f"{info['InstanceType']} {why}; change one of them")  # fmt: skip


def leave_out(plan: Plan, attribute: Attribute, argument: str, info: dict, why: str) -> None:
    """Launch without a recorded tuning the type cannot take: warn, and show it so."""
    where = f"{UNAVAILABLE} on {info['InstanceType']}"
    plan.warnings.append(f"{attribute.name} {attribute.planned!r} as recorded is left out: "
                         f"instance type {info['InstanceType']} {why}")  # fmt: skip
    attribute.planned, attribute.origin = None, where
    drop(plan, argument)


def drop(plan: Plan, argument: str) -> None:
    """Leave a RunInstances argument out of every instance's launch."""
    for params in [plan.params, *plan.others]:
        params.pop(argument, None)


def named(plan: Plan, label: str) -> Attribute:
    """The plan's attribute of that label."""
    return next(a for a in plan.attributes if a.name == label)
