"""Plan the launch, pure: every attribute (recorded, overridden or default) and the
RunInstances parameters of each instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ec2ami.attributes import ATTRIBUTES, BY_LABEL, launch_arguments
from ec2ami.contract import (
    MAX_TAGS,
    TAG_DRILL,
    TAG_DRILL_DEADLINE,
    TAG_DRILL_RUN,
    TAG_INSTANCE_PROFILE,
    TAG_RESTORED_BACKUP_TIME,
    TAG_RESTORED_FROM,
    TAG_RESTORED_POOL,
    TAG_RESTORED_SERVER,
)
from ec2ami.facts import USER_DATA_MAX
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.model import Attribute, Plan
from ec2ami.restore.network import (
    in_region,
    interface_attributes,
    load_balancer_attributes,
    network_params,
    other_instance,
    planned_classic,
    planned_elastic_ips,
    planned_interfaces,
    planned_target_groups,
)
from ec2ami.restore.recorded import basic_launch
from ec2ami.restore.setup import mark_attributes
from ec2ami.restore.userdata import build_user_data

if TYPE_CHECKING:
    from ec2ami.restore.recorded import Recorded


def plan_launch(
    config: RestoreConfig, image: dict, recorded: Recorded, original_alive: bool, token: str,
    region: str | None = None,
) -> Plan:  # fmt: skip
    """Build RunInstances parameters from the config, falling back to what was recorded.

    Long because it assembles the plan from the parts below in RunInstances' order.
    """
    warnings: list[str] = []
    if recorded.note:
        warnings.append(f"image {image['ImageId']}: {recorded.note}")
    if not recorded.launch:
        recorded = replace(recorded, launch=basic_launch(recorded))
    if recorded.source_region and region and recorded.source_region != region:
        recorded = in_region(config, image, recorded, region, warnings)
    launch = recorded.launch

    def pick(setting: str, fallback: Any) -> Any:
        return getattr(config, setting.lower()) or fallback

    instance_type = pick("INSTANCE_TYPE", recorded.instance_type)
    nics = planned_interfaces(config, recorded)
    subnet = nics[0]["subnet"] if nics else None
    missing = [
        name for name, v in (("INSTANCE_TYPE", instance_type), ("SUBNET_ID", subnet)) if not v
    ]
    if missing:
        raise RestoreError(
            f"image {image['ImageId']} has no recorded {' or '.join(missing)}; set it in the config"
        )
    name = restored_name(config, recorded, original_alive, warnings)
    attributes = planned_attributes(config, recorded, instance_type)
    warnings += left_for_type(attributes, instance_type)
    chosen = {a.name: a.planned for a in attributes}
    params: dict[str, Any] = {
        "ImageId": image["ImageId"],
        "MinCount": 1,
        "MaxCount": 1,
        "InstanceType": instance_type,
        "ClientToken": token,
        "TagSpecifications": tag_specifications(config, image, recorded, name),
        **launch_arguments(chosen),
    }
    params.update(network_params(nics, config.public_ip, warnings))
    profile = config.iam_instance_profile or trusted_profile(config, recorded, image)
    platform = recorded.platform or "linux"
    optional = {
        "KeyName": pick("KEY_NAME", recorded.key_name),
        "IamInstanceProfile": instance_profile(profile),
        "UserData": build_user_data(platform, config.hostname, config.user_data),
        "BlockDeviceMappings": volume_overrides(config, image),
    }
    params.update({k: v for k, v in optional.items() if v})
    attributes += interface_attributes(config, recorded, nics)
    if len(nics) > 1:  # EC2 gives a public IP at launch to a lone interface only
        mark_attributes(attributes, ["public IP"])
    plan = Plan(image, recorded, params, None, name, warnings, attributes=attributes)
    plan.original_alive = original_alive
    if config.drill:
        plan.network_settings = ("DRILL_SUBNET_ID", "DRILL_SECURITY_GROUP_IDS")
        warnings += drill_isolation(config, recorded)
    else:
        warnings += unselected(recorded, params)
    plan.source_dest_off = [n["index"] for n in nics if n.get("source_dest_check") is False]
    plan.elastic_ips = planned_elastic_ips(config, launch, nics, warnings)
    plan.elastic_ip = next((e["allocation"] for e in plan.elastic_ips if e["index"] == 0
                            and e["slot"] == 0), None)  # fmt: skip
    plan.target_groups = planned_target_groups(config, launch)
    plan.classic_load_balancers = planned_classic(config, launch)
    plan.dns_records = list(config.dns_records)
    attributes += load_balancer_attributes(config, launch, plan)
    plan.others = [other_instance(params, nics, name, n, token) for n in range(2, config.count + 1)]
    for n, other in enumerate(plan.others, start=2):  # each its own host name, as its Name
        if config.hostname:
            host = f"{config.hostname}-{n}"
            other["UserData"] = build_user_data(platform, host, config.user_data)
    for launch in [params, *plan.others]:
        check_user_data_size(launch, config)
    if plan.others and (plan.elastic_ips or plan.target_groups or plan.dns_records):
        warnings.append(
            f"COUNT={config.count}: Elastic IPs, target groups and DNS records go to the "
            f"first instance ({name}) only"
        )
    if recorded.platform == "windows" and original_alive and config.drill:
        warnings.append(
            f"the drill instance has the computer name and SID of {recorded.instance_id}, "
            "which still runs: keep DRILL_SUBNET_ID from reaching its domain controllers"
        )
    elif recorded.platform == "windows" and original_alive and not config.hostname:
        warnings.append(
            f"original instance {recorded.instance_id} still runs: the new Windows instance has "
            "the same computer name and SID, which clash on a network or in a domain; set "
            "HOSTNAME to rename it"
        )
    return plan


# What a drill leaves out unless DRILL_PLACEMENT: production's placement group, partition,
# dedicated host and reserved capacity are production's. "none": no capacity reservation.
DRILL_LEAVES = {
    "placement group": None,
    "partition": None,
    "host": None,
    "host resource group": None,
    "affinity": None,
    "capacity reservation": "none",
}


def unselected(recorded: Recorded, params: dict) -> list[str]:
    """A warning when the new instance lacks a tag the backup that made the image selects
    servers by (TAG_SELECT_TAG_KEYS): the next backup would not select it."""
    tags = {t["Key"] for t in params["TagSpecifications"][0]["Tags"]}
    missing = [k for k in recorded.select_tag_keys if k not in tags]
    if not missing:
        return []
    return [f"the new instance has no {', '.join(missing)} tag, which the backup that made "
            "this image selects servers by: the next backup will not select it; add it to "
            "TAGS"]  # fmt: skip


def drill_isolation(config: RestoreConfig, recorded: Recorded) -> list[str]:
    """Warnings for a drill network that is production's: the subnet or a security group
    the original ran in."""
    nics = recorded.launch.get("interfaces", [])
    warnings = []
    if config.drill_subnet_id in {n.get("subnet") for n in nics}:
        warnings.append(f"DRILL_SUBNET_ID {config.drill_subnet_id} is the subnet the original "
                        "ran in: the drill is not isolated from production")  # fmt: skip
    shared = sorted(set(config.drill_security_group_ids or [])
                    & {g for n in nics for g in n.get("groups", [])})  # fmt: skip
    if shared:
        warnings.append(f"DRILL_SECURITY_GROUP_IDS {', '.join(shared)}: the original ran in "
                        "them, so production's rules reach the drill")  # fmt: skip
    return warnings


def planned_attributes(
    config: RestoreConfig, recorded: Recorded, instance_type: str
) -> list[Attribute]:
    """Each launch attribute (ec2ami.attributes): its setting, else as recorded, else the
    default."""
    made = []
    for attribute in ATTRIBUTES:
        value = getattr(config, attribute.setting.lower()) if attribute.setting else None
        if value is None and attribute.option:
            setting, key = attribute.option
            value = (getattr(config, setting.lower()) or {}).get(key)
        was = recorded.launch.get(attribute.key)
        if value is not None:
            planned = None if value is False and attribute.false_means_none else value
            made.append(Attribute(attribute.label, was, planned, "overridden"))
        elif attribute.key in recorded.launch:
            made.append(Attribute(attribute.label, was, was, "recorded"))
        else:
            made.append(Attribute(attribute.label, None, attribute.default, "default"))
    credits = next(a for a in made if a.name == "CPU credits")
    if not BY_LABEL["CPU credits"].applies(instance_type):
        credits.planned = None
    if config.drill and not config.drill_placement:
        for left in (a for a in made if a.name in DRILL_LEAVES):
            left.planned, left.origin = DRILL_LEAVES[left.name], "drill"
    by_name = {a.name: a for a in made}
    for name, (holder, holds) in DEPENDS_ON.items():
        if by_name[name].planned is not None and not holds(by_name[holder].planned):
            by_name[name].planned, by_name[name].origin = None, by_name[holder].origin
    return made


# Placement that means something only with another: EC2 takes a partition number only
# with its (partition) placement group, and host affinity only with host tenancy (API
# Reference, Placement). Left out with it, whatever left that out.
DEPENDS_ON: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "partition": ("placement group", lambda group: group is not None),
    "affinity": ("tenancy", lambda tenancy: tenancy == "host"),
}


def left_for_type(attributes: list[Attribute], instance_type: str) -> list[str]:
    """A warning when recorded CPU credits are left out: the type chosen is no T type.
    What else depends on the type is fitted before launch (ec2ami.restore.fit)."""
    return [
        f"{a.name} {a.recorded!r} as recorded are left out: they do not fit INSTANCE_TYPE "
        f"{instance_type}"
        for a in attributes
        if a.name == "CPU credits" and a.recorded and a.planned is None
        and a.origin != "overridden"
    ]  # fmt: skip


def restored_name(
    config: RestoreConfig, recorded: Recorded, original_alive: bool, warnings: list
) -> str:
    """NAME, or the original's Name, with "-restored" while the original still exists; a
    drill's instance is <server>-drill-<UTC time>."""
    if config.name:
        return config.name
    if config.drill:
        return f"{recorded.server or 'restored'}-drill-{config.drill_stamp}"
    name = recorded.instance_tags.get("Name") or recorded.server or "restored"
    if original_alive:
        warnings.append(
            f"original instance {recorded.instance_id} still exists, so the new instance is "
            f"named {name}-restored; set NAME to choose"
        )
        name += "-restored"
    return name


