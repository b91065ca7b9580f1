"""Plan the network, pure: interfaces and addresses, Elastic IPs, load balancers, and the
mapping of a DR copy's ids into its region (REGION_MAP).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.model import Attribute

if TYPE_CHECKING:
    from ec2ami.restore.model import Plan
    from ec2ami.restore.recorded import Recorded


def planned_interfaces(config: RestoreConfig, recorded: Recorded) -> list[dict]:
    """The network interfaces to launch with, by device index: NETWORK_INTERFACES, else as
    recorded (with SUBNET_ID, SECURITY_GROUP_IDS and PRIVATE_IP for the primary one)."""
    if config.network_interfaces is not None:
        return [interface_setting(n, i) for i, n in enumerate(config.network_interfaces)]
    nics = [dict(n) for n in recorded.launch.get("interfaces", [])]
    if not nics:
        nics = [{"index": 0, "subnet": None, "groups": [], "ip": None}]
    if config.drill:  # every interface in the drill's subnet and groups, on new addresses,
        for nic in nics:  # and deleted with its instance
            nic.update(subnet=config.drill_subnet_id, fixed=False, delete_on_termination=True,
                       groups=list(config.drill_security_group_ids or []),
                       secondary=[None] * len(nic.get("secondary", [])))  # fmt: skip
        return nics
    first = nics[0]
    if config.subnet_id:
        first["subnet"] = config.subnet_id
    if config.security_group_ids:
        first["groups"] = list(config.security_group_ids)
    address = config.private_ip
    if address == "same" and not first.get("ip"):
        raise RestoreError('PRIVATE_IP = "same", but the backup recorded no private address')
    for nic in nics:
        nic["fixed"] = address == "same" and bool(nic.get("ip"))
    if address not in (None, "same"):
        first.update(ip=address, fixed=True, secondary=[None] * len(first.get("secondary", [])))
    return nics


def interface_setting(entry: dict, index: int) -> dict:
    """One NETWORK_INTERFACES entry as a planned interface."""
    return {
        "index": index,
        "subnet": entry["subnet_id"],
        "groups": list(entry.get("security_group_ids", [])),
        "ip": entry.get("private_ip"),
        "secondary": [None] * entry.get("secondary_private_ips", 0),
        "ipv6": entry.get("ipv6_addresses", 0),
        "source_dest_check": entry.get("source_dest_check", True),
        "description": entry.get("description", ""),
        "delete_on_termination": entry.get("delete_on_termination", True),
        "fixed": bool(entry.get("private_ip")),
        "setting": True,
    }


def network_params(nics: list[dict], public: Any, warnings: list[str]) -> dict:
    """RunInstances' NetworkInterfaces. A lone interface always says whether it gets a
    public IP: without AssociatePublicIpAddress, a subnet that maps public IPs on launch
    gives one to an instance whose original (or drill) has none."""
    wants_public = nics[0].get("public_ip", False) if public is None else public
    if wants_public and len(nics) > 1:
        warnings.append(
            "the original had a public IP assigned at launch, which EC2 gives only to an "
            "instance launched with one network interface: the new one has none; give it an "
            "Elastic IP"
        )
        wants_public = False
    specs = [interface_spec(n) for n in nics]
    if len(specs) == 1:  # EC2 takes the flag only when one interface is launched
        specs[0]["AssociatePublicIpAddress"] = bool(wants_public)
    return {"NetworkInterfaces": specs}


def interface_spec(nic: dict) -> dict:
    """One NetworkInterfaces entry of RunInstances (network_params adds the public IP flag)."""
    spec: dict[str, Any] = {
        "DeviceIndex": nic["index"],
        "SubnetId": nic["subnet"],
        "DeleteOnTermination": nic.get("delete_on_termination", True),
    }
    if nic.get("groups"):
        spec["Groups"] = list(nic["groups"])
    if nic.get("description"):
        spec["Description"] = nic["description"]
    secondary = nic.get("secondary", [])
    if nic.get("fixed") and nic.get("ip"):
        spec["PrivateIpAddresses"] = [{"PrivateIpAddress": nic["ip"], "Primary": True}] + [
            {"PrivateIpAddress": ip, "Primary": False} for ip in secondary if ip
        ]
        if not all(secondary):
            spec["SecondaryPrivateIpAddressCount"] = len(secondary)
            spec["PrivateIpAddress"] = spec.pop("PrivateIpAddresses")[0]["PrivateIpAddress"]
    elif secondary:
        spec["SecondaryPrivateIpAddressCount"] = len(secondary)
    if nic.get("ipv6"):
        spec["Ipv6AddressCount"] = nic["ipv6"]
    return spec


def interface_attributes(
    config: RestoreConfig, recorded: Recorded, nics: list[dict]
) -> list[Attribute]:
    """The per-interface attributes, for the dry run and the check after launch."""
    was = {n["index"]: n for n in recorded.launch.get("interfaces", [])}
    made = [Attribute("network interfaces", len(was) or None, len(nics),
                      origin_of(config.network_interfaces is not None, bool(was)))]  # fmt: skip
    for nic in nics:
        old, label = was.get(nic["index"], {}), f"interface {nic['index']}"
        fields = [
            ("subnet", "subnet", nic["subnet"]),
            ("security groups", "groups", sorted(nic.get("groups", []))),
            ("secondary IPs", "secondary", len(nic.get("secondary", []))),
            ("IPv6 addresses", "ipv6", nic.get("ipv6", 0)),
            ("source/dest check", "source_dest_check", nic.get("source_dest_check", True)),
            ("description", "description", nic.get("description", "")),
            ("delete on termination", "delete_on_termination",
             nic.get("delete_on_termination", True)),
        ]  # fmt: skip
        if nic.get("fixed"):
            fields.append(("private IP", "ip", nic.get("ip")))
        for title, key, planned in fields:
            before = old.get(key)
            if key == "secondary" and before is not None:
                before = len(before)
            if key == "groups" and before is not None:
                before = sorted(before)
            overridden = nic.get("setting") or (before is not None and before != planned)
            made.append(Attribute(f"{label} {title}", before, planned,
                                  origin_of(overridden, before is not None)))  # fmt: skip
    first = was.get(0, {})
    public = config.public_ip
    recorded_public = first.get("public_ip") if "public_ip" in first else None
    planned_public = recorded_public if public is None else public
    made.append(Attribute("public IP", recorded_public, bool(planned_public),
                          origin_of(public is not None, recorded_public is not None)))  # fmt: skip
    return made


def origin_of(overridden: bool, recorded: bool) -> str:
    """Where a planned value came from."""
    return "overridden" if overridden else "recorded" if recorded else "default"


def planned_elastic_ips(
    config: RestoreConfig, launch: dict, nics: list[dict], warnings: list[str]
) -> list[dict]:
    """The Elastic IPs to associate, each on its interface and address slot (0: primary)."""
    setting = config.elastic_ip
    if setting is None:
        return []
    if setting != "same":
        return [{"allocation": setting, "index": 0, "slot": 0}]
    by_index = {n["index"]: n for n in launch.get("interfaces", [])}
    made: list[dict] = []
    for eip in launch.get("elastic_ips", []):
        nic = by_index.get(eip["index"], {})
        addresses = [nic.get("ip"), *nic.get("secondary", [])]
        slot = addresses.index(eip["ip"]) if eip["ip"] in addresses else 0
        if eip["ip"] not in addresses and nic.get("secondary"):  # by count only: a secondary
            taken = {e["slot"] for e in made if e["index"] == eip["index"]}
            slot = next((k for k in range(1, len(addresses)) if k not in taken), 0)
            warnings.append(
                f"Elastic IP {eip['allocation']} sat on secondary address {eip['ip']}, which "
                f"the backup recorded by count only: it goes on secondary IP {slot} of "
                f"interface {eip['index']}"
            )
        if eip["index"] >= len(nics) or slot > len(nics[eip["index"]].get("secondary", [])):
            warnings.append(
                f"Elastic IP {eip['allocation']} was on interface {eip['index']} ({eip['ip']}), "
                "which this restore does not have: it is not associated"
            )
            continue
        made.append({"allocation": eip["allocation"], "index": eip["index"], "slot": slot})
    return made


def planned_target_groups(config: RestoreConfig, launch: dict) -> list[dict]:
    """TARGET_GROUPS: "same" (as recorded), or a list of ARNs or {"arn", "port"}."""
    setting = config.target_groups
    if setting == "same":
        return [dict(t) for t in launch.get("target_groups", [])]
    ports = {t["arn"]: t.get("port") for t in launch.get("target_groups", [])}
    return [
        {"arn": t, "port": ports.get(t)} if isinstance(t, str) else {"port": None, **t}
        for t in setting
    ]


def planned_classic(config: RestoreConfig, launch: dict) -> list[str]:
    """CLASSIC_LOAD_BALANCERS: "same" (as recorded), or a list of names."""
    setting = config.classic_load_balancers
    return list(launch.get("classic_load_balancers", []) if setting == "same" else setting)


def load_balancer_attributes(config: RestoreConfig, launch: dict, plan: Plan) -> list[Attribute]:
    """One attribute per target group and Classic Load Balancer, recorded or set."""
    recorded_groups = {(t["arn"], t.get("port")) for t in launch.get("target_groups", [])}
    recorded_classic = set(launch.get("classic_load_balancers", []))
    made = []
    for group in plan.target_groups:
        key = (group["arn"], group.get("port"))
        was = "registered" if key in recorded_groups else None
        origin = origin_of(config.target_groups != "same", was is not None)
        made.append(Attribute(f"target group {target_label(group)}", was, "registered", origin))
    for name in plan.classic_load_balancers:
        was = "registered" if name in recorded_classic else None
        origin = origin_of(config.classic_load_balancers != "same", bool(was))
        made.append(Attribute(f"Classic ELB {name}", was, "registered", origin))
    for eip in plan.elastic_ips:
        origin = origin_of(config.elastic_ip != "same", True)
        where = address_slot(eip)
        made.append(Attribute(f"Elastic IP {eip['allocation']}", where, where, origin))
    return made


def target_label(group: dict) -> str:
    """A target group's name (from its ARN) and port."""
    name = group["arn"].split(":")[-1].split("/")[1] if "/" in group["arn"] else group["arn"]
    return f"{name}:{group['port']}" if group.get("port") else name


