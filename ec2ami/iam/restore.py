"""The restore's and the drill's least-privilege policies (--print-iam-policy), for
exactly the features this config uses.
"""

from __future__ import annotations

import json

from ec2ami.aws import base_session
from ec2ami.contract import (
    LAUNCH_DATA_DESCRIBES,
    RESTORE_OPT_IN_TAG,
    TAG_DRILL,
    TAG_IN_PLACE,
    TAG_IN_PLACE_VOLUME,
    TAG_MANAGED,
    TAG_REPLACED_BY_RESTORE,
    TAG_RESTORED_FROM,
    TAG_RESTORED_IN_PLACE,
    TAG_VERIFIED,
    TOOL,
)
from ec2ami.errors import EXIT_OK, ConfigError
from ec2ami.facts import CHECK_DOCUMENTS, RESTORABLE_ROLE_PATH
from ec2ami.iam import allow
from ec2ami.iam.kms import key_arn, kms_statements
from ec2ami.restore.config import RestoreConfig


def print_iam_policy(config: RestoreConfig) -> int:
    """--print-iam-policy: the policy this config's restores (with --drill: its drills)
    need, as JSON; no AWS call."""
    print(json.dumps(iam_policy(config), indent=2))
    return EXIT_OK


def iam_policy(config: RestoreConfig) -> dict:
    """The least-privilege policy for restores (or, with --drill, drills) with this config,
    in its region and account. Long because it is one list of statements, read down.

    The instance profile a restore hands out comes from the image's tag, so PassRole is
    limited to roles under RESTORABLE_ROLE_PATH: create the roles a restore may pass
    there (ALLOWED_INSTANCE_PROFILES checks the profile too). The Elastic IP is the
    configured allocation, or one tagged RESTORE_OPT_IN_TAG = "allow". A drill launches
    only into DRILL_SUBNET_ID with DRILL_SECURITY_GROUP_IDS, terminates only instances
    tagged TAG_DRILL, tags images only with TAG_VERIFIED, and has no call that reaches
    production: no Elastic IP, load balancer, DNS, EnableImage or Recycle Bin.
    """
    region = base_session(config.profile, config.region)[0].region_name
    account = config.role_arn.split(":")[4] if config.role_arn else "*"
    if config.in_place:
        return {"Version": "2012-10-17", "Statement": in_place_statements(config, region, account)}
    arn = f"arn:aws:ec2:{region}:{account}:"
    image = f"arn:aws:ec2:{region}::image/*"
    launched = [arn + k for k in ("instance/*", "volume/*", "network-interface/*")]
    describe = [
        "ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeInstanceStatus",
        "ec2:DescribeInstanceTypes", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
        "ec2:DescribeKeyPairs", "ec2:DescribeAddresses", "ec2:DescribePlacementGroups",
        "ec2:DescribeHosts", *LAUNCH_DATA_DESCRIBES,
    ]  # fmt: skip
    if config.drill:  # (DescribeSnapshots: the keys of encrypted snapshots, before launch)
        describe += ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSnapshots"]
        sid, network = "LaunchOnlyIntoTheDrillSubnet", [
            arn + f"subnet/{config.drill_subnet_id}",
            *(arn + f"security-group/{g}" for g in config.drill_security_group_ids or []),
        ]  # fmt: skip
    else:
        describe += ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSnapshots",
                     "ec2:ListImagesInRecycleBin", "ec2:ListSnapshotsInRecycleBin"]  # fmt: skip
        subnet = f"subnet/{config.subnet_id}" if config.subnet_id else "subnet/*"
        sid, network = "LaunchInTheConfigsRegion", [arn + subnet, arn + "security-group/*"]
    # A twin's recorded placement group and host resource group are resources of
    # RunInstances (a dedicated host is not: Service Authorization Reference).
    placement = [arn + "placement-group/*", f"arn:aws:resource-groups:{region}:{account}:group/*"]
    if config.drill and not config.drill_placement:
        placement = []  # a drill leaves production's placement out
    if config.drill:  # only marked images, and interfaces only in the drill's subnet
        launch = [
            allow(sid, "ec2:RunInstances", [*launched[:2], *network, arn + "key-pair/*",
                                            *placement]),
            allow("LaunchOnlyMarkedImages", "ec2:RunInstances", image,
                  {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}),
            allow("InterfacesOnlyInTheDrillSubnet", "ec2:RunInstances", launched[2],
                  {"ArnEquals": {"ec2:Subnet": network[0]}}),
        ]  # fmt: skip
    else:
        launch = [
            allow(
                sid,
                "ec2:RunInstances",
                [image, *launched, *network, arn + "key-pair/*", *placement],
            )
        ]
    statements = [
        allow("Describe", describe, "*"),
        *launch,
        allow("TagAtLaunchOnly", "ec2:CreateTags", launched,
              {"StringEquals": {"ec2:CreateAction": "RunInstances"}}),
        allow("ReadBackOnlyRestoredInstances",  # both return user data: only the tool's
              ["ec2:GetLaunchTemplateData", "ec2:DescribeInstanceAttribute"], launched[0],
              {"Null": {f"aws:ResourceTag/{TAG_RESTORED_FROM}": "false"}}),
        allow("SourceDestCheckOnlyOnRestoredInterfaces", "ec2:ModifyNetworkInterfaceAttribute",
              launched[2], {"Null": {f"aws:ResourceTag/{TAG_RESTORED_FROM}": "false"}}),
        allow("CheckTheInstanceProfileExists", "iam:GetInstanceProfile",
              f"arn:aws:iam::{account}:instance-profile/*"),
        allow("PassOnlyRestorableRolesToEc2", "iam:PassRole",
              f"arn:aws:iam::{account}:role{RESTORABLE_ROLE_PATH}*",
              {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}),
    ]  # fmt: skip
    if config.drill:
        statements += drill_statements(config, region, launched, image)
    else:
        statements += production_statements(config, region, account, launched, image)
    keys = [*config.backup_kms_keys]
    if config.kms_key_id:
        keys.append(key_arn("KMS_KEY_ID", config.kms_key_id, region, account))
    statements += kms_statements(keys, [region])
    # The check before launch describes the key of each encrypted snapshot (metadata only:
    # DescribeKey returns no key material), directly, so not through EC2.
    statements.append(allow("CheckTheBackupsKeysBeforeLaunch", "kms:DescribeKey",
                            sorted({f"arn:aws:kms:{region}:{account}:key/*", *keys})))  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def in_place_statements(config: RestoreConfig, region: str, account: str) -> list[dict]:
    """An in-place restore's calls, on INSTANCE_ID and volumes only: the root volume task
    and new volumes from marked backups, stop and start, detach and attach, and the
    restore's own tags; deleting a volume only one it marked as replaced."""
    if not config.instance_id:
        raise ConfigError("--in-place --print-iam-policy needs INSTANCE_ID (or --instance-id): "
                          "the policy names the server's instance")  # fmt: skip
    arn = f"arn:aws:ec2:{region}:{account}:"
    instance, volume, task = (arn + f"instance/{config.instance_id}", arn + "volume/*",
                              arn + "replace-root-volume-task/*")  # fmt: skip
    image, snapshot = f"arn:aws:ec2:{region}::image/*", f"arn:aws:ec2:{region}::snapshot/*"
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    ours = [TAG_IN_PLACE, TAG_REPLACED_BY_RESTORE, TAG_IN_PLACE_VOLUME]
    keys = [*config.backup_kms_keys]
    statements = [
        allow("Describe", ["ec2:DescribeImages", "ec2:DescribeInstances", "ec2:DescribeVolumes",
                           "ec2:DescribeReplaceRootVolumeTasks", "ec2:DescribeInstanceStatus"],
              "*"),
        allow("ReplaceTheRootOfTheServersInstance", "ec2:CreateReplaceRootVolumeTask",
              [instance, task, volume]),
        allow("FromMarkedBackupsOnly", "ec2:CreateReplaceRootVolumeTask", [image, snapshot],
              marked),
        allow("NewVolumesOnlyMarkedAsTheRestores", "ec2:CreateVolume", volume,
              {"Null": {f"aws:RequestTag/{TAG_IN_PLACE_VOLUME}": "false"}}),
        allow("NewVolumesOnlyFromMarkedSnapshots", "ec2:CreateVolume", snapshot, marked),
        allow("TagAtCreationOnly", "ec2:CreateTags", [volume, task], {"StringEquals": {
            "ec2:CreateAction": ["CreateVolume", "CreateReplaceRootVolumeTask"]}}),
        allow("MarkTheInstanceAndVolumesWithTheRestoresKeysOnly", ["ec2:CreateTags",
              "ec2:DeleteTags"], [instance, volume],
              {"ForAllValues:StringEquals": {"aws:TagKeys": ours}}),
        allow("RecordTheRestoreOnMarkedImagesOnly", "ec2:CreateTags", image, {
            **marked, "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_RESTORED_IN_PLACE]}}),
        allow("StopAndStartTheServersInstanceOnly", ["ec2:StopInstances", "ec2:StartInstances"],
              instance),
        allow("SwapVolumesOnTheServersInstanceOnly", ["ec2:AttachVolume", "ec2:DetachVolume",
              "ec2:ModifyInstanceAttribute"], [instance, volume]),
        allow("DeleteOnlyVolumesTheRestoreReplaced", "ec2:DeleteVolume", volume,
              {"Null": {f"aws:ResourceTag/{TAG_REPLACED_BY_RESTORE}": "false"}}),
    ]  # fmt: skip
    return statements + kms_statements(keys, [region])


def production_statements(
    config: RestoreConfig, region: str, account: str, launched: list[str], image: str
) -> list[dict]:
    """What a restore does to production, and a drill never: EnableImage, the Recycle Bin,
    Elastic IPs, load balancers and DNS."""
    arn, snapshot = f"arn:aws:ec2:{region}:{account}:", f"arn:aws:ec2:{region}::snapshot/*"
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    statements = [
        allow("EnableOnlyMarkedImages", "ec2:EnableImage", image, marked),
        allow("RestoreFromTheRecycleBin",
              ["ec2:RestoreImageFromRecycleBin", "ec2:RestoreSnapshotFromRecycleBin"],
              [image, snapshot]),
    ]  # fmt: skip
    eip = config.elastic_ip
    if eip is not None:
        statements += [
            allow("AssociateTheConfigsElasticIp", "ec2:AssociateAddress",
                  arn + f"elastic-ip/{eip}") if eip != "same" else
            allow("AssociateOnlyElasticIpsThatOptIn", "ec2:AssociateAddress", arn + "elastic-ip/*",
                  {"StringEquals": {f"aws:ResourceTag/{RESTORE_OPT_IN_TAG}": "allow"}}),
            allow("AssociateWithTheNewInstance", "ec2:AssociateAddress", launched[::2]),
        ]  # fmt: skip
    statements += balancer_statements(config, region, account)
    if config.dns_records:
        zones = sorted({r["zone_id"].rsplit("/", 1)[-1] for r in config.dns_records})
        hosted = [f"arn:aws:route53:::hostedzone/{z}" for z in zones]
        # Route 53 compares names normalized: lowercase, without the trailing dot (Route 53
        # developer guide, "Using IAM policy conditions for fine-grained access control").
        names = sorted({r["name"].rstrip(".").lower() for r in config.dns_records})
        types = sorted({r["type"] for r in config.dns_records})
        statements += [
            allow("ReadTheConfigsZones", "route53:ListResourceRecordSets", hosted),
            allow("UpsertOnlyTheConfigsDnsRecords", "route53:ChangeResourceRecordSets", hosted, {
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames": names,
                    "route53:ChangeResourceRecordSetsRecordTypes": types,
                    "route53:ChangeResourceRecordSetsActions": ["UPSERT"],
                }}),
        ]  # fmt: skip
    return statements


def drill_statements(
    config: RestoreConfig, region: str, launched: list[str], image: str
) -> list[dict]:
    """A drill's own calls: terminate its instances (tagged TAG_DRILL, which the drill
    can set only at launch), delete the detached interfaces of drills in DRILL_SUBNET_ID
    (ec2:Subnet, which EC2 records) and drill volumes, tag images that carry the marker
    with TAG_VERIFIED only, and run DRILL_CHECK's documents on its instances only."""
    instance, volume, interface = launched
    drilled = {"Null": {f"aws:ResourceTag/{TAG_DRILL}": "false"}}
    subnet = launched[0].split("instance/")[0] + f"subnet/{config.drill_subnet_id}"
    statements = [
        allow("TerminateOnlyDrillInstances", "ec2:TerminateInstances", instance, drilled),
        allow("DeleteOnlyDrillInterfacesInTheDrillSubnet", "ec2:DeleteNetworkInterface",
              interface, {**drilled, "ArnEquals": {"ec2:Subnet": subnet}}),
        allow("DeleteOnlyDrillVolumes", "ec2:DeleteVolume", volume, drilled),
        allow("RecordTheResultOnMarkedImagesOnly", "ec2:CreateTags", image, {
            "StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL},
            "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_VERIFIED]},
        }),
    ]  # fmt: skip
    if config.drill_check:
        documents = [f"arn:aws:ssm:{region}:*:document/{CHECK_DOCUMENTS[p]}"
                     for p in sorted(config.drill_check)]  # fmt: skip
        statements += [
            allow("RunTheCheckDocuments", "ssm:SendCommand", documents),
            allow("RunTheCheckOnDrillInstancesOnly", "ssm:SendCommand", instance,
                  {"Null": {f"ssm:resourceTag/{TAG_DRILL}": "false"}}),
            allow("ReadTheCheck", ["ssm:DescribeInstanceInformation",
                                   "ssm:ListCommandInvocations"], "*"),
        ]  # fmt: skip
    return statements


def balancer_statements(config: RestoreConfig, region: str, account: str) -> list[dict]:
    """Registration in load balancers: the configured ones by ARN or name; those recorded
    on the image ("same") only if they opt in by tag, as a tag never grants power alone."""
    arn = f"arn:aws:elasticloadbalancing:{region}:{account}:"
    opt_in = {"StringEquals": {f"aws:ResourceTag/{RESTORE_OPT_IN_TAG}": "allow"}}
    made = []
    groups, classic = config.target_groups, config.classic_load_balancers
    if groups:
        read = ["elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth"]  # fmt: skip
        made.append(allow("ReadTargetGroups", read, "*"))
        if groups == "same":
            made.append(allow("RegisterOnlyInTargetGroupsThatOptIn",
                              "elasticloadbalancing:RegisterTargets", arn + "targetgroup/*",
                              opt_in))  # fmt: skip
        else:
            arns = sorted({g if isinstance(g, str) else g["arn"] for g in groups})
            made.append(allow("RegisterInTheConfigsTargetGroups",
                              "elasticloadbalancing:RegisterTargets", arns))  # fmt: skip
    if classic:
        made.append(allow("ReadClassicLoadBalancers", "elasticloadbalancing:DescribeLoadBalancers",
                          "*"))  # fmt: skip
        register = "elasticloadbalancing:RegisterInstancesWithLoadBalancer"
        if classic == "same":
            made.append(allow("RegisterOnlyWithClassicLoadBalancersThatOptIn", register,
                              arn + "loadbalancer/*", opt_in))  # fmt: skip
        else:
            made.append(allow("RegisterWithTheConfigsClassicLoadBalancers", register,
                              [arn + f"loadbalancer/{n}" for n in classic]))  # fmt: skip
    return made
