"""The tag contract: what every backup carries, written by the backup and read by the restore.

Every managed image and its snapshots carry these tags, set at creation. A value
longer than TAG_VALUE_MAX continues in "<key>:2", "<key>:3", ... (split_value and
joined_value, below, are the only writer and reader of that form).
"""

from __future__ import annotations

from typing import Any

TOOL = "ec2-to-ami"
TAG_PREFIX = "ec2-to-ami:"
TAG_MANAGED = "ec2-to-ami:managed-by"  # marker: value is TOOL
TAG_SERVER = "ec2-to-ami:server"  # exactly the server name
TAG_SCHEDULE = "ec2-to-ami:schedule"
TAG_INSTANCE_ID = "ec2-to-ami:instance-id"
TAG_CREATED = "ec2-to-ami:created"  # run start, ISO 8601 UTC
# The retention pool: POOL, which defaults to the config file's name, so two configs
# that back up a server of the same name never count (or prune) each other's images.
TAG_POOL = "ec2-to-ami:pool"
# "<KEEP>@<config id>": which config keeps how many of this instance's backups in the pool;
# two configs that differ would cut each other's backups to the smaller KEEP.
TAG_KEEP = "ec2-to-ami:keep"
TAG_RUN = "ec2-to-ami:run"  # this run's own id: only its images are adopted or polled
# The source instance's launch configuration, for the restore.
TAG_INSTANCE_TYPE = "ec2-to-ami:instance-type"
TAG_SUBNET = "ec2-to-ami:subnet-id"
TAG_SECURITY_GROUPS = "ec2-to-ami:security-group-ids"  # comma-separated
TAG_KEY_NAME = "ec2-to-ami:key-name"
TAG_INSTANCE_PROFILE = "ec2-to-ami:iam-instance-profile"  # ARN
TAG_PRIVATE_IP = "ec2-to-ami:private-ip"
TAG_ELASTIC_IP = "ec2-to-ami:eip-allocation-id"
TAG_PLATFORM = "ec2-to-ami:platform"  # windows | linux
TAG_HTTP_TOKENS = "ec2-to-ami:http-tokens"  # required | optional
TAG_INSTANCE_TAG_KEYS = "ec2-to-ami:instance-tag-keys"  # JSON list of copied keys
# The SELECT_TAGS keys of the config that made the image (JSON list): a restore drill leaves
# them off its instance, so no backup (or DLM policy) selects a drill instance by them.
TAG_SELECT_TAG_KEYS = "ec2-to-ami:select-tag-keys"
# On a drill instance (ami_to_ec2.py --drill): the server it tests. No backup selects it.
TAG_DRILL = "ec2-to-ami:drill"
TAG_DRILL_RUN = "ec2-to-ami:drill-run"  # and the drill run that launched it
# The UTC time ("%Y-%m-%dT%H:%M:%SZ") after which its drill is surely over: a later drill
# ends it (and deletes its detached volumes and interfaces) only once this has passed.
TAG_DRILL_DEADLINE = "ec2-to-ami:drill-deadline"
# On an image a drill restored: "<UTC time> ok|failed status-ok=<s>s check=<s>s".
TAG_VERIFIED = "ec2-to-ami:verified"
# Set on a copy in another region (with all of the source's tags, by CopyImageTags).
TAG_SOURCE_REGION = "ec2-to-ami:source-region"
TAG_SOURCE_IMAGE = "ec2-to-ami:source-image-id"
# Set once the image is shared: "<image id>:<account>,<account>". The image id keeps a
# copy, which inherits its source's tags, from passing for shared itself.
TAG_SHARED_WITH = "ec2-to-ami:shared-with"
# Everything else the source instance ran with, for a restore that makes a twin: one
# compact JSON document (continued like any long value). A key left out has the value
# LAUNCH_DEFAULTS gives it, so an ordinary instance records a short document; "unknown"
# lists what could not be read.
TAG_LAUNCH = "ec2-to-ami:launch"
LAUNCH_VERSION = 1
LAUNCH_TAGS_MAX = 6
LAUNCH_DEFAULTS: dict[str, Any] = {
    "tenancy": "default",
    "placement_group": None,
    "partition": None,
    "host_id": None,
    "host_resource_group": None,
    "affinity": None,
    "cpu_options": None,  # {"CoreCount": n, "ThreadsPerCore": n}
    "credits": None,  # "standard" | "unlimited" (T instance types only)
    "ebs_optimized": False,
    "hibernation": False,
    "nitro_enclave": False,
    "capacity_reservation": "open",
    "http_tokens": "optional",
    "http_hop_limit": 1,
    "http_endpoint": "enabled",
    "http_ipv6": "disabled",
    "metadata_tags": "disabled",
    "hostname_type": "ip-name",
    "dns_a_record": False,
    "dns_aaaa_record": False,
    "termination_protection": False,
    "stop_protection": False,
    "shutdown_behavior": "stop",
    "monitoring": False,
    "auto_recovery": "default",
    "interfaces": [],  # by device index: {"index", "subnet", "groups", "ip", ...}
    "elastic_ips": [],  # {"index": device index, "ip": private IP, "allocation": eipalloc-}
    "target_groups": [],  # {"arn", "port"}
    "classic_load_balancers": [],
    "unknown": [],
}
MAX_TAGS = 50
TAG_VALUE_MAX = 256
TAG_KEY_MAX = 128
# GetLaunchTemplateData calls these on the caller's behalf (EC2 API reference).
LAUNCH_DATA_DESCRIBES = ["ec2:DescribeInstanceCreditSpecifications", "ec2:DescribeVolumes",
                         "ec2:DescribeSpotInstanceRequests"]  # fmt: skip
