"""The backup's least-privilege policy (--print-iam-policy), statement by statement, for
exactly the features this config uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ec2ami.aws import base_session
from ec2ami.backup.config import SSM_MODES
from ec2ami.backup.cost import DIRECT_ACTIONS
from ec2ami.contract import (
    IMAGE_REFERENCES_DESCRIBES,
    LAUNCH_DATA_DESCRIBES,
    RESTORE_OPT_IN_TAG,
    SSM_OPT_IN_TAG,
    TAG_MANAGED,
    TAG_PREFIX,
    TAG_SHARED_WITH,
    TOOL,
)
from ec2ami.errors import EXIT_OK, ConfigError
from ec2ami.facts import DOC_POWERSHELL, DOC_SHELL, DOC_VSS
from ec2ami.iam import allow
from ec2ami.iam.kms import blocks_statements, key_arn, kms_statements

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig, ServerSpec


def print_iam_policy(config: BackupConfig, guard: bool = False) -> int:
    """--print-iam-policy: the policy this config's runs need (with guard: the tag guard),
    as JSON; no AWS call."""
    print(json.dumps(guard_policy(config) if guard else iam_policy(config), indent=2))
    return EXIT_OK


# The tags that decide what the tool's roles may do: its contract (the marker guards every
# destructive statement) and the opt-in tags its policies honour on instances, Elastic
# IPs and load balancers.
GUARDED_TAG_KEYS = [f"{TAG_PREFIX}*", SSM_OPT_IN_TAG, RESTORE_OPT_IN_TAG]


def guard_policy(config: BackupConfig) -> dict:
    """The tag guard: deny writing or removing the tool's tags to every principal but
    TAG_WRITERS (and ROLE_ARN). A tag written at creation needs ec2:CreateTags too, so
    this covers tag-on-create. Attach it as an SCP, or as a permission boundary."""
    writers = sorted({*config.tag_writers, *([config.role_arn] if config.role_arn else [])})
    if not writers:
        raise ConfigError(
            "TAG_WRITERS: --guard needs the role ARNs that may write this tool's tags (the "
            "backup's, the restore's and the drill's)"
        )
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "OnlyTheToolsRolesWriteItsTags",
                "Effect": "Deny",
                "Action": ["ec2:CreateTags", "ec2:DeleteTags"],
                "Resource": "*",
                "Condition": {
                    "ForAnyValue:StringLike": {"aws:TagKeys": GUARDED_TAG_KEYS},
                    "ArnNotLike": {"aws:PrincipalArn": writers},
                },
            }
        ],
    }


def iam_policy(config: BackupConfig) -> dict:
    """The least-privilege policy for this config: its regions and account, and only the
    features it uses. Every destructive call is limited to images carrying the marker."""
    home, account = policy_scope(config)
    regions = [home, *config.copy_to_regions]
    images = [f"arn:aws:ec2:{r}::image/*" for r in regions]
    snapshots = [f"arn:aws:ec2:{r}::snapshot/*" for r in regions]
    marked = {"StringEquals": {f"aws:ResourceTag/{TAG_MANAGED}": TOOL}}
    describe = ["ec2:DescribeInstances", "ec2:DescribeAddresses", "ec2:DescribeImages",
                "ec2:DescribeSnapshots", "ec2:ListImagesInRecycleBin",
                "ec2:DescribeVolumes", "ec2:ListSnapshotsInRecycleBin"]  # fmt: skip
    if config.check_image_references:  # what DescribeImageReferences looks in, for the caller
        describe += ["ec2:DescribeImageReferences", *IMAGE_REFERENCES_DESCRIBES]
    statements = [
        allow("Describe", describe, "*"),
        *instance_statements(config, home, account, "ec2:CreateImage", "aws:ResourceTag"),
        *instance_statements(config, home, account, "ec2:GetLaunchTemplateData",
                             "aws:ResourceTag", sid="ReadTheConfigsInstancesLaunchData"),
        *instance_statements(config, home, account, "ec2:DescribeInstanceAttribute",
                             "aws:ResourceTag", sid="InstanceAttributesForGetLaunchTemplateData"),
        allow("DescribesGetLaunchTemplateDataMakes", LAUNCH_DATA_DESCRIBES, "*"),
        allow("CreateOnlyMarkedImagesAndSnapshots", "ec2:CreateImage",
                  images[:1] + snapshots[:1],
                  {"StringEquals": {f"aws:RequestTag/{TAG_MANAGED}": TOOL}}),
        allow("TagAtCreationOnly", "ec2:CreateTags", images[:1] + snapshots[:1],
                  {"StringEquals": {"ec2:CreateAction": "CreateImage"}}),
        allow("DeleteOnlyMarkedImagesAndSnapshots",
                  ["ec2:DeregisterImage", "ec2:DeleteSnapshot"], images + snapshots, marked),
        allow("ReleaseProtectionOnlyOfMarkedImages",
                  "ec2:DisableImageDeregistrationProtection", images, marked),
        allow("CountBlocksOnlyOfMarkedSnapshots", DIRECT_ACTIONS, snapshots, marked),
        # A backup's volume made from a snapshot (a restored backup's, a golden image's) is
        # stored incrementally to it; --cost compares the two, and that parent carries no
        # marker. Block indexes only, no data: ListChangedBlocks reads nothing else.
        allow("CompareFirstBackupsWithTheSnapshotsTheirVolumesCameFrom",
              "ebs:ListChangedBlocks", snapshots),
        *blocks_statements(config.backup_kms_keys, home),
    ]  # fmt: skip
    if config.record_load_balancers:
        statements.append(allow(
            "ReadLoadBalancerMembership",
            ["elasticloadbalancing:DescribeTargetGroups",
             "elasticloadbalancing:DescribeTargetHealth",
             "elasticloadbalancing:DescribeLoadBalancers"], "*",
        ))  # fmt: skip
    if config.deregistration_protection:
        protect = "ec2:EnableImageDeregistrationProtection"
        statements.append(allow("ProtectOnlyMarkedImages", protect, images, marked))
    statements += ssm_statements(config, home, account)
    statements += dr_statements(config, images, snapshots, marked, account)
    if config.metrics_namespace:
        statements.append(allow(
            "PutMetricsOnlyInTheConfigsNamespace", "cloudwatch:PutMetricData", "*",
            {"StringEquals": {"cloudwatch:namespace": config.metrics_namespace}},
        ))  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def policy_scope(config: BackupConfig) -> tuple[str, str]:
    """The region and account for the policy's ARNs, without an AWS call: REGION (or the
    profile's), and ROLE_ARN's account, else "*"."""
    region = base_session(config.profile, config.region)[0].region_name
    return region, config.role_arn.split(":")[4] if config.role_arn else "*"


def instance_statements(
    config: BackupConfig, region: str, account: str, action: str, tag_key: str,
    servers: Sequence[ServerSpec] | None = None, sid: str = "ImageOnlyTheConfigsInstances",
) -> list[dict]:  # fmt: skip
    """action on the config's instances: SERVERS by id, SELECT_TAGS by their tags."""
    listed = config.servers if servers is None else servers
    arn = f"arn:aws:ec2:{region}:{account}:instance/"
    made = []
    if listed:
        made.append(allow(sid, action, [arn + s.instance_id for s in listed]))
    if config.select_tags and servers is None:
        tags = {f"{tag_key}/{k}": v for k, v in config.select_tags.items()}
        made.append(allow(sid + "ByTag", action, arn + "*", {"StringEquals": tags}))
    return made