def address_slot(eip: dict) -> str:
    """Where an Elastic IP sits: its interface and address."""
    where = "primary IP" if eip["slot"] == 0 else f"secondary IP {eip['slot']}"
    return f"interface {eip['index']} {where}"


def other_instance(params: dict, nics: list[dict], name: str, n: int, token: str) -> dict:
    """RunInstances' parameters for instance n of COUNT: named <name>-n, with new addresses."""
    other = {k: v for k, v in params.items() if k != "PrivateIpAddress"}
    suffix = f"-{n}"
    other["ClientToken"] = token[: 64 - len(suffix)] + suffix
    other["TagSpecifications"] = [
        {**spec, "Tags": [{**t, "Value": f"{name}{suffix}"} if t["Key"] == "Name" else t
                          for t in spec["Tags"]]}
        for spec in params["TagSpecifications"]
    ]  # fmt: skip
    if "NetworkInterfaces" in params:
        loose = [{**nic, "fixed": False} for nic in nics]
        other["NetworkInterfaces"] = [interface_spec(nic) for nic in loose]
        for spec, was in zip(other["NetworkInterfaces"], params["NetworkInterfaces"], strict=True):
            if "AssociatePublicIpAddress" in was:
                spec["AssociatePublicIpAddress"] = was["AssociatePublicIpAddress"]
    return other


