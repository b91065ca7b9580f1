"""EC2, EBS and SSM facts the code relies on: states, error codes, limits and name rules.

Each is named once here, for the backup and the restore alike. Sources: the EC2 API
reference and the botocore service models (data/ec2/2016-11-15/service-2.json).
"""

from __future__ import annotations

import re
from datetime import timedelta

# Image and instance states.
AVAILABLE, PENDING, FAILED, RUNNING = "available", "pending", "failed", "running"
DISABLED = "disabled"  # DisableImage: hidden from DescribeImages unless IncludeDisabled;
# EnableImage makes the image available again
# DescribeImages' DeregistrationProtection: "disabled", "enabled-with-cooldown",
# "enabled-without-cooldown", or "disabled-until <time>" while a cooldown runs.
PROTECTION_OFF = "disabled"
LIVE_INSTANCE_STATES = ["pending", "running", "stopping", "stopped"]
ERR_DUPLICATE_NAME = "InvalidAMIName.Duplicate"
ERR_SNAPSHOT_IN_USE = "InvalidSnapshot.InUse"
ERR_SNAPSHOT_NOT_FOUND = "InvalidSnapshot.NotFound"
ERRS_IMAGE_GONE = {"InvalidAMIID.Unavailable", "InvalidAMIID.NotFound"}  # already deregistered
SNAPSHOT_SKIPPED = "skipped"  # DeregisterImage kept a snapshot another image uses
SNAPSHOT_DELETED = "success"
SNAPSHOT_NO_PERMISSION = "missing-permissions"  # the caller lacks DeleteSnapshot on it
FILTER_VALUES_MAX = 200
# GetLaunchTemplateData calls in flight at once: enough to reach EC2's describe rate (20/s)
# at 100 ms a call, so a large fleet waits for the bucket, not for round trips.
LAUNCH_DATA_THREADS = 8
BURSTABLE_RE = re.compile(r"^t\d")  # T instance types: CPU credits
DESCRIPTION_MAX = 255  # CreateImage and CopyImage
AMI_NAME_RE = re.compile(r"^[A-Za-z0-9()\[\] ./\-'@_]{3,128}$")
AMI_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9()\[\] ./\-'@_]")
AMI_NAME_CHARS = "letters, digits and ()[] ./-'@_"
INSTANCE_ID_RE = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
SCHEDULE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
POOL_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
ACCOUNT_RE = re.compile(r"^\d{12}$")
# An SSM document name of one's own: 3-128 of [a-zA-Z0-9_.-], without the prefixes SSM
# reserves (aws, amazon, amzn; SSM API Reference, CreateDocument: Name).
SSM_DOCUMENT_RE = re.compile(r"^(?!(?i:aws|amazon|amzn))[A-Za-z0-9_.-]{3,128}$")
KMS_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:key/[A-Za-z0-9-]+$")
ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SESSION_NAME_BAD_CHARS = re.compile(r"[^\w+=,.@-]")
KEY_ENABLED = "Enabled"  # KMS KeyState of a key that can be used
KEY_MANAGER_AWS = "AWS"  # KMS KeyManager of an AWS-managed key such as aws/ebs
COPY_OPTIONS = {"keep", "kms_key_id"}
SHARE_ACCOUNTS_MAX = 15  # so TAG_SHARED_WITH fits in one tag value
DEPRECATE_LEAD = timedelta(minutes=10)  # DeprecateAt must lie in the future
SSM_ONLINE, SSM_SUCCESS = "Online", "Success"
SSM_RUNNING = {"Pending", "InProgress", "Delayed", "Cancelling"}
DOC_SHELL, DOC_POWERSHELL, DOC_VSS = (
    "AWS-RunShellScript",
    "AWS-RunPowerShellScript",
    "AWSEC2-CreateVssSnapshot",
)
ERR_NO_INVOCATION = "InvocationDoesNotExist"  # just sent: not visible yet
SSM_IDS_MAX = 50  # instance ids per SendCommand, DescribeInstanceInformation filter and page
SSM_NEEDS = "SSM Agent running and an instance profile with AmazonSSMManagedInstanceCore"
VSS_NEEDS = "; for vss also the AwsVssComponents package and AWSEC2VssSnapshotPolicy"
IN_RECYCLE_BIN = "in the Recycle Bin"  # deregistered, kept by a retention rule
GONE_STATES = {"terminated", "shutting-down"}
STATUS_OK = "ok"
ERR_DRY_RUN_OK = "DryRunOperation"
# RunInstances with a client token it has seen but other parameters (EC2 API Reference,
# "Error codes for the Amazon EC2 API"; "Ensure idempotency", EC2 Developer Guide).
ERR_TOKEN_MISMATCH = "IdempotentParameterMismatch"
NOT_FOUND_CODES = {
    "InvalidSubnetID.NotFound": "subnet",
    "InvalidGroup.NotFound": "security group",
    "InvalidGroupId.Malformed": "security group",
    "InvalidKeyPair.NotFound": "key pair",
    "InvalidInstanceType": "instance type",
    "InvalidAllocationID.NotFound": "Elastic IP allocation",
    "InvalidAMIID.NotFound": "image",
    "InvalidAMIID.Malformed": "image",
}
ERR_NO_SUCH_ENTITY = "NoSuchEntity"  # IAM: the instance profile is gone
ERR_TARGET_GROUP_NOT_FOUND = "TargetGroupNotFound"
ERR_LOAD_BALANCER_NOT_FOUND = "LoadBalancerNotFound"  # Classic ELB
PLACEMENT_GONE_CODES = {"InvalidPlacementGroup.Unknown", "InvalidPlacementGroupName.NotFound"}
HOST_USABLE_STATES = {"available"}
HOST_GONE_CODES = {"InvalidHostID.NotFound", "InvalidHostId.NotFound", "InvalidHostID.Malformed",
                   "InvalidHostId.Malformed"}  # fmt: skip