def tag_specifications(
    config: RestoreConfig, image: dict, recorded: Recorded, name: str
) -> list[dict]:
    """The original's tags, then TAGS, then Name and the restored-from tags. A drill's
    instance leaves off the tags the backup selects servers by, and is tagged TAG_DRILL."""
    tags = {**recorded.instance_tags, **config.tags, "Name": name}
    if config.drill:
        for key in recorded.select_tag_keys:
            tags.pop(key, None)
        tags[TAG_DRILL] = recorded.server or image["ImageId"]
        tags[TAG_DRILL_RUN] = config.drill_run or ""
        tags[TAG_DRILL_DEADLINE] = config.drill_deadline or ""
    tags[TAG_RESTORED_FROM] = image["ImageId"]
    if recorded.server:
        tags[TAG_RESTORED_SERVER] = recorded.server
    if recorded.pool:
        tags[TAG_RESTORED_POOL] = recorded.pool
    if recorded.created:
        tags[TAG_RESTORED_BACKUP_TIME] = recorded.created
    if len(tags) > MAX_TAGS:
        raise RestoreError(f"{len(tags)} tags for the new instance; EC2 allows 50: trim TAGS")
    pairs = [{"Key": k, "Value": v} for k, v in tags.items()]
    kinds = ("instance", "volume", "network-interface")
    return [{"ResourceType": kind, "Tags": pairs} for kind in kinds]