def in_region(
    config: RestoreConfig, image: dict, recorded: Recorded, region: str, warnings: list[str]
) -> Recorded:
    """A copy's record for a launch in another region than the backup's.

    Every id the backup recorded belongs to the source region: subnets, security groups,
    Elastic IPs, placement groups, hosts and target groups are mapped through
    REGION_MAP[region], or replaced by their settings, and never used as they are. Private
    addresses are never kept.
    """
    source, mapping = recorded.source_region, config.region_map.get(region, {})
    if config.private_ip == "same":
        raise RestoreError(
            f'PRIVATE_IP = "same": the recorded address is in {source}; set an address in '
            f"{region} or None"
        )
    launch = dict(recorded.launch)
    if config.network_interfaces is None:
        launch["interfaces"] = [
            mapped_interface(config, image, nic, mapping, source, region)
            for nic in launch.get("interfaces", [])
        ]
    launch["elastic_ips"] = mapped_list(
        launch.get("elastic_ips", []), "allocation", mapping, config.elastic_ip == "same",
        f"is in {source}, so none is associated in {region}; set ELASTIC_IP to an "
        f"allocation in {region}, or map it in REGION_MAP", "Elastic IP", warnings,
    )  # fmt: skip
    launch["target_groups"] = mapped_list(
        launch.get("target_groups", []), "arn", mapping, config.target_groups == "same",
        f"is in {source}: the instance is not registered in it; map it in REGION_MAP or set "
        "TARGET_GROUPS", "target group", warnings,
    )  # fmt: skip
    for key, setting, what in (("placement_group", "PLACEMENT_GROUP", "placement group"),
                               ("host_id", "HOST_ID", "dedicated host"),
                               ("host_resource_group", None, "host resource group")):  # fmt: skip
        old = launch.get(key)
        if old and not (setting and getattr(config, setting.lower()) is not None):
            launch[key] = mapping.get(old)
            if not launch[key]:
                warnings.append(f"{what} {old} is in {source}: left out in {region}; map it in "
                                f"REGION_MAP{f' or set {setting}' if setting else ''}")  # fmt: skip
    classic = launch.get("classic_load_balancers", [])
    launch["classic_load_balancers"] = [mapping[n] for n in classic if n in mapping]
    if len(launch["classic_load_balancers"]) < len(classic):
        warnings.append(f"Classic Load Balancers {', '.join(classic)} are in {source}: only "
                        "those mapped in REGION_MAP are used")  # fmt: skip
    first = (launch.get("interfaces") or [{}])[0]
    eip = next((e["allocation"] for e in launch["elastic_ips"] if e["index"] == 0), None)
    key_name = mapping.get(recorded.key_name or "", recorded.key_name)
    return replace(
        recorded, subnet_id=first.get("subnet"), security_group_ids=first.get("groups", []),
        private_ip=None, elastic_ip=eip, key_name=key_name, launch=launch,
    )  # fmt: skip