# User data: at most 16 KB in raw form, before base64 (EC2 User Guide, "Run commands when
# you launch an EC2 instance with user data input": "User data is limited to 16 KB").
USER_DATA_MAX = 16 * 1024
STATUS_IDS_MAX = 100  # DescribeInstanceStatus: instance ids per call
INSTANCE_TYPES_MAX = 100  # DescribeInstanceTypes: names per call
DESCRIBED = {"subnets": "Subnets", "security_groups": "SecurityGroups", "key_pairs": "KeyPairs",
             "network_interfaces": "NetworkInterfaces", "addresses": "Addresses",
             "instances": "Reservations", "snapshots": "Snapshots"}  # fmt: skip
DNS_TTL_DEFAULT = 300  # for a DNS_RECORDS record that does not exist yet
UNAVAILABLE = "not reproducible"  # an attribute a warning said cannot be reproduced
MONITORING_ON = ("enabled", "pending")
AMI_ID_RE = re.compile(r"^ami-([0-9a-f]{8}|[0-9a-f]{17})$")
SUBNET_ID_RE = re.compile(r"^subnet-([0-9a-f]{8}|[0-9a-f]{17})$")
GROUP_ID_RE = re.compile(r"^sg-([0-9a-f]{8}|[0-9a-f]{17})$")
ALLOCATION_ID_RE = re.compile(r"^eipalloc-([0-9a-f]{8}|[0-9a-f]{17})$")
HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
WINDOWS_NAME_MAX = 15
VOLUME_TYPES = {"gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"}
# RunInstances' provisioned rate for volume initialization, MiB/s (EbsBlockDevice).
INITIALIZATION_RATES = (100, 300)
DRILL_PICKS = ("newest", "random")
# DRILL_CHECK runs through SSM Run Command with the platform's AWS document.
CHECK_DOCUMENTS = {"linux": "AWS-RunShellScript", "windows": "AWS-RunPowerShellScript"}
WAIT_MODES = ("none", "running", "status-ok")
RESTORABLE_ROLE_PATH = "/ec2-to-ami-restorable/"  # the roles the restore policy lets it pass
BIN_RESTORE_SECONDS = 120  # for an image restored from the Recycle Bin to show as available

# A created tag may follow CreationDate by this much, no more: the tag is the run's start,
# taken on the host before CreateImage, and SigV4 refuses a request whose time is more
# than 5 minutes off (AWS General Reference, "Signature Version 4 signing"), so a correct
# host clock gives a tag before CreationDate. The rest is margin.
CLOCK_SKEW = timedelta(minutes=10)

# --- EC2's throttling: token buckets per account and region ------------------------------
# Source: the EC2 Developer Guide, "Request throttling for the Amazon EC2 API"
# (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-throttling.html), its tables
# "Request token bucket sizes and refill rates" and "Resource token bucket sizes and refill
# rates", read December 2026. "Each API is evaluated individually": every API has a bucket
# of its own, of its category's size (mutating 50 then 5 a second, non-mutating 100 then
# 20), unless the page lists it apart ("uncategorized"). (bucket size, refill per second):
MUTATING_BUCKET, NON_MUTATING_BUCKET = (50, 5.0), (100, 20.0)
# Listed apart: the calls of this tool's that are.
OWN_BUCKETS: dict[str, tuple[int, float]] = {
    "CopyImage": (100, 1.0), "CreateTags": (100, 10.0), "DeleteTags": (100, 10.0),
    "DeregisterImage": (100, 5.0), "DeleteSnapshot": (100, 5.0), "CreateVolume": (100, 5.0),
    "DeleteVolume": (100, 5.0), "DeleteNetworkInterface": (100, 5.0),
    "ModifyImageAttribute": (100, 5.0), "ModifySnapshotAttribute": (100, 5.0),
    "ModifyNetworkInterfaceAttribute": (100, 5.0), "TerminateInstances": (100, 5.0),
    "RunInstances": (5, 2.0), "StartInstances": (5, 2.0),
}  # fmt: skip
# Describes without a filter, ids or pagination draw from a smaller bucket of their own.
UNFILTERED_BUCKET = (50, 10.0)
UNFILTERED_DESCRIBES = frozenset({
    "DescribeInstances", "DescribeInstanceStatus", "DescribeNetworkInterfaces",
    "DescribeSecurityGroups", "DescribeSnapshots", "DescribeSpotInstanceRequests",
    "DescribeVolumes",
})  # fmt: skip
# Resource buckets count instances, not requests, for these (beside their request buckets).
RESOURCE_BUCKETS: dict[str, tuple[int, float]] = {
    "RunInstances": (1000, 2.0), "TerminateInstances": (1000, 20.0),
    "StartInstances": (1000, 2.0), "StopInstances": (1000, 20.0),
}  # fmt: skip
NON_MUTATING_PREFIXES = ("Describe", "List", "Search", "Get")


def request_bucket(action: str) -> tuple[int, float]:
    """An EC2 API's own request bucket: listed apart, else its category's."""
    if action in OWN_BUCKETS:
        return OWN_BUCKETS[action]
    return NON_MUTATING_BUCKET if action.startswith(NON_MUTATING_PREFIXES) else MUTATING_BUCKET