def ssm_statements(config: BackupConfig, region: str, account: str) -> list[dict]:
    """Run Command, only if a server uses vss or scripts: the documents those modes run,
    on those servers by id, or (found by SELECT_TAGS) on instances that opt in by tag."""
    by_tags = config.select_tags and config.defaults.consistency in SSM_MODES
    servers = [s for s in config.servers if s.consistency in SSM_MODES]
    if not servers and not by_tags:
        return []
    modes = {s.consistency for s in servers} | ({config.defaults.consistency} if by_tags else set())
    documents = [f"arn:aws:ssm:{region}:*:document/{DOC_VSS}"] if "vss" in modes else []
    own = f"arn:aws:ssm:{region}:{account}:document/{config.ssm_document}"
    if "scripts" in modes:  # SSM_DOCUMENT runs this config's scripts only; the AWS ones, any
        shared = [f"arn:aws:ssm:{region}:*:document/{d}" for d in (DOC_SHELL, DOC_POWERSHELL)]
        documents = [*([own] if config.ssm_document else shared), *documents]
    made = [
        allow("FindSsmManagedInstances", ["ssm:DescribeInstanceInformation",
                  "ssm:GetCommandInvocation", "ssm:ListCommands"], "*"),
        allow("RunOnlyTheConsistencyDocuments", "ssm:SendCommand", documents),
    ]  # fmt: skip
    if config.ssm_document and "scripts" in modes:
        made.append(allow("CheckTheConfigsDocument", "ssm:DescribeDocument", own))
    made += instance_statements(config, region, account, "ssm:SendCommand", "ssm:resourceTag",
                                servers, "OnlyOnTheConsistencyServers")  # fmt: skip
    if by_tags:  # opted in, and selected by SELECT_TAGS as the backup selects them
        selected = {f"ssm:resourceTag/{k}": v for k, v in sorted(config.select_tags.items())}
        made.append(allow(
            "OnlyOnSelectedInstancesThatOptIn", "ssm:SendCommand",
            f"arn:aws:ec2:{region}:{account}:instance/*",
            {"StringEquals": {f"ssm:resourceTag/{SSM_OPT_IN_TAG}": "allow", **selected}},
        ))  # fmt: skip
    return made