def mapped_interface(
    config: RestoreConfig, image: dict, nic: dict, mapping: dict, source: str | None, region: str
) -> dict:
    """One recorded interface with its subnet and groups mapped to the region, and no
    fixed address; an interface that cannot be mapped stops the restore."""
    subnet = mapping.get(nic.get("subnet") or "")
    groups = [mapping.get(g) for g in nic.get("groups", [])]
    primary = nic["index"] == 0
    drill = config.drill  # a drill puts every interface in its own subnet and groups
    has_subnet = subnet or drill or (primary and config.subnet_id)
    has_groups = all(groups) or drill or (primary and config.security_group_ids)
    if not has_subnet or not has_groups:
        was = ", ".join([nic.get("subnet") or "-", *nic.get("groups", [])])
        settings = ("SUBNET_ID and SECURITY_GROUP_IDS (or --subnet-id and "
                    "--security-group-ids)" if primary else "NETWORK_INTERFACES")  # fmt: skip
        raise RestoreError(
            f"image {image['ImageId']} is a copy from {source}, and the subnet and security "
            f"groups it recorded for interface {nic['index']} ({was}) are in {source}. Set "
            f"{settings} to ids in {region}, or map the recorded ids to them in "
            f"REGION_MAP[{region!r}]"
        )
    return {**nic, "subnet": subnet, "groups": [g for g in groups if g], "ip": None,
            "secondary": [None] * len(nic.get("secondary", []))}  # fmt: skip


def mapped_list(
    items: list[dict], key: str, mapping: dict, wanted: bool, why: str, what: str,
    warnings: list[str],
) -> list[dict]:  # fmt: skip
    """Recorded items whose id REGION_MAP maps, with the mapped id; warn about the rest
    when the setting asks for them as recorded."""
    kept = []
    for item in items:
        if item[key] in mapping:
            kept.append({**item, key: mapping[item[key]]})
        elif wanted:
            warnings.append(f"{what} {item[key]} {why}")
    return kept