def check_user_data_size(params: dict, config: RestoreConfig) -> None:
    """EC2 takes at most USER_DATA_MAX bytes of user data (before base64): HOSTNAME wraps
    USER_DATA in a script of its own, so the final size is what counts."""
    size = len((params.get("UserData") or "").encode())
    if size > USER_DATA_MAX:
        with_host = " with HOSTNAME's script" if config.hostname else ""
        raise RestoreError(f"the user data is {size} bytes{with_host}; EC2 takes at most "
                           f"{USER_DATA_MAX} (16 KB): shorten USER_DATA")  # fmt: skip


def trusted_profile(config: RestoreConfig, recorded: Recorded, image: dict) -> str | None:
    """The instance profile the image's tag names, if ALLOWED_INSTANCE_PROFILES allows it.

    The profile hands its role to the new instance, and a tag is only as trustworthy
    as whoever may tag the image: so a recorded profile outside the list stops the
    restore before launch. IAM_INSTANCE_PROFILE, set by the operator, is not checked.
    """
    wanted, allowed = recorded.instance_profile, config.allowed_instance_profiles
    if not wanted or allowed is None:
        return wanted
    name = wanted.rsplit("/", 1)[-1]
    if wanted in allowed or name in allowed:
        return wanted
    raise RestoreError(
        f"image {image['ImageId']} names instance profile {wanted} (in its "
        f"{TAG_INSTANCE_PROFILE} tag), which ALLOWED_INSTANCE_PROFILES does not list; add it "
        "there, or set IAM_INSTANCE_PROFILE to the one to use"
    )


def instance_profile(value: str | None) -> dict | None:
    """IamInstanceProfile by ARN or by name."""
    if not value:
        return None
    return {"Arn": value} if value.startswith("arn:") else {"Name": value}


def volume_overrides(config: RestoreConfig, image: dict) -> list[dict] | None:
    """Apply VOLUME_TYPE, ENCRYPTED, KMS_KEY_ID, DELETE_ON_TERMINATION and
    VOLUME_INITIALIZATION_RATE to every EBS volume (the rate: those made from a snapshot)."""
    ebs: dict[str, Any] = {}
    if config.volume_type:
        ebs["VolumeType"] = config.volume_type
    if config.encrypted is not None or config.kms_key_id:
        ebs["Encrypted"] = config.encrypted is not False
    if config.kms_key_id:
        ebs["KmsKeyId"] = config.kms_key_id
    if config.delete_on_termination is not None:
        ebs["DeleteOnTermination"] = config.delete_on_termination
    rate = config.volume_initialization_rate
    if not ebs and rate is None:
        return None
    mappings = [m for m in image.get("BlockDeviceMappings", []) if "Ebs" in m]
    overrides = []
    for mapping in mappings:
        wanted = dict(ebs)
        if rate is not None and mapping["Ebs"].get("SnapshotId"):
            wanted["VolumeInitializationRate"] = rate
        if wanted:
            overrides.append({"DeviceName": mapping["DeviceName"], "Ebs": wanted})
    return overrides or None