def dr_statements(
    config: BackupConfig, images: list[str], snapshots: list[str], marked: dict, account: str
) -> list[dict]:
    """Copies, sharing and deprecation, only as far as the config uses them.

    CopyImage is authorized on the source image and on the copy's images and snapshots
    in each destination region (the snapshots since October 2024). It has no
    aws:ResourceTag key (Service Authorization Reference): the source is limited to this
    account's images by ec2:Owner when ROLE_ARN names the account, else by nothing IAM
    can check (the tool copies only images it made)."""
    made = []
    if config.copy_to_regions:
        own = {"StringEquals": {"ec2:Owner": account}} if account != "*" else None
        made += [
            allow("CopyIntoTheConfigsRegions", "ec2:CopyImage", images[1:] + snapshots),
            allow("CopyOnlyThisAccountsImages", "ec2:CopyImage", images[:1], own),
            allow("TagCopiesAtCreationOnly", "ec2:CreateTags", images[1:] + snapshots[1:],
                      {"StringEquals": {"ec2:CreateAction": "CopyImage"}}),
        ]  # fmt: skip
    if config.share_with_accounts:
        accounts = sorted(config.share_with_accounts)
        made += [  # IAM has no condition key for whom an image's launch permission names
            allow("ShareOnlyMarkedImages", "ec2:ModifyImageAttribute", images, marked),
            allow("ShareSnapshotsOnlyWithTheConfigsAccounts", "ec2:ModifySnapshotAttribute",
                      snapshots,
                      {**marked, "ForAllValues:StringEquals": {"ec2:Add/userId": accounts},
                       "Null": {"ec2:Add/group": "true"}}),  # never "all": public
            allow("RecordWhomAnImageIsSharedWith", "ec2:CreateTags", images, {
                **marked, "ForAllValues:StringEquals": {"aws:TagKeys": [TAG_SHARED_WITH]}}),
            allow("FindWhichKeyEncryptsAnImageBeforeSharingIt", "kms:DescribeKey", "*"),
            allow("CheckBlockPublicAccessBeforeSharing",  # account settings: no resource
                  ["ec2:GetImageBlockPublicAccessState",
                   "ec2:GetSnapshotBlockPublicAccessState"], "*"),
        ]  # fmt: skip
    if any(s.consistency == "vss" for s in config.servers) or (
        config.select_tags and config.defaults.consistency == "vss"
    ):
        made.append(allow("TagWhatVssMade", "ec2:CreateTags", images[:1] + snapshots[:1],
                              marked))  # fmt: skip
    if config.deprecate_after_days:
        made.append(allow("DeprecateOnlyMarkedImages", "ec2:EnableImageDeprecation",
                              images, marked))  # fmt: skip
    if config.copy_to_regions:  # a copy decrypts its source and encrypts with its own key
        keys = [
            key_arn(f"COPY_TO_REGIONS[{region!r}]['kms_key_id']", t.kms_key_id, region, account)
            for region, t in config.copy_to_regions.items()
            if t.kms_key_id
        ]
        regions = [image.split(":")[3] for image in images]
        made += kms_statements([*config.backup_kms_keys, *keys], regions)
    return made