# DescribeImageReferences looks in launch templates under its caller's policy (as AWS's
# managed AmazonEC2ImageReferencesAccessPolicy, of August 2025, grants), and in instances
# (ec2:DescribeInstances, which the backup has anyway).
IMAGE_REFERENCES_DESCRIBES = ["ec2:DescribeLaunchTemplates", "ec2:DescribeLaunchTemplateVersions"]
INTERFACE_DEFAULTS = {"secondary": [], "ipv6": 0, "source_dest_check": True, "description": "",
                      "delete_on_termination": True, "public_ip": False}  # fmt: skip
SSM_OPT_IN_TAG = "ec2-to-ami-commands"  # "allow" on an instance: the policy lets commands run
# Tags the restore puts on the new instance.
TAG_RESTORED_FROM = "ec2-to-ami:restored-from"  # source image id
TAG_RESTORED_BACKUP_TIME = "ec2-to-ami:restored-backup-time"  # the backup's created time
# The server and pool a restore brought back: how a later restore of the same server knows
# that one already runs (and how a backup knows the instance it replaced, by the image).
TAG_RESTORED_SERVER = "ec2-to-ami:restored-server"
TAG_RESTORED_POOL = "ec2-to-ami:restored-pool"
# "allow" on an Elastic IP, target group or Classic Load Balancer: a restore may use it
RESTORE_OPT_IN_TAG = "ec2-to-ami-restore"
# The in-place restore (ec2ami/restore/inplace.py). On the instance while it runs: "<run>
# <image> <state before>", which holds off a backup and a second in-place restore and
# tells a rerun where to go on. On each volume it replaces, from the start: "<run> <device>
# <time>". On each volume it makes (at creation): "<run> <device>". On the image, after:
# "<time> <instance> <run>".
TAG_IN_PLACE = "ec2-to-ami:in-place-restore"
TAG_REPLACED_BY_RESTORE = "ec2-to-ami:replaced-by-restore"
TAG_IN_PLACE_VOLUME = "ec2-to-ami:in-place-volume"
TAG_RESTORED_IN_PLACE = "ec2-to-ami:restored-in-place"


def split_value(key: str, value: str) -> list[tuple[str, str]]:
    """Store a long value under key, key:2, key:3, ... without cutting it short."""
    chunks = [value[i : i + TAG_VALUE_MAX] for i in range(0, len(value), TAG_VALUE_MAX)]
    return [(key if n == 0 else f"{key}:{n + 1}", chunk) for n, chunk in enumerate(chunks)]


def joined_value(tags: dict[str, str], key: str) -> str | None:
    """Read a tag value that may continue under key:2, key:3, ..."""
    if key not in tags:
        return None
    parts, n = [tags[key]], 2
    while f"{key}:{n}" in tags:
        parts.append(tags[f"{key}:{n}"])
        n += 1
    return "".join(parts)
