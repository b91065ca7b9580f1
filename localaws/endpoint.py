"""The local AWS endpoint: moto's server, patched where moto differs
from EC2 in ways that matter to this tool, with fault injection and a call log.

The server runs in a thread of the test process, on 127.0.0.1; the scripts under
test reach it over HTTP through AWS_ENDPOINT_URL, exactly as they reach AWS.

Patches (each has a test in tests/test_endpoint.py):
  P1 CreateImage accepts a "snapshot" TagSpecification and tags the image's
     snapshots (moto answers HTTP 500).
  P2 CreateImage refuses a name already used in the account and region with
     InvalidAMIName.Duplicate (moto allows duplicates).
  P3 A new image is "pending" for `pending_seconds`, then "available", or
     "failed" for instances listed in `fail_images_of` (moto: available at once).
  P4 DeregisterImage honours DeleteAssociatedSnapshots and reports
     DeleteSnapshotResults (moto ignores it and orphans the snapshot).
  P5 CreateImage on a terminated instance fails with IncorrectInstanceState
     (moto succeeds).
  P6 RunInstances with a ClientToken it has seen returns that reservation
     again, or IdempotentParameterMismatch if the image or count differ
     (moto launches new instances every time).
  P7 RunInstances honours DisableApiTermination (moto ignores it).
  P8 A new instance is "pending" for `instance_pending_seconds`, then
     "running"; AssociateAddress on a pending instance fails with
     IncorrectInstanceState, as on EC2 (moto: running at once).
  P9 Terminating an instance disassociates the Elastic IPs of all its interfaces,
     as on EC2 (moto keeps them associated with the terminated instance); which
     interfaces go with it is P34.

  P10 CopyImage runs in the destination region from the source region's
     image: the copy is "pending" for `copy_pending_seconds`, then "available",
     or "failed" when its region is in `fail_copies_to`; CopyImageTags copies
     the source's tags, TagSpecifications tag the copy and its snapshot, and
     Encrypted/KmsKeyId encrypt the copy's snapshot (with the region's
     AWS-managed aws/ebs key when no key is given; an encrypted source stays
     encrypted). A repeated ClientToken returns the same copy (moto ignores all
     of this).
  P11 EnableImageDeprecation and DisableImageDeprecation set and clear the
     image's DeprecationTime, which DescribeImages reports (moto: HTTP 500).
  P13 DescribeImages filters on block-device-mapping.snapshot-id (moto: HTTP 500),
     so a run can ask which images still use a snapshot.
  P14 DeregisterImage with DeleteAssociatedSnapshots answers the ReturnCode in
     `deregister_snapshot_code` for each snapshot ("internal-error" and the like
     keep the snapshot, as EC2 does when its delete fails); default "success".
  P15 DescribeSnapshots honours OwnerIds ("self" or account ids), before any
     filter (moto ignores it, and so lists, and tag-filters slowly, the
     thousand-odd snapshots behind its bundled public AMIs).
  P16 DisableImage and EnableImage set an image "disabled" and back to "available";
     DescribeImages leaves disabled images out unless IncludeDisabled=true, and
     DeregisterImage takes them (moto has neither call, nor the state).
  P17 CreateImage and CopyImage refuse a Description longer than 255 characters
     with InvalidParameterValue, as EC2 does (moto and botocore take any length).
  P18 EnableImageDeregistrationProtection and DisableImageDeregistrationProtection set
     the image's DeregistrationProtection ("enabled-with-cooldown" or
     "enabled-without-cooldown"; disabling one with cooldown gives "disabled-until
     <time>" for 24 hours), which DescribeImages reports, and DeregisterImage refuses a
     protected image (moto has neither call). EC2 does not document the refusal's
     error code; the harness answers OperationNotPermitted.
  P19 The Recycle Bin, with one retention rule for images and one for snapshots when
     `recycle_bin_days` is set: a deregistered image and a deleted snapshot go to
     the bin for that long; ListImagesInRecycleBin and ListSnapshotsInRecycleBin
     list them (without tags, as EC2 does), and RestoreImageFromRecycleBin and
     RestoreSnapshotFromRecycleBin bring them back (moto has no Recycle Bin). With
     `recycle_bin_images_only`, only the rule for images exists: a deleted snapshot is
     gone, as in an account whose rule covers AMIs alone.
  P12 Encrypted volumes: CreateImage of an instance listed in
     `encrypt_images_of` gives an image whose snapshot is encrypted with the
     listed key (None: the region's aws/ebs key), and DescribeImages reports
     Ebs.Encrypted as EC2 does. moto's aws/ebs key is made AWS-managed
     (KeyManager "AWS"), as on AWS (moto makes it a customer key).

  P20 RunInstances keeps what moto drops, and DescribeInstances reports it: Placement
     Tenancy, GroupName, PartitionNumber, Affinity and HostResourceGroupArn; CpuOptions;
     PrivateDnsNameOptions; MaintenanceOptions; EnclaveOptions;
     CapacityReservationSpecification; and per network interface, its Description (none
     unless asked: moto says "Primary network interface"), DeleteOnTermination (true unless
     asked otherwise: moto makes it false) and its secondary private IPs
     (SecondaryPrivateIpAddressCount or PrivateIpAddresses);
     the instance's SecurityGroups are its primary interface's, and each interface has
     its own groups (moto adds the instance's groups to every interface).
     Without them an instance shows EC2's defaults. A placement group that does not
     exist is refused with InvalidPlacementGroup.Unknown, before anything launches.
  P23 AssociateAddress by NetworkInterfaceId honours PrivateIpAddress (a secondary
     address keeps the interface's primary public IP), and an address on an attached
     interface reports its instance's InstanceId, as on EC2; terminating an instance
     releases the Elastic IPs on any of its interfaces (moto: the interface's primary
     address only, with no InstanceId).
  P21 Placement groups: CreatePlacementGroup, DescribePlacementGroups (by GroupNames,
     unknown ones refused with InvalidPlacementGroup.Unknown, as EC2 does) and
     DeletePlacementGroup (moto's server answers HTTP 500).
  P22 CreditSpecification: RunInstances keeps CpuCredits, and
     DescribeInstanceCreditSpecifications and GetLaunchTemplateData report it, else the
     type's default ("standard" for t2, "unlimited" for later T types); moto says
     "standard" always.

  P24 Each volume holds 512 KiB blocks that a test writes (write_blocks) and grows
     (resize_volume); CreateImage freezes what each volume holds into its snapshot, a
     copy holds its source's blocks (with VolumeId vol-ffffffff, as EC2 reports), and
     the EBS direct APIs ListSnapshotBlocks and ListChangedBlocks answer from them,
     paginated by MaxResults (100-10,000) and NextToken, refusing snapshots of
     different lineages and archived ones with ValidationException (moto's direct APIs
     know only the snapshots they made themselves, and its ListChangedBlocks misses
     blocks that only the second snapshot holds).
  P43 A volume made from a snapshot (RunInstances from an image, CreateVolume) holds its
     blocks, and a snapshot of that volume descends from it: ListChangedBlocks compares
     the two, as EC2's direct APIs compare snapshots of one lineage (moto's volumes start
     empty, so a restored server's or a golden image's first backup looked whole).
  P25 CreateImage snapshots every EBS volume attached to the instance, each under its
     own device in BlockDeviceMappings with its own VolumeSize; CopyImage, DeregisterImage
     with DeleteAssociatedSnapshots and the snapshot-id filter take them all (moto images
     a made-up 15 GiB root volume only).
  P26 ModifySnapshotTier to archive: the snapshot's StorageTier is "archive" at once
     (EC2 takes hours) and FullSnapshotSizeInBytes gives its blocks' size; DescribeSnapshots
     reports both (moto has neither). The direct APIs refuse an archived snapshot.
     A standalone endpoint (the demo's) takes writes as a POST to CONTROL_PATH.

  P27 RunInstances completes a block device mapping for a device the image maps with the
     image's snapshot and size, so a mapping may change only, say, the volume type or
     the initialization rate, as on EC2 (moto refuses it: MissingParameter).
  P29 CreationDate carries its milliseconds (EC2 writes .000Z: whole seconds). On EC2 a
     server's backups are hours apart; the suite runs them milliseconds apart, as
     tests/conftest.py's RunClock steps the tool's own clock. Retention orders by
     (CreationDate, image id), so the finer clock changes nothing that EC2 would order.
  P30 CopySnapshot's snapshot reports VolumeId vol-ffffffff, as EC2's do ("snapshots
     created by CopySnapshot have an arbitrary volume ID"); moto keeps the source's
     volume, which would tie a copy to a volume it was never taken from.
  P31 DescribeImageReferences (moto has none): the instances not terminated that were
     launched from each image, the launch template versions that name it, and the SSM
     parameters whose value it is, at most 10 image ids a call, as EC2 allows.
  P32 RegisterImage uses the snapshots its BlockDeviceMappings name, under their devices
     (moto makes up a snapshot of its own), so an image registered by hand from a backup's
     snapshots shares them, as on EC2; it records no SourceInstanceId.
  P33 DescribeInstances takes EC2's `client-token` filter (moto answers HTTP 500).
  P34 What termination deletes follows DeleteOnTermination, as on EC2: an interface that
     a launch created without saying is deleted with its instance (unconfirmed for the
     NetworkInterfaces form: the tool always says); one launched with it false, or
     attached later, survives detached and "available" (moto: kept attached). CreateImage
     records each attached volume's DeleteOnTermination in the image's mapping (moto: a
     made-up root with false; an AWS image maps its root true), AttachVolume's default is
     false, and RunInstances from an image the harness made launches a volume for every
     device the image maps, each with the image's setting unless the request says
     otherwise (moto: an 8 GiB root alone, or only the devices the request names).
  P35 Public IPs at launch, as on EC2: a subnet with MapPublicIpOnLaunch gives one to a
     lone interface unless AssociatePublicIpAddress says false, and none when several
     interfaces are launched; AssociatePublicIpAddress with several interfaces is refused
     with InvalidParameterCombination (EC2 API reference,
     InstanceNetworkInterfaceSpecification: "You cannot specify more than one network
     interface in the request"). moto maps one to the primary interface regardless.
  P36 No capacity: RunInstances of an instance type, or into an Availability Zone, listed
     in `no_capacity` fails with InsufficientInstanceCapacity and HTTP 500, as EC2's
     server errors do (moto always has capacity).
  P37 GetImageBlockPublicAccessState and GetSnapshotBlockPublicAccessState (moto has
     neither) answer `block_public_access`: both blocked ("block-new-sharing") unless a
     test unblocks one. AWS's defaults differ (AMIs blocked for accounts made since
     October 2023, snapshots unblocked); the suite's account is set as docs/dr.md tells
     operators to set theirs, and tests of an unblocked account say so.
  P38 RunInstances refuses what EC2 refuses for the instance type and the request
     (localaws/launch_rules.py, each rule with its source): CPU options on a type without
     ValidCores or outside them, more interfaces or addresses than the type takes,
     EbsOptimized, hibernation or Nitro Enclaves on a type without them, interfaces in
     different zones or VPCs, a partition number without a partition group, affinity
     without host tenancy, user data over 16 KB, and AssociatePublicIpAddress off eth0 or
     with several interfaces (moto launches anything).
  P39 An image's boot mode is the one EC2 gives it: CreateImage's comes from the image the
     instance was launched from, CopyImage's from its source, and the public images are
     legacy-bios, as those AMIs are (moto: "uefi" for every image, which no T2 boots).
  P40-P42 volumes as EC2 handles them, and the root volume replacement task:
     localaws/volumes.py.
  P28 DescribeImages reports the facts EC2 records and no user can set: SourceImageId
     and SourceImageRegion (CreateImage: the image the instance was launched from;
     CopyImage: the source), besides moto's SourceInstanceId (CreateImage only) and
     CreationDate. moto reports neither source field (EC2 API reference, Image).

SSM (moto's SendCommand succeeds without running anything, and moto has no
DescribeInstanceInformation):
  S1 DescribeInstanceInformation lists EC2 instances as managed and Online,
     except those in `ssm_unmanaged` (absent) or `ssm_offline` (ConnectionLost),
     in pages of MaxResults (5-50; SSM's default 10) with NextToken, as SSM does.
  S2 A command runs on the instances it names (moto adds every instance in the
     region when Targets is empty). Its status comes from `ssm_results`: the first key found in the
     command's document name or script text decides ("Failed", "TimedOut", or
     "Hang", which stays InProgress); otherwise "Success".
  S3 AWSEC2-CreateVssSnapshot with CreateAmi=True creates the image, named by
     AmiName, tagged at creation with the document's `tags` plus the reserved
     AppConsistent and AwsVssConfig, on the image and its snapshots (Device on the
     snapshot too), as the real document does: its instance role's managed policy,
     AWSEC2VssSnapshotPolicy, allows CreateImage on snapshots only with the request tag
     AwsVssConfig and CreateTags on them only as part of CreateImage. `vss_snapshot_tags`
     False leaves the `tags` off the snapshots, for the case the tool must catch.
  S5 SendCommand of a document of the account's own refuses a document that does not
     exist (InvalidDocument) and a parameter it does not declare or a value outside its
     allowedValues (InvalidParameters), as SSM does (moto runs any name with anything).
  S4 ListCommandInvocations by CommandId (and InstanceId), in pages of MaxResults (1-50)
     with NextToken, with CommandPlugins (Details=true) whose ResponseCode is 0 for
     Success and 1 for Failed (moto has no ListCommandInvocations).

IAM (moto's enforcement, when a test turns it on):
  I1 An action is authorized under its IAM prefix, not the service's signing name:
     CloudWatch's calls are "cloudwatch:PutMetricData", as in IAM policies (moto
     checks "monitoring:PutMetricData", which no real policy names). Tested in
     tests/test_iam.py.
  I2 A GET request's signature is checked against the empty body it was signed with
     (moto checks it against the query's parameters, so every REST GET, such as the EBS
     direct APIs' lists, fails with SignatureDoesNotMatch). Tested in tests/test_iam.py.
  I3 An EBS direct API call that IAM refuses is answered in REST-JSON with
     AccessDeniedException, as AWS does (moto answers in EC2's XML, which botocore cannot
     parse for this service, so the error has no code). Tested in tests/test_iam.py.

Speed (the answers are moto's own, only found faster; tested in tests/test_endpoint.py):
  H1 A resource's tags are looked up by its id (moto scans every tag in the region with
     a regular expression for each resource it describes or filters, which made it the
     endpoint's main cost with dozens of tagged images and instances).
  H2 The list of moto's service modules is read once (moto lists its package directory,
     and stats each of its 180-odd entries, on every request).
  H3 A response class's method names are read once per class (moto calls
     inspect.getmembers on the class on every request). The harness's patches are all
     installed before the first request.
  H4 CreateKeyPair hands out one RSA key made once per process (moto makes a new 2048-bit
     key for each pair: 70 ms, for a key no test uses). Each pair keeps its own id.

Faults: `inject()` makes the next matching calls of an action fail with an EC2
error document (for example RequestLimitExceeded with 503, InternalError with
500), so botocore sees what it would see from EC2. With `lost=True` the call
reaches the backend and takes effect first, and only its answer is replaced by
the error: a response lost on the way back, after which botocore retries.

Throttling: `throttle()` turns on an emulation of EC2's request token buckets,
per action category and per region, with the sizes and refill rates of
shared/aws-notes.md. A call that finds its bucket empty is refused with
RequestLimitExceeded (HTTP 503), as EC2 does, and takes no token.
`throttle(busier={"CreateImage": (20, 2.0)})` gives an API a smaller bucket than the
documented one: an account where other work spends part of it, which the tool cannot
know (bench/throttled.py, tests/test_pacing.py).
"""

from __future__ import annotations

import argparse
import base64
import copy
import io
import itertools
import json
import logging
import os
import re
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

# moto loads its public AMIs when this module imports it: only the two the tests launch
# from, so that a region's backend starts (and every filter runs) in milliseconds, not
# over a thousand images and their snapshots.
PUBLIC_AMIS = [
    {"ami_id": "ami-1e749f67", "state": "available", "public": True, "owner_id": "099720109477",
     "image_location": "amazon/getting-started", "sriov": "simple", "root_device_type": "ebs",
     "root_device_name": "/dev/sda1", "image_type": "machine", "platform": None,
     "description": "Canonical, Ubuntu, 14.04 LTS, amd64 trusty image build on 2017-07-27",
     "architecture": "x86_64", "virtualization_type": "hvm", "hypervisor": "xen",
     "boot_mode": "legacy-bios",
     "name": "ubuntu/images/hvm-ssd/ubuntu-trusty-14.04-amd64-server-20170727"},
    {"ami_id": "ami-03cf127a", "state": "available", "public": True, "owner_id": "801119661308",
     "image_location": "amazon/getting-started", "sriov": "simple", "root_device_type": "ebs",
     "root_device_name": "/dev/sda1", "image_type": "machine", "platform": "windows",
     "description": "Microsoft Windows Server 2016 Nano Locale English AMI provided by Amazon",
     "architecture": "x86_64", "virtualization_type": "hvm", "hypervisor": "xen",
     "boot_mode": "legacy-bios",
     "name": "Windows_Server-2016-English-Nano-Base-2017.10.13"},
]  # fmt: skip
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as _handle:
    json.dump(PUBLIC_AMIS, _handle)
os.environ["MOTO_AMIS_PATH"] = _handle.name

import moto.backends
import moto.core.responses
import moto.ec2.models.key_pairs
from moto.core.responses import ActionResult
from moto.ebs.responses import EBSResponse
from moto.ec2.exceptions import EC2ClientError, InvalidSnapshotIdError
from moto.ec2.models.amis import Ami, AmiBackend
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.elastic_block_store import EBSBackend, Snapshot
from moto.ec2.models.elastic_ip_addresses import ElasticAddress, ElasticAddressBackend
from moto.ec2.models.elastic_network_interfaces import NetworkInterface
from moto.ec2.models.instance_types import INSTANCE_TYPES
from moto.ec2.models.instances import Instance, InstanceState
from moto.ec2.responses._base_response import EC2BaseResponse
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.responses.elastic_ip_addresses import ElasticIPAddresses
from moto.ec2.responses.instances import InstanceResponse
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, generic_filter, get_prefix
from moto.iam.access_control import IAMRequestBase
from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.ssm.exceptions import SSMException
from moto.ssm.models import SimpleSystemManagerBackend as SSMBackend
from moto.ssm.responses import SimpleSystemManagerResponse
from werkzeug.serving import make_server

from ec2ami.facts import (
    RESOURCE_BUCKETS,
    UNFILTERED_BUCKET,
    UNFILTERED_DESCRIBES,
    request_bucket,
)
from localaws import launch_rules, volumes

os.unlink(_handle.name)  # moto read it on import

LINUX_AMI = "ami-1e749f67"  # from moto's bundled amis.json
WINDOWS_AMI = "ami-03cf127a"

logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request


@dataclass
class Fault:
    """Make the next `times` calls of `action` (matching `match`) fail."""

    action: str
    code: str
    status: int = 400
    times: int = 1
    match: dict[str, str] = field(default_factory=dict)
    message: str = "injected by the test harness"
    lost: bool = False  # the call takes effect; only its answer is lost

    def matches(self, action: str, params: dict[str, str]) -> bool:
        """Whether this fault applies to a call."""
        if self.times <= 0 or action != self.action:
            return False
        return all(params.get(key) == value for key, value in self.match.items())


@dataclass
class Call:
    """One request the endpoint saw."""

    action: str
    params: dict[str, str]
    status: int = 0
    service: str = "ec2"
    region: str = "us-east-1"
    key: str = ""  # the access key id that signed it


class Settings:
    """Behaviour knobs the tests turn; read by the patched backend."""

    def __init__(self) -> None:
        self.pending_seconds = 0.0
        self.fail_images_of: set[str] = set()
        self.instance_pending_seconds = 0.0
        self.ssm_unmanaged: set[str] = set()
        self.ssm_offline: set[str] = set()
        self.ssm_results: dict[str, str] = {}
        self.copy_pending_seconds = 0.0
        self.fail_copies_to: set[str] = set()
        self.encrypt_images_of: dict[str, str | None] = {}
        self.deregister_snapshot_code = "success"
        self.recycle_bin_days: float | None = None  # P19: None, no retention rule
        self.recycle_bin_images_only = False  # P19: a rule for images, none for snapshots
        self.no_capacity: set[str | None] = set()  # P36: instance types and zones
        self.vss_snapshot_tags = True  # S3: False, the document's tags go on the image only
        self.block_public_access = {"image": "block-new-sharing", "snapshot": "block-new-sharing"}

    def reset(self) -> None:
        self.__init__()


SETTINGS = Settings()


# --- P1, P2, P3, P5: CreateImage ---------------------------------------------------

_original_create_image = AmiBackend.create_image
_original_run_instances = InstanceResponse.run_instances
_original_associate_address = ElasticAddressBackend.associate_address
_original_terminate = Instance.terminate
_original_block_device_mappings = Ami.block_device_mappings
_original_ami_filter_value = Ami.get_filter_value
_original_describe_images = AmisResponse.describe_images
_original_delete_snapshot = EBSBackend.delete_snapshot
_original_copy_snapshot = EBSBackend.copy_snapshot
_original_ebs_create_volume = EBSBackend.create_volume
_original_method_names = moto.core.responses.method_names_from_class
_original_moto_modules = moto.backends.list_of_moto_modules
_original_rsa_key_pair = moto.ec2.models.key_pairs.random_rsa_key_pair


DESCRIPTION_MAX = 255


def check_description(description: str | None) -> None:
    """EC2's limit on an image's Description (P17)."""
    if description and len(description) > DESCRIPTION_MAX:
        raise EC2ClientError(
            "InvalidParameterValue",
            f"Value for parameter Description is too long: {len(description)} characters, "
            f"at most {DESCRIPTION_MAX}",
        )


def _create_image(self, instance_id, name, description, tag_specifications):
    """CreateImage as EC2 does it: unique names, snapshot tags, a pending state."""
    check_description(description)
    for ami in list(self.amis.values()):  # other requests' threads change it
        if ami.name == name and ami.owner_id == self.account_id:
            raise EC2ClientError(
                "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}"
            )
    instance = self.get_instance(instance_id)
    if instance.state == "terminated":
        raise EC2ClientError(
            "IncorrectInstanceState",
            f"The instance '{instance_id}' is not in a state from which it can be imaged.",
        )
    image_specs = [s for s in tag_specifications if s["ResourceType"] != "snapshot"]
    snapshot_tags = [
        t for s in tag_specifications if s["ResourceType"] == "snapshot" for t in s["Tags"]
    ]
    ami = _original_create_image(self, instance_id, name, description, image_specs)
    ami.source_image_id, ami.source_image_region = instance.image_id, self.region_name  # P28
    launched_from = self.amis.get(instance.image_id)  # P39: the boot mode it was launched with
    ami.boot_mode = launched_from.boot_mode if launched_from else None
    image_volumes(self, ami, instance)
    for snapshot in image_snapshots(ami):
        for tag in snapshot_tags:
            snapshot.add_tag(tag["Key"], tag["Value"])
        if instance_id in SETTINGS.encrypt_images_of:
            _encrypt(self, snapshot, SETTINGS.encrypt_images_of[instance_id])
    ami.state = "pending"
    ami.harness_ready_at = time.monotonic() + SETTINGS.pending_seconds
    ami.harness_final = "failed" if instance_id in SETTINGS.fail_images_of else "available"
    return ami


def _creation_date(when: datetime) -> str:
    """CreationDate with its milliseconds (P29)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _backends() -> list[Any]:
    """Every EC2 backend (account, region) moto has made so far."""
    from moto.ec2.models import ec2_backends

    return [backend for account in ec2_backends.values() for backend in account.values()]


def advance() -> None:
    """Move images and instances whose time has come out of pending (P3, P8)."""
    now = time.monotonic()
    for backend in _backends():
        for ami in list(backend.amis.values()):
            ready_at = getattr(ami, "harness_ready_at", None)
            if ami.state == "pending" and ready_at is not None and now >= ready_at:
                ami.state = ami.harness_final
        for instance in list(backend.all_instances()):
            ready_at = getattr(instance, "harness_ready_at", None)
            if instance.state == "pending" and ready_at is not None and now >= ready_at:
                instance._state = InstanceState("running", 16)
        volumes.advance(backend)


def finish_pending() -> None:
    """Let every pending image and instance settle at the next request."""
    for backend in _backends():
        for resource in [*list(backend.amis.values()), *backend.all_instances()]:
            if getattr(resource, "harness_ready_at", None) is not None:
                resource.harness_ready_at = 0.0


# --- P10, P11, P12: CopyImage, deprecation, encryption ---------------------------------

_original_default_key = EBSBackend._create_default_encryption_key


def _aws_managed_default_key(self) -> str:
    """The region's aws/ebs key, AWS-managed as on AWS (P12)."""
    from moto.kms import kms_backends

    arn = _original_default_key(self)
    kms_backends[self.account_id][self.region_name].describe_key(arn).key_manager = "AWS"
    return arn


def _encrypt(backend: Any, snapshot: Any, key: str | None) -> None:
    """Encrypt a made-up snapshot with key (an id, ARN or alias), or with aws/ebs."""
    from moto.kms import kms_backends

    if key is None:
        arn = backend.default_kms_key_id or backend._create_default_encryption_key()
    else:
        arn = kms_backends[backend.account_id][backend.region_name].describe_key(key).arn
    snapshot.encrypted, snapshot.kms_key_id = True, arn


def _block_device_mappings(self) -> list[dict[str, Any]]:
    """The image's mapping with Ebs.Encrypted, as EC2 reports it (P12), a device for each
    volume imaged and each snapshot's own size (P25)."""
    root = _original_block_device_mappings.fget(self)[0]
    mapping = []
    for device, snapshot in [(root["DeviceName"], self.ebs_snapshot), *more_volumes(self)]:
        ebs = {**root["Ebs"], "SnapshotId": snapshot.id, "VolumeSize": snapshot.volume_size,
               "Encrypted": bool(snapshot.encrypted),
               "DeleteOnTermination": deletes_on_termination(self, device)}  # fmt: skip
        mapping.append({"DeviceName": device, "Ebs": ebs})
    return mapping


def deletes_on_termination(ami: Any, device: str) -> bool:
    """A device's DeleteOnTermination in the image: as the volume was attached when it was
    imaged (P34); else true, as AWS's public images map their root volume."""
    return bool(getattr(ami, "harness_delete", {}).get(device, True))


def _register_image(self) -> ActionResult:
    """RegisterImage from the snapshots its BlockDeviceMappings name (P32)."""
    self.error_on_dryrun()
    backend = self.ec2_backend
    ami = backend.register_image(self._get_param("Name"), self._get_param("Description", ""))
    mappings = [m for m in self._get_param("BlockDeviceMappings", []) if m.get("Ebs")]
    snapshots = [(m["DeviceName"], backend.get_snapshot(m["Ebs"]["SnapshotId"]))
                 for m in mappings if m["Ebs"].get("SnapshotId")]  # fmt: skip
    if snapshots:
        ami.ebs_snapshot = snapshots[0][1]
        ami.root_device_name = self._get_param("RootDeviceName") or snapshots[0][0]
        ami.harness_more = snapshots[1:]
    return ActionResult({"ImageId": ami.id})


def _copy_image(self) -> ActionResult:
    """CopyImage with tags, encryption, idempotency and a pending state (P10)."""
    self.error_on_dryrun()
    backend, token = self.ec2_backend, self._get_param("ClientToken")
    for ami in list(backend.amis.values()):
        if token and getattr(ami, "harness_client_token", None) == token:
            return ActionResult({"ImageId": ami.id})
    source_id, source_region = self._get_param("SourceImageId"), self._get_param("SourceRegion")
    name = self._get_param("Name")
    check_description(self._get_param("Description"))
    for ami in list(backend.amis.values()):
        if ami.name == name and ami.owner_id == backend.account_id:
            raise EC2ClientError(
                "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}"
            )
    copy = backend.copy_image(source_id, source_region, name, self._get_param("Description"))
    copy.source_image_id, copy.source_image_region = source_id, source_region  # P28
    from moto.ec2.models import ec2_backends

    source = ec2_backends[backend.account_id][source_region].amis[source_id]
    copy.boot_mode = source.boot_mode  # P39
    if self._get_bool_param("CopyImageTags", False):
        for tag in source.get_tags():
            copy.add_tag(tag["key"], tag["value"])
    copy_volumes(backend, copy, source)
    for spec in self._get_param("TagSpecifications", []):
        targets = [copy] if spec["ResourceType"] == "image" else image_snapshots(copy)
        for target in targets:
            for tag in spec.get("Tags", []):
                target.add_tag(tag["Key"], tag["Value"])
    encrypted = self._get_bool_param("Encrypted", False) or source.ebs_snapshot.encrypted
    key = self._get_param("KmsKeyId")
    if key and not encrypted:
        raise EC2ClientError("InvalidParameterDependency", "KmsKeyId needs Encrypted")
    if encrypted:
        for snapshot in image_snapshots(copy):
            _encrypt(backend, snapshot, key)
    copy.harness_client_token = token
    copy.state = "pending"
    copy.harness_ready_at = time.monotonic() + SETTINGS.copy_pending_seconds
    failed = backend.region_name in SETTINGS.fail_copies_to
    copy.harness_final = "failed" if failed else "available"
    return ActionResult({"ImageId": copy.id})


def _enable_image_deprecation(self) -> ActionResult:
    """EnableImageDeprecation: record DeprecateAt on the image (P11)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    when = self._get_param("DeprecateAt")
    if isinstance(when, str):
        when = datetime.fromisoformat(when.replace("Z", "+00:00"))
    when = (when + timedelta(seconds=30)).replace(second=0, microsecond=0)  # to the minute
    ami.deprecation_time = when.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return ActionResult({"Return": True})


def _disable_image_deprecation(self) -> ActionResult:
    """DisableImageDeprecation: clear the image's DeprecationTime (P11)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    ami.deprecation_time = None
    return ActionResult({"Return": True})


def _ami_filter_value(self, filter_name: str, method_name: str | None = None) -> Any:
    """DescribeImages' block-device-mapping.snapshot-id filter (P13)."""
    if filter_name == "block-device-mapping.snapshot-id":
        return [snapshot.id for snapshot in image_snapshots(self)]
    return _original_ami_filter_value(self, filter_name, method_name)


def _disable_image(self) -> ActionResult:
    """DisableImage: the image is "disabled", hidden from DescribeImages by default (P16)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    ami.state = "disabled"
    ami.launch_permissions = []
    return ActionResult({"Return": True})


def _enable_image(self) -> ActionResult:
    """EnableImage: a disabled image is "available" again (P16)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    if ami.state == "disabled":
        ami.state = "available"
    return ActionResult({"Return": True})


def _enable_deregistration_protection(self) -> ActionResult:
    """EnableImageDeregistrationProtection (P18)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    cooldown = self._get_bool_param("WithCooldown", False)
    ami.deregistration_protection = (
        "enabled-with-cooldown" if cooldown else "enabled-without-cooldown"
    )
    return ActionResult({"Return": "true"})


def _disable_deregistration_protection(self) -> ActionResult:
    """DisableImageDeregistrationProtection: a cooldown keeps it 24 hours more (P18)."""
    self.error_on_dryrun()
    ami = self.ec2_backend.describe_images(ami_ids=[self._get_param("ImageId")])[0]
    if ami.deregistration_protection == "enabled-with-cooldown":
        until = datetime.now(timezone.utc) + timedelta(hours=24)
        ami.deregistration_protection = f"disabled-until {until:%Y-%m-%dT%H:%M:%S.000Z}"
    else:
        ami.deregistration_protection = "disabled"
    return ActionResult({"Return": "true"})


def _still_protected(ami: Ami) -> bool:
    """Whether DeregisterImage is refused for now (P18)."""
    state = ami.deregistration_protection
    if state.startswith("disabled-until "):
        until = datetime.fromisoformat(state.split(" ", 1)[1].replace("Z", "+00:00"))
        return datetime.now(timezone.utc) < until
    return state.startswith("enabled")


def recycle_bin(backend: Any) -> tuple[dict, dict]:
    """A region's Recycle Bin: (images, snapshots), each id -> (resource, time it entered)."""
    if not hasattr(backend, "harness_image_bin"):
        backend.harness_image_bin, backend.harness_snapshot_bin = {}, {}
    days = timedelta(days=SETTINGS.recycle_bin_days or 0)
    for store in (backend.harness_image_bin, backend.harness_snapshot_bin):
        for key, (_, entered) in list(store.items()):
            if entered + days < datetime.now(timezone.utc):
                del store[key]  # the rule's retention ran out
    return backend.harness_image_bin, backend.harness_snapshot_bin


def _binned(ids: list[str], store: dict) -> list[tuple[str, Any, datetime, datetime]]:
    days = timedelta(days=SETTINGS.recycle_bin_days or 0)
    return [(key, item, entered, entered + days) for key, (item, entered) in store.items()
            if not ids or key in ids]  # fmt: skip


def _bin_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _list_images_in_recycle_bin(self) -> ActionResult:
    """ListImagesInRecycleBin (P19)."""
    images, _ = recycle_bin(self.ec2_backend)
    found = [
        {"ImageId": key, "Name": ami.name, "Description": ami.description or "",
         "RecycleBinEnterTime": _bin_time(entered), "RecycleBinExitTime": _bin_time(leaves)}
        for key, ami, entered, leaves in _binned(self._get_param("ImageIds", []), images)
    ]  # fmt: skip
    return ActionResult({"Images": found})


def _describe_image_references(self) -> ActionResult:
    """DescribeImageReferences for instances, launch templates and SSM parameters (P31)."""
    from moto.ssm.models import ssm_backends

    backend, ids = self.ec2_backend, self._get_param("ImageIds", [])
    if not 1 <= len(ids) <= 10:
        raise EC2ClientError("InvalidParameterValue", "ImageIds takes 1 to 10 image ids")
    arn = f"arn:aws:ec2:{backend.region_name}:{backend.account_id}"
    found = [
        {"ImageId": i.image_id, "ResourceType": "ec2:Instance", "Arn": f"{arn}:instance/{i.id}"}
        for i in backend.all_instances()
        if i.image_id in ids and i.state != "terminated"
    ]
    for template in list(backend.launch_templates.values()):
        for image_id in {v.image_id for v in template.versions} & set(ids):
            found.append({"ImageId": image_id, "ResourceType": "ec2:LaunchTemplate",
                          "Arn": f"{arn}:launch-template/{template.id}"})  # fmt: skip
    ssm = ssm_backends[backend.account_id][backend.region_name]
    for name, versions in list(ssm._parameters.items()):
        if versions and versions[-1].value in ids:
            found.append({"ImageId": versions[-1].value, "ResourceType": "ssm:Parameter",
                          "Arn": f"arn:aws:ssm:{backend.region_name}:{backend.account_id}:"
                                 f"parameter{name}"})  # fmt: skip
    return ActionResult({"ImageReferences": found})


def _image_block_public_access(self) -> ActionResult:
    """GetImageBlockPublicAccessState (P37)."""
    return ActionResult({"ImageBlockPublicAccessState": SETTINGS.block_public_access["image"]})


def _snapshot_block_public_access(self) -> ActionResult:
    """GetSnapshotBlockPublicAccessState (P37)."""
    return ActionResult({"State": SETTINGS.block_public_access["snapshot"]})


def _restore_image_from_recycle_bin(self) -> ActionResult:
    """RestoreImageFromRecycleBin: the image is back, available (P19)."""
    backend, image_id = self.ec2_backend, self._get_param("ImageId")
    images, _ = recycle_bin(backend)
    if image_id not in images:
        raise EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    ami, _ = images.pop(image_id)
    ami.state = "available"
    backend.amis[image_id] = ami
    return ActionResult({"Return": True})


def _list_snapshots_in_recycle_bin(self) -> ActionResult:
    """ListSnapshotsInRecycleBin (P19)."""
    _, snapshots = recycle_bin(self.ec2_backend)
    found = [
        {"SnapshotId": key, "Description": snapshot.description or "",
         "VolumeId": snapshot.volume.id, "RecycleBinEnterTime": _bin_time(entered),
         "RecycleBinExitTime": _bin_time(leaves)}
        for key, snapshot, entered, leaves in _binned(self._get_param("SnapshotIds", []),
                                                      snapshots)
    ]  # fmt: skip
    return ActionResult({"Snapshots": found})


def _restore_snapshot_from_recycle_bin(self) -> ActionResult:
    """RestoreSnapshotFromRecycleBin (P19)."""
    backend, snapshot_id = self.ec2_backend, self._get_param("SnapshotId")
    _, snapshots = recycle_bin(backend)
    if snapshot_id not in snapshots:
        raise InvalidSnapshotIdError()
    snapshot, _ = snapshots.pop(snapshot_id)
    backend.snapshots[snapshot_id] = snapshot
    return ActionResult({"SnapshotId": snapshot_id, "State": "completed"})


def _delete_snapshot_to_bin(self: Any, snapshot_id: str) -> Any:
    """DeleteSnapshot, into the Recycle Bin when a rule keeps snapshots (P19)."""
    snapshot = _original_delete_snapshot(self, snapshot_id)
    if SETTINGS.recycle_bin_days is not None and not SETTINGS.recycle_bin_images_only:
        recycle_bin(self)[1][snapshot_id] = (snapshot, datetime.now(timezone.utc))
    return snapshot


def _describe_images(self) -> ActionResult:
    """DescribeImages without disabled images unless IncludeDisabled (P16)."""
    result = _original_describe_images(self)
    if str(self._get_param("IncludeDisabled", False)).lower() != "true":
        images = result.result["Images"]
        images[:] = [ami for ami in images if ami.state != "disabled"]
    return result


def _describe_snapshots(self) -> ActionResult:
    """DescribeSnapshots with OwnerIds, as EC2 does it (P15)."""
    backend = self.ec2_backend
    owners = {backend.account_id if o == "self" else o for o in self._get_param("OwnerIds", [])}
    ids = self._get_param("SnapshotIds", [])
    matches = [s for s in list(backend.snapshots.values()) if not owners or s.owner_id in owners]
    if ids:
        matches = [s for s in matches if s.id in ids]
        if len(ids) > len(matches):
            raise InvalidSnapshotIdError()
    filters = self._filters_from_querystring()
    return ActionResult({"Snapshots": generic_filter(filters, matches) if filters else matches})


# --- P24, P25, P26: what a volume holds, every volume imaged, the EBS direct APIs --------

BLOCK_SIZE = 512 * 1024  # the EBS direct APIs' block
BLOCKS_PER_GIB = 2048
LIST_RESULTS_MAX, LIST_RESULTS_MIN = 10000, 100  # MaxResults of the direct APIs' lists
COPIED_VOLUME_ID = "vol-ffffffff"  # a copied snapshot's VolumeId, as EC2 reports it
_writes = itertools.count(1)


def _volume(volume_id: str) -> Any:
    """A volume of any region, by id."""
    for backend in _backends():
        if volume_id in backend.volumes:
            return backend.volumes[volume_id]
    raise KeyError(volume_id)


def write_blocks(volume_id: str, blocks: Iterable[int]) -> None:
    """Write new data to these 512 KiB blocks of a volume (P24): what a day of use does."""
    volume = _volume(volume_id)
    contents = volume.__dict__.setdefault("harness_blocks", {})
    for index in blocks:
        if not 0 <= index < volume.size * BLOCKS_PER_GIB:
            raise ValueError(f"block {index} is outside {volume_id} ({volume.size} GiB)")
        contents[index] = next(_writes)


def age_image(image_id: str, seconds: float) -> None:
    """Make an image `seconds` older, as time would: its CreationDate, and the created tag the
    backup wrote (each image in its region; a test does not wait for days to pass)."""
    for backend in _backends():
        ami = backend.amis.get(image_id)
        if ami is None:
            continue
        ami.creation_date -= timedelta(seconds=seconds)
        tags = backend.tags.get(image_id, {})
        if "ec2-to-ami:created" in tags:
            when = datetime.fromisoformat(tags["ec2-to-ami:created"].replace("Z", "+00:00"))
            tags["ec2-to-ami:created"] = (when - timedelta(seconds=seconds)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
        return
    raise KeyError(image_id)


def age_instance(instance_id: str, seconds: float) -> None:
    """Make an instance's LaunchTime `seconds` earlier: the time passed since a killed run
    left it behind, without the test waiting for it."""
    for backend in _backends():
        if instance_id in {i.id for i in backend.all_instances()}:
            instance = backend.get_instance(instance_id)
            instance.launch_time -= timedelta(seconds=seconds)
            return
    raise KeyError(instance_id)


def resize_volume(volume_id: str, size_gib: int) -> None:
    """Grow a volume, as ModifyVolume does (P24)."""
    _volume(volume_id).size = size_gib


def _frozen(snapshot: Any, volume: Any, volume_id: str, lineage: str, blocks: dict) -> None:
    """Give a snapshot a volume's size and these blocks, for good (P24), and the snapshots
    its volume descends from (P43)."""
    stand_in = copy.copy(volume)
    stand_in.id = volume_id
    snapshot.volume = stand_in
    snapshot.harness_blocks = dict(blocks)
    snapshot.harness_lineage = lineage
    snapshot.harness_ancestors = frozenset(getattr(volume, "harness_ancestors", ()))


def _ebs_create_volume(self: Any, *args: Any, **kwargs: Any) -> Any:
    """A volume made from a snapshot holds that snapshot's blocks, and descends from it and
    its ancestors (P43): RunInstances from an image, CreateVolume, a root volume task."""
    volume = _original_ebs_create_volume(self, *args, **kwargs)
    snapshot_id = kwargs.get("snapshot_id") or (args[2] if len(args) > 2 else None)
    if snapshot_id and snapshot_id in self.snapshots:
        parent = self.snapshots[snapshot_id]
        volume.harness_blocks = dict(parent.harness_blocks)
        volume.harness_ancestors = frozenset(parent.harness_ancestors) | {parent.id}
    return volume


def image_volumes(backend: Any, ami: Any, instance: Instance) -> None:
    """Snapshot every EBS volume of the instance into the image, not only a made-up root
    (P25), each with what the volume holds now (P24)."""
    ami.harness_more = []
    ami.harness_delete = {}  # P34: each device's DeleteOnTermination, as attached
    for device, mapping in sorted(instance.block_device_mapping.items()):
        ami.harness_delete[device] = bool(mapping.delete_on_termination)
        volume = backend.get_volume(mapping.volume_id)
        if device == instance.root_device_name:
            snapshot = ami.ebs_snapshot
        else:
            description = f"Created by CreateImage({instance.id}) for {ami.id}"
            snapshot = backend.create_snapshot(volume.id, description, ami.owner_id, ami.id)
            ami.harness_more.append((device, snapshot))
        _frozen(snapshot, volume, volume.id, volume.id, getattr(volume, "harness_blocks", {}))


def _copy_snapshot(self, *args: Any, **kwargs: Any) -> Any:
    """CopySnapshot, whose snapshot EC2 reports with VolumeId vol-ffffffff (P30)."""
    made = _original_copy_snapshot(self, *args, **kwargs)
    source = made.volume
    _frozen(made, source, COPIED_VOLUME_ID, made.harness_lineage or made.id, made.harness_blocks)
    return made


def copy_volumes(backend: Any, copied: Any, source: Any) -> None:
    """A copy's snapshots hold its source's blocks, in the same lineage (P24, P25)."""
    pairs = [(copied.ebs_snapshot, source.ebs_snapshot)]
    copied.harness_more = []
    for device, original in more_volumes(source):
        scratch = backend.create_volume(
            size=original.volume_size, zone_name=f"{backend.region_name}a"
        )
        made = backend.create_snapshot(
            scratch.id, f"Copy of {original.id}", copied.owner_id, copied.id
        )
        backend.delete_volume(scratch.id)
        copied.harness_more.append((device, made))
        pairs.append((made, original))
    for made, original in pairs:
        lineage = original.harness_lineage or original.id
        _frozen(made, original.volume, COPIED_VOLUME_ID, lineage, original.harness_blocks)


def more_volumes(ami: Any) -> list[tuple[str, Any]]:
    """The image's devices beyond its root, with their snapshots (P25)."""
    return list(getattr(ami, "harness_more", []))


def image_snapshots(ami: Any) -> list[Any]:
    """Every snapshot the image holds."""
    return [ami.ebs_snapshot, *(snapshot for _, snapshot in more_volumes(ami))]


def _modify_snapshot_tier(self) -> ActionResult:
    """ModifySnapshotTier to "archive": the snapshot becomes a full snapshot in the archive
    tier at once (EC2 takes hours), and DescribeSnapshots reports its StorageTier and
    FullSnapshotSizeInBytes (P26; moto has neither)."""
    self.error_on_dryrun()
    snapshot = self.ec2_backend.get_snapshot(self._get_param("SnapshotId"))
    snapshot.storage_tier = "archive"
    snapshot.full_snapshot_size_in_bytes = len(snapshot.harness_blocks) * BLOCK_SIZE
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return ActionResult({"SnapshotId": snapshot.id, "TieringStartTime": when})


class DirectApiError(Exception):
    """An EBS direct API error, in its REST-JSON form."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message

    def response(self) -> tuple[int, dict, str]:
        headers = {"status": self.status, "x-amzn-ErrorType": self.code}
        return self.status, headers, json.dumps({"message": self.message})


def _direct_snapshot(response: Any, snapshot_id: str) -> Any:
    """The EC2 snapshot a direct API call names: completed and in the standard tier."""
    from moto.ec2.models import ec2_backends

    backend = ec2_backends[response.current_account][response.region]
    if snapshot_id not in backend.snapshots:
        raise DirectApiError("ResourceNotFoundException", 404, f"snapshot {snapshot_id} not found")
    snapshot = backend.snapshots[snapshot_id]
    if snapshot.storage_tier != "standard":
        raise DirectApiError(
            "ValidationException", 400, f"snapshot {snapshot_id} is in the archive tier"
        )
    return snapshot


def _page(response: Any, entries: list[dict]) -> tuple[list[dict], str | None]:
    """One page of block entries, by MaxResults, NextToken and StartingBlockIndex."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(response.uri).query)
    token = query.get("pageToken", [""])[0]
    start = int(base64.b64decode(token)) if token else int(query.get("startingBlockIndex", [0])[0])
    size = max(LIST_RESULTS_MIN, min(LIST_RESULTS_MAX, int(query.get("maxResults", [10000])[0])))
    entries = [e for e in entries if e["BlockIndex"] >= start]
    page, rest = entries[:size], entries[size:]
    return page, base64.b64encode(str(rest[0]["BlockIndex"]).encode()).decode() if rest else None


def _listing(snapshot: Any, key: str, page: list[dict], token: str | None) -> str:
    """A direct API list answer."""
    answer = {key: page, "ExpiryTime": time.time() + 7 * 86400,
              "VolumeSize": snapshot.volume_size, "BlockSize": BLOCK_SIZE}  # fmt: skip
    if token:
        answer["NextToken"] = token
    return json.dumps(answer)


def _block_token(snapshot: Any, index: int) -> str:
    """A block token: which snapshot, which block, which write."""
    raw = f"{snapshot.id}:{index}:{snapshot.harness_blocks[index]}"
    return base64.b64encode(raw.encode()).decode()


def _list_snapshot_blocks(self) -> Any:
    """ListSnapshotBlocks from the snapshot's blocks (P24; moto knows only the direct APIs'
    own snapshots)."""
    try:
        snapshot = _direct_snapshot(self, self.path.split("/")[-2])
    except DirectApiError as err:
        return err.response()
    blocks = sorted(snapshot.harness_blocks)
    entries = [{"BlockIndex": i, "BlockToken": _block_token(snapshot, i)} for i in blocks]
    return _listing(snapshot, "Blocks", *_page(self, entries))


def _list_changed_blocks(self) -> Any:
    """ListChangedBlocks between two snapshots of one lineage (P24): every block written
    in between, and every block only one of them holds (moto misses those the second adds)."""
    first_id = self._get_params().get("firstSnapshotId")
    try:
        second = _direct_snapshot(self, self.path.split("/")[-2])
        first = _direct_snapshot(self, first_id) if first_id else None
    except DirectApiError as err:
        return err.response()
    related = first is not None and (first.harness_lineage == second.harness_lineage
                                     or first.id in second.harness_ancestors)  # fmt: skip
    if first is not None and not related:
        return DirectApiError(
            "ValidationException", 400, "the snapshots are not of the same volume lineage"
        ).response()
    old = first.harness_blocks if first is not None else {}
    new = second.harness_blocks
    entries = []
    for index in sorted(set(old) | set(new)):
        if old.get(index) != new.get(index):
            entry: dict[str, Any] = {"BlockIndex": index}
            if index in old:
                entry["FirstBlockToken"] = _block_token(first, index)
            if index in new:
                entry["SecondBlockToken"] = _block_token(second, index)
            entries.append(entry)
    return _listing(second, "ChangedBlocks", *_page(self, entries))


# --- P4: DeregisterImage with DeleteAssociatedSnapshots ------------------------------


def _deregister_image(self) -> ActionResult:
    """DeregisterImage that deletes the image's snapshots when asked, as EC2 does."""
    ami_id = self._get_param("ImageId")
    delete_snapshots = self._get_bool_param("DeleteAssociatedSnapshots", False)
    self.error_on_dryrun()
    backend = self.ec2_backend
    ami = backend.amis.get(ami_id)
    if ami is not None and _still_protected(ami):
        raise EC2ClientError(
            "OperationNotPermitted",
            f"The image {ami_id} has deregistration protection ({ami.deregistration_protection})",
        )
    backend.deregister_image(ami_id)
    if ami is not None and SETTINGS.recycle_bin_days is not None:
        recycle_bin(backend)[0][ami_id] = (ami, datetime.now(timezone.utc))
    result: dict[str, Any] = {"Return": True}
    if delete_snapshots and ami is not None:
        in_use = {s.id for other in list(backend.amis.values()) for s in image_snapshots(other)}
        result["DeleteSnapshotResults"] = []
        for snapshot in image_snapshots(ami):
            code = "skipped" if snapshot.id in in_use else SETTINGS.deregister_snapshot_code
            if code == "success":
                backend.delete_snapshot(snapshot.id)
            result["DeleteSnapshotResults"].append({"SnapshotId": snapshot.id, "ReturnCode": code})
    return ActionResult(result)


# --- P6, P7, P8: RunInstances and AssociateAddress -----------------------------------


def _run_instances(self) -> ActionResult:
    """RunInstances with EC2's ClientToken idempotency, termination protection and pending."""
    token = self._get_param("ClientToken")
    if token and not self._get_bool_param("DryRun", False):
        for reservation in list(self.ec2_backend.reservations.values()):
            first = reservation.instances[0] if reservation.instances else None
            if first is not None and first.client_token == token:
                same = first.image_id == self._get_param("ImageId") and len(
                    reservation.instances
                ) == int(self._get_param("MinCount", 1))
                if not same:
                    raise EC2ClientError("IdempotentParameterMismatch", f"token {token} reused")
                return ActionResult(reservation)
    group = self._get_param("Placement.GroupName")
    if group and group not in placement_groups(self.ec2_backend):
        raise _unknown_group(group)
    specs = self._get_param("NetworkInterfaces", [])
    request = {name: self._get_param(name) for name in launch_rules.ASKED}
    error = launch_rules.refused(request, self.ec2_backend, placement_groups(self.ec2_backend))
    if error is not None:  # P38 (and P35's flag with several interfaces)
        raise error
    result = _original_run_instances(self)
    if len(specs) > 1:  # P35: EC2 maps no public IP on launch to several interfaces
        for instance in result.result.instances:
            for nic in instance.nics.values():
                nic.public_ip_auto_assign, nic.public_ip = False, None
    keep_launch_attributes(self, result.result.instances)
    protect = self._get_bool_param("DisableApiTermination", False)
    for instance in result.result.instances:
        instance.disable_api_termination = protect
        if SETTINGS.instance_pending_seconds:
            instance._state = InstanceState("pending", 0)
            instance.harness_ready_at = time.monotonic() + SETTINGS.instance_pending_seconds
    return result


_original_parse_block_device_mapping = InstanceResponse._parse_block_device_mapping


def _parse_block_device_mapping(self) -> list[dict[str, Any]]:
    """RunInstances' block device mappings, each completed from the image's mapping of the
    same device (its snapshot, size and DeleteOnTermination), as EC2 does (P27; moto wants
    them in every one); an image the harness made launches a volume for every device it
    maps, each deleted on termination as the image says (P34; moto: an 8 GiB root only)."""
    image = self.ec2_backend.amis.get(self._get_param("ImageId"))
    given = self._get_param("BlockDeviceMappings", [])
    made_here = image is not None and hasattr(image, "harness_more")
    if image is None or not (given or made_here):
        return _original_parse_block_device_mapping(self)
    own = {m["DeviceName"]: m["Ebs"] for m in image.block_device_mappings}
    named = {m.get("DeviceName") for m in given}
    keys = ("SnapshotId", "VolumeSize", "DeleteOnTermination")
    completed = [{"DeviceName": d, "Ebs": {k: own[d][k] for k in keys}}
                 for d in own if made_here and d not in named]  # fmt: skip
    for mapping in given:
        if "Ebs" in mapping and mapping.get("DeviceName") in own:
            inherited = {k: own[mapping["DeviceName"]][k] for k in keys}
            mapping = {**mapping, "Ebs": {**inherited, **mapping["Ebs"]}}
        completed.append(mapping)
    original = self._get_param
    self._get_param = lambda name, *rest, **kw: (
        completed if name == "BlockDeviceMappings" else original(name, *rest, **kw)
    )
    try:
        return _original_parse_block_device_mapping(self)
    finally:
        del self._get_param


def _associate_address(self, instance=None, *args, **kwargs):
    """AssociateAddress refuses an instance that is not yet running."""
    if instance is not None and instance.state == "pending":
        raise EC2ClientError(
            "IncorrectInstanceState",
            f"The pending instance '{instance.id}' is not in a valid state for this operation.",
        )
    return _original_associate_address(self, instance, *args, **kwargs)


_original_associate_response = ElasticIPAddresses.associate_address


def _associate_address_response(self) -> ActionResult:
    """AssociateAddress by NetworkInterfaceId honours PrivateIpAddress, and an address on an
    attached interface reports that instance (P23)."""
    eni_id, private = self._get_param("NetworkInterfaceId"), self._get_param("PrivateIpAddress")
    eni = self.ec2_backend.get_network_interface(eni_id) if eni_id else None
    before = eni.public_ip if eni else None
    result = _original_associate_response(self)
    allocation = self._get_param("AllocationId")
    if allocation and eni is not None:
        [address] = self.ec2_backend.address_by_allocation([allocation])
        address.harness_private_ip = private
        if private and private != eni.private_ip_address:
            eni.public_ip = before  # the primary address keeps its own public IP
        if eni.instance is not None:
            address.instance = eni.instance
    return result


def _address_private_ip(self: Any) -> str | None:
    """The private IP an Elastic IP sits on (P23)."""
    if not self.eni:
        return None
    return getattr(self, "harness_private_ip", None) or self.eni.private_ip_address


def _terminate(self) -> InstanceState:
    """Terminate, releasing the Elastic IPs of every interface (P9); an interface whose
    attachment does not say DeleteOnTermination survives, detached and "available", as on
    EC2 (P34; moto leaves it attached to the terminated instance)."""
    nics = {nic.id for nic in self.nics.values()}
    for address in self.ec2_backend.addresses:
        if address.instance is self or (address.eni is not None and address.eni.id in nics):
            self.ec2_backend.disassociate_address(address=address.public_ip)
    surviving = [nic for nic in self.nics.values() if not nic.delete_on_termination]
    state = _original_terminate(self)
    for nic in surviving:
        self.detach_eni(nic)
        nic.status = "available"
    return state


# --- P20, P21, P22: launch attributes, placement groups, CPU credits ---------------------

PLACEMENT_FIELDS = {"Tenancy": "tenancy", "GroupName": "group_name", "Affinity": "affinity",
                    "PartitionNumber": "partition_number",
                    "HostResourceGroupArn": "host_resource_group_arn"}  # fmt: skip
LAUNCH_OPTIONS = {
    "CpuOptions": "cpu_options",
    "PrivateDnsNameOptions": "private_dns_name_options",
    "MaintenanceOptions": "maintenance_options",
    "EnclaveOptions": "enclave_options",
    "CapacityReservationSpecification": "capacity_reservation_specification",
}
OPTION_DEFAULTS = {
    "cpu_options": {},
    "private_dns_name_options": {"HostnameType": "ip-name", "EnableResourceNameDnsARecord": False,
                                 "EnableResourceNameDnsAAAARecord": False},
    "maintenance_options": {"AutoRecovery": "default"},
    "enclave_options": {"Enabled": False},
    "capacity_reservation_specification": {"CapacityReservationPreference": "open"},
}  # fmt: skip


def _default_cpu_options(self: Instance) -> dict[str, int]:
    """An instance's CpuOptions when launched without: its type's defaults, as EC2 reports."""
    if "cpu_options" in self.__dict__:
        return self.__dict__["cpu_options"]
    info = INSTANCE_TYPES.get(self.instance_type, {}).get("VCpuInfo", {})
    return {"CoreCount": info.get("DefaultCores", 1),
            "ThreadsPerCore": info.get("DefaultThreadsPerCore", 1)}  # fmt: skip


def _set_cpu_options(self: Instance, value: dict) -> None:
    self.__dict__["cpu_options"] = value


def placement_groups(backend: Any) -> dict[str, dict]:
    """The region's placement groups, by name (P21)."""
    if not hasattr(backend, "harness_placement_groups"):
        backend.harness_placement_groups = {}
    return backend.harness_placement_groups


def _unknown_group(name: str) -> EC2ClientError:
    return EC2ClientError(
        "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
    )


def _create_placement_group(self) -> ActionResult:
    """CreatePlacementGroup: a name, a strategy and (for partition) a partition count."""
    name = self._get_param("GroupName")
    groups = placement_groups(self.ec2_backend)
    if name in groups:
        raise EC2ClientError(
            "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists."
        )
    group = {"GroupName": name, "GroupId": f"pg-{len(groups) + 1:017x}", "State": "available",
             "Strategy": self._get_param("Strategy", "cluster")}  # fmt: skip
    if self._get_param("PartitionCount"):
        group["PartitionCount"] = int(self._get_param("PartitionCount"))
    groups[name] = group
    return ActionResult({"PlacementGroup": group})


def _describe_placement_groups(self) -> ActionResult:
    """DescribePlacementGroups, all or by GroupNames (an unknown name is an error)."""
    groups = placement_groups(self.ec2_backend)
    names = self._get_param("GroupNames", [])
    for name in names:
        if name not in groups:
            raise _unknown_group(name)
    found = [groups[n] for n in names] if names else list(groups.values())
    return ActionResult({"PlacementGroups": found})


def _delete_placement_group(self) -> ActionResult:
    """DeletePlacementGroup by name."""
    name = self._get_param("GroupName")
    if placement_groups(self.ec2_backend).pop(name, None) is None:
        raise _unknown_group(name)
    return ActionResult({})


def keep_launch_attributes(response: Any, instances: list) -> None:
    """Store on each new instance what RunInstances asked for and moto dropped (P20, P22)."""
    placement = response._get_param("Placement", {}) or {}
    options = {attr: response._get_param(name) for name, attr in LAUNCH_OPTIONS.items()}
    credits = response._get_param("CreditSpecification.CpuCredits")
    specs = {int(n.get("DeviceIndex", 0)): n for n in response._get_param("NetworkInterfaces", [])}
    for instance in instances:
        for name, attr in PLACEMENT_FIELDS.items():
            if placement.get(name) is not None:
                value = placement[name]
                setattr(
                    instance.placement, attr, int(value) if name == "PartitionNumber" else value
                )
        for attr, value in options.items():
            if value:
                setattr(instance, attr, {**OPTION_DEFAULTS[attr], **_typed(value)})
        instance.harness_credits = credits
        for index, nic in instance.nics.items():
            if index in specs:
                _shape_interface(response.ec2_backend, nic, specs[index])
            elif index == 0:  # launched with SubnetId: EC2 gives no description
                nic.description, nic.delete_on_termination = "", True
        if specs and 0 in instance.nics and not instance.security_groups:
            instance.security_groups = list(instance.nics[0]._group_set)  # EC2: the primary's


def _typed(options: dict) -> dict:
    """Query-string values as EC2 reports them: numbers and booleans, not text."""
    typed = {}
    for key, value in options.items():
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        elif value in ("true", "false"):
            value = value == "true"
        typed[key] = value
    return typed


def _shape_interface(backend: Any, nic: Any, spec: dict) -> None:
    """A launched interface's description and secondary private IPs, as asked."""
    nic.description = spec.get("Description", "")
    nic.delete_on_termination = str(spec.get("DeleteOnTermination", "true")).lower() == "true"
    wanted = [a["PrivateIpAddress"] for a in spec.get("PrivateIpAddresses", [])
              if str(a.get("Primary", "false")).lower() != "true"]  # fmt: skip
    count = int(spec.get("SecondaryPrivateIpAddressCount") or 0)
    if wanted:
        backend.assign_private_ip_addresses(nic.id, private_ip_addresses=wanted)
    elif count:
        backend.assign_private_ip_addresses(nic.id, secondary_ips_count=count)


def _interface_groups(self: Any) -> Any:
    """An interface's own security groups (P20)."""
    if self._group_set or not self.instance:
        return self._group_set
    return set(self.instance.security_groups or [])


_original_prep_nics = Instance.prep_nics


def _prep_nics(self: Instance, nic_spec: list[dict], *args: Any, **kwargs: Any) -> None:
    """An interface's primary address may be given in PrivateIpAddresses (moto reads it there
    only for device 0, and only as a boolean)."""
    for nic in nic_spec:
        primary = [a.get("PrivateIpAddress") for a in nic.get("PrivateIpAddresses", [])
                   if str(a.get("Primary", "false")).lower() == "true"]  # fmt: skip
        if primary and not nic.get("PrivateIpAddress"):
            nic["PrivateIpAddress"] = primary[0]
    _original_prep_nics(self, nic_spec, *args, **kwargs)


def credits_of(instance: Instance) -> str:
    """An instance's CpuCredits as launched, else its type's default (P22)."""
    launched = getattr(instance, "harness_credits", None)
    return launched or ("standard" if instance.instance_type.startswith("t2.") else "unlimited")


def _describe_instance_credit_specifications(self) -> ActionResult:
    """Each instance's CpuCredits (P22)."""
    ids = self._get_param("InstanceIds", [])
    instances = self.ec2_backend.describe_instance_credit_specifications(ids)
    found = [{"InstanceId": i.id, "CpuCredits": credits_of(i)} for i in instances]
    return ActionResult({"InstanceCreditSpecifications": found})


_original_launch_template_data = LaunchTemplates.get_launch_template_data


def _get_launch_template_data(self) -> ActionResult:
    """GetLaunchTemplateData with the instance's CpuCredits (P22)."""
    result = _original_launch_template_data(self)
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    result.result["LaunchTemplateData"]["CreditSpecification"] = {
        "CpuCredits": credits_of(instance)
    }
    return result


# --- S1, S2, S3: SSM ------------------------------------------------------------------

_original_send_command = SSMBackend.send_command
SSM_DEFAULT_PAGE = 10  # DescribeInstanceInformation's page without MaxResults
SSM_LIST_PAGE = 50  # ListCommandInvocations' default MaxResults


def _describe_instance_information(self) -> ActionResult:
    """EC2 instances as SSM managed instances (S1)."""
    from moto.ec2.models import ec2_backends

    wanted = {
        v for f in self._get_param("Filters", []) if f["Key"] == "InstanceIds" for v in f["Values"]
    }
    backend = ec2_backends[self.current_account][self.region]
    listed = []
    for instance in sorted(backend.all_instances(), key=lambda i: i.id):
        if instance.id in SETTINGS.ssm_unmanaged or (wanted and instance.id not in wanted):
            continue
        ping = "ConnectionLost" if instance.id in SETTINGS.ssm_offline else "Online"
        platform = "Windows" if instance.platform == "windows" else "Linux"
        listed.append({"InstanceId": instance.id, "PingStatus": ping, "PlatformType": platform})
    return ssm_page(self, "InstanceInformationList", listed, SSM_DEFAULT_PAGE)


def ssm_page(response: Any, key: str, listed: list[dict], default: int) -> ActionResult:
    """One page of an SSM list, by MaxResults and NextToken (an offset), as SSM pages."""
    size = int(response._get_param("MaxResults") or default)
    start = int(response._get_param("NextToken") or 0)
    result: dict[str, Any] = {key: listed[start : start + size]}
    if start + size < len(listed):
        result["NextToken"] = str(start + size)
    return ActionResult(result)


def _send_command(self, *args, **kwargs):
    """SendCommand with the outcome the test chose (S2); VSS makes an image (S3); a
    document of the account's own must exist and take the parameters given (S5)."""
    requested = list(kwargs.get("instance_ids") or [])
    check_own_document(self, kwargs.get("document_name"), kwargs.get("parameters") or {})
    command = _original_send_command(self, *args, **kwargs)
    if requested and not kwargs.get("targets"):  # moto adds every instance when Targets is empty
        command.instance_ids = requested
        command.invocations = [i for i in command.invocations if i["InstanceId"] in requested]
        command.target_count = command.completed_count = len(requested)
    text = " ".join([command.document_name or "", *command.parameters.get("commands", []),
                     *command.parameters.get("script", [])])  # fmt: skip
    status = next((v for k, v in SETTINGS.ssm_results.items() if k in text), "Success")
    status = "InProgress" if status == "Hang" else status
    command.status = status
    for invocation in command.invocations:
        invocation["Status"] = invocation["StatusDetails"] = status
    if status == "Success" and command.document_name == "AWSEC2-CreateVssSnapshot":
        for instance_id in command.instance_ids:
            _vss_image(self.account_id, self.region_name, instance_id, command.parameters)
    return command


def _get_tags(self) -> list[dict[str, str]]:
    """A resource's tags, by its id: what describe_tags(resource-id) answers (H1)."""
    if not self.id:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    tags = self.ec2_backend.tags.get(self.id, {})
    return [{"resource_id": self.id, "key": k, "value": v, "resource_type": kind}
            for k, v in tags.items()]  # fmt: skip


_MOTO_MODULES = list(_original_moto_modules())  # H2
_METHOD_NAMES: dict[object, list[str]] = {}  # H3
_KEY_PAIR: list[dict] = []  # H4


def _method_names_from_class(clazz: object) -> list[str]:
    """A response class's method names, read once (H3)."""
    if clazz not in _METHOD_NAMES:
        _METHOD_NAMES[clazz] = _original_method_names(clazz)
    return _METHOD_NAMES[clazz]


def _random_rsa_key_pair() -> dict:
    """One RSA key pair per process (H4)."""
    if not _KEY_PAIR:
        _KEY_PAIR.append(_original_rsa_key_pair())
    return dict(_KEY_PAIR[0])


def _list_command_invocations(self) -> ActionResult:
    """A command's invocations, one per instance, paginated (S4)."""
    command = self.ssm_backend.get_command_by_id(self._get_param("CommandId"))
    instance_id = self._get_param("InstanceId")
    details = self._get_param("Details") in (True, "true")
    listed = []
    for invocation in command.invocations:
        if instance_id and invocation["InstanceId"] != instance_id:
            continue
        status = invocation["Status"]
        made = {k: invocation[k] for k in ("CommandId", "InstanceId", "DocumentName", "Status",
                                           "StatusDetails")}  # fmt: skip
        if details:
            code = {"Success": 0, "Failed": 1}.get(status, -1)
            made["CommandPlugins"] = [{"Name": invocation["PluginName"], "Status": status,
                                       "ResponseCode": code}]  # fmt: skip
        listed.append(made)
    return ssm_page(self, "CommandInvocations", listed, SSM_LIST_PAGE)


def check_own_document(backend: Any, name: str | None, parameters: dict) -> None:
    """S5: SendCommand of an account's own document refuses, as SSM does, a document that
    does not exist (InvalidDocument) and a parameter it does not declare or a value outside
    its allowedValues (InvalidParameters); moto runs any name with any parameters."""
    if not name or name.startswith(("AWS-", "AWSEC2-")):
        return
    content = json.loads(backend._get_documents(name).get_default_version().content)
    declared = content.get("parameters", {})
    for key, values in parameters.items():
        allowed = declared.get(key, {}).get("allowedValues")
        if key not in declared or (allowed and any(v not in allowed for v in values)):
            raise SSMException("InvalidParameters", f"Parameter {key}={values} is not valid "
                               f"for document {name}.")  # fmt: skip


def _vss_image(account_id: str, region: str, instance_id: str, parameters: dict) -> None:
    """What AWSEC2-CreateVssSnapshot with CreateAmi=True leaves behind."""
    from moto.ec2.models import ec2_backends

    if parameters.get("CreateAmi", ["False"])[0] != "True":
        return
    given = [dict(p.split("=", 1) for p in item.split(",", 1)) for item in
             parameters.get("tags", [""])[0].split(";") if item]  # fmt: skip
    tags = [{"Key": t["Key"], "Value": t["Value"]} for t in given]
    reserved = [{"Key": "AppConsistent", "Value": "true"},
                {"Key": "AwsVssConfig", "Value": "AwsVssComponents:2.4.0"}]  # fmt: skip
    specs = [
        {"ResourceType": "image", "Tags": tags + reserved},
        {
            "ResourceType": "snapshot",
            "Tags": [
                *(tags if SETTINGS.vss_snapshot_tags else []),
                *reserved,
                {"Key": "Device", "Value": "/dev/sda1"},
            ],
        },
    ]
    backend = ec2_backends[account_id][region]
    backend.create_image(instance_id, parameters["AmiName"][0], "VSS", tag_specifications=specs)


# I1: the signing names whose IAM action prefix differs.
IAM_PREFIXES = {"monitoring": "cloudwatch"}
_moto_iam_request_init = IAMRequestBase.__init__


def _iam_request_init(self: IAMRequestBase, *args: Any, **kwargs: Any) -> None:
    _moto_iam_request_init(self, *args, **kwargs)
    service, _, action = self._action.partition(":")
    self._action = f"{IAM_PREFIXES.get(service, service)}:{action}"


_moto_create_aws_request = IAMRequestBase._create_aws_request


def _iam_aws_request(self: IAMRequestBase) -> Any:
    """The request whose signature is checked, with the body that was signed (I2)."""
    if self._method == "GET" and not self._body:
        self._data = b""  # was the query's parameters, which the client signed in the URL
    return _moto_create_aws_request(self)


def _client_token_filter() -> None:
    """DescribeInstances by the idempotency token an instance was launched with (P33)."""
    from moto.ec2 import utils

    utils.filter_dict_attribute_mapping["client-token"] = "client_token"


def apply_patches() -> None:
    """Patch moto's EC2 backend in this process (idempotent)."""
    _client_token_filter()
    IAMRequestBase.__init__ = _iam_request_init
    IAMRequestBase._create_aws_request = _iam_aws_request
    AmiBackend.create_image = _create_image
    AmisResponse.deregister_image = _deregister_image
    InstanceResponse.run_instances = _run_instances
    InstanceResponse._parse_block_device_mapping = _parse_block_device_mapping
    Instance.cpu_options = property(_default_cpu_options, _set_cpu_options)
    Instance.prep_nics = _prep_nics
    NetworkInterface.group_set = property(_interface_groups)
    for attr, default in OPTION_DEFAULTS.items():
        if attr != "cpu_options":
            setattr(Instance, attr, default)  # replaced per instance, never changed in place
    InstanceResponse.create_placement_group = _create_placement_group
    InstanceResponse.describe_placement_groups = _describe_placement_groups
    InstanceResponse.delete_placement_group = _delete_placement_group
    LaunchTemplates.get_launch_template_data = _get_launch_template_data
    InstanceResponse.describe_instance_credit_specifications = (
        _describe_instance_credit_specifications
    )
    ElasticAddressBackend.associate_address = _associate_address
    ElasticIPAddresses.associate_address = _associate_address_response
    ElasticAddress.private_ip_address = property(_address_private_ip)
    Instance.terminate = _terminate
    SimpleSystemManagerResponse.describe_instance_information = _describe_instance_information
    SSMBackend.send_command = _send_command
    SimpleSystemManagerResponse.list_command_invocations = _list_command_invocations
    TaggedEC2Resource.get_tags = _get_tags
    moto.backends.list_of_moto_modules = lambda: iter(_MOTO_MODULES)
    moto.core.responses.method_names_from_class = _method_names_from_class
    moto.ec2.models.key_pairs.random_rsa_key_pair = _random_rsa_key_pair
    AmisResponse.copy_image = _copy_image
    AmisResponse.enable_image_deprecation = _enable_image_deprecation
    AmisResponse.disable_image_deprecation = _disable_image_deprecation
    Ami.block_device_mappings = property(_block_device_mappings)
    Ami.deprecation_time = None
    Ami.get_filter_value = _ami_filter_value
    AmisResponse.describe_images = _describe_images
    AmisResponse.enable_image_deregistration_protection = _enable_deregistration_protection
    AmisResponse.disable_image_deregistration_protection = _disable_deregistration_protection
    Ami.deregistration_protection = "disabled"
    AmisResponse.list_images_in_recycle_bin = _list_images_in_recycle_bin
    AmisResponse.restore_image_from_recycle_bin = _restore_image_from_recycle_bin
    AmisResponse.describe_image_references = _describe_image_references
    AmisResponse.register_image = _register_image
    AmisResponse.get_image_block_public_access_state = _image_block_public_access
    ElasticBlockStore.get_snapshot_block_public_access_state = _snapshot_block_public_access
    ElasticBlockStore.list_snapshots_in_recycle_bin = _list_snapshots_in_recycle_bin
    ElasticBlockStore.restore_snapshot_from_recycle_bin = _restore_snapshot_from_recycle_bin
    EBSBackend.delete_snapshot = _delete_snapshot_to_bin
    AmisResponse.disable_image = _disable_image
    AmisResponse.enable_image = _enable_image
    ElasticBlockStore.describe_snapshots = _describe_snapshots
    EC2BaseResponse.RESPONSE_KEY_PATH_TO_TRANSFORMER["Image.CreationDate"] = _creation_date
    EBSBackend.copy_snapshot = _copy_snapshot
    EBSBackend.create_volume = _ebs_create_volume
    Snapshot.harness_ancestors = frozenset()
    EBSBackend._create_default_encryption_key = _aws_managed_default_key
    Snapshot.storage_tier = "standard"
    Snapshot.full_snapshot_size_in_bytes = None
    Snapshot.harness_blocks = MappingProxyType({})  # a snapshot no test wrote to holds none
    Snapshot.harness_lineage = None
    ElasticBlockStore.modify_snapshot_tier = _modify_snapshot_tier
    EBSResponse.list_snapshot_blocks = _list_snapshot_blocks
    EBSResponse.list_changed_blocks = _list_changed_blocks
    volumes.apply()


# --- Faults and the call log ---------------------------------------------------------

# EC2's token buckets, as the EC2 Developer Guide documents them ("Request throttling for
# the Amazon EC2 API"): every API has a request bucket of its own, its category's or one
# listed apart; the few describes listed there draw from a smaller one when called without
# a filter, ids or pagination; RunInstances, StartInstances, StopInstances and
# TerminateInstances also spend one token per instance from a resource bucket. The table
# is the package's (ec2ami.facts), the one the client paces to; tests/test_endpoint.py
# checks its rows against the page's.
UNFILTERED, INSTANCES = " unfiltered", " instances"
# A describe call about one named resource (GetLaunchTemplateData) is not unfiltered.
NARROWING_PARAMS = {"MaxResults", "InstanceId", "ImageId", "SnapshotId", "VolumeId"}


def bucket_of(action: str, params: dict[str, str]) -> str:
    """The request token bucket an EC2 call draws from: its own, or its unfiltered one."""
    narrowed = any(
        k.startswith("Filter.") or k in NARROWING_PARAMS or k.endswith(".1") for k in params
    )
    return action + UNFILTERED if action in UNFILTERED_DESCRIBES and not narrowed else action


def bucket_size(bucket: str) -> tuple[int, float]:
    """(size, refill per second) of a bucket bucket_of or a resource bucket names."""
    if bucket.endswith(UNFILTERED):
        return UNFILTERED_BUCKET
    if bucket.endswith(INSTANCES):
        return RESOURCE_BUCKETS[bucket[: -len(INSTANCES)]]
    return request_bucket(bucket)


def instances_in(action: str, params: dict[str, str]) -> int:
    """The instances a call launches, starts, stops or terminates (its resource tokens)."""
    if action == "RunInstances":
        return int(params.get("MaxCount", 1))
    return sum(1 for k in params if k.startswith("InstanceId."))


# moto's refusals, as the EBS direct APIs name them (I3).
DIRECT_API_CODES = {"AccessDenied": "AccessDeniedException"}
# The EBS direct APIs are REST: the action is in the path.
DIRECT_API_PATHS = {"blocks": "ListSnapshotBlocks", "changedblocks": "ListChangedBlocks"}


def request_params(environ: dict, body: bytes) -> dict[str, str]:
    """A request's action and parameters, from EC2's query form, a JSON protocol's target,
    or an EBS direct API's path and query string."""
    if credential_scope(environ)[3:4] == ["ebs"]:
        params = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        parts = environ.get("PATH_INFO", "").strip("/").split("/")
        if len(parts) == 3 and parts[0] == "snapshots" and parts[2] in DIRECT_API_PATHS:
            params.update(Action=DIRECT_API_PATHS[parts[2]], SnapshotId=parts[1])
        return params
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if not target:
        return dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace")))
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        document = {}
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()}
    params["Action"] = target.rsplit(".", 1)[-1]
    return params


def credential_scope(environ: dict) -> list[str]:
    """A signed request's SigV4 scope: key id, date, region, service, terminator."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    scope = auth.split("Credential=", 1)[1].split(",", 1)[0] if "Credential=" in auth else ""
    return scope.split("/")


def region_of(environ: dict) -> str:
    """The region a signed request is for."""
    parts = credential_scope(environ)
    return parts[2] if len(parts) > 3 else "us-east-1"


class TokenBuckets:
    """EC2's request token buckets, one per (region, category), refilled continuously."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        busier: dict[str, tuple[int, float]] | None = None,
    ) -> None:
        self._clock = clock
        self._busier = busier or {}
        self._state: dict[tuple[str, str], tuple[float, float]] = {}  # tokens, last refill
        self._lock = threading.Lock()

    def take(self, region: str, bucket: str, count: int = 1) -> bool:
        """Spend count tokens if there are as many; return whether the call may go through."""
        size, rate = self._busier.get(bucket) or bucket_size(bucket)
        now = self._clock()
        with self._lock:
            tokens, stamp = self._state.get((region, bucket), (float(size), now))
            tokens = min(float(size), tokens + (now - stamp) * rate)
            allowed = tokens >= count
            self._state[(region, bucket)] = (tokens - count if allowed else tokens, now)
        return allowed

    def admit(self, region: str, action: str, params: dict[str, str]) -> bool:
        """A call's request token, and its resource tokens if it has a resource bucket."""
        if not self.take(region, bucket_of(action, params)):
            return False
        if action in RESOURCE_BUCKETS:
            return self.take(region, action + INSTANCES, max(1, instances_in(action, params)))
        return True


ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
    "<RequestID>harness-{n}</RequestID></Response>"
)


THROTTLED = Fault("", "RequestLimitExceeded", 503, message="Request limit exceeded.")


def capacity_fault(action: str, params: dict[str, str]) -> Fault | None:
    """P36: RunInstances of a type, or in a zone, listed in SETTINGS.no_capacity fails with
    InsufficientInstanceCapacity, a server error (HTTP 500), as EC2 answers it ("Error
    codes for the Amazon EC2 API", server error codes), for as long as it is listed."""
    if action != "RunInstances" or not SETTINGS.no_capacity:
        return None
    subnet = params.get("SubnetId") or params.get("NetworkInterface.1.SubnetId")
    zone = params.get("Placement.AvailabilityZone")
    for backend in _backends() if subnet and not zone else []:
        found = [z for zones in backend.subnets.values() for i, z in zones.items() if i == subnet]
        zone = zone or (found[0].availability_zone if found else None)
    if not {params.get("InstanceType"), zone} & SETTINGS.no_capacity:
        return None
    return Fault(action, "InsufficientInstanceCapacity", 500, message=(
        f"We currently do not have sufficient {params.get('InstanceType')} capacity in the "
        f"Availability Zone you requested ({zone})."))  # fmt: skip


# inject(action, HTML_PAGE, status=200): a proxy answers with its own HTML page, which
# botocore cannot parse (ResponseParserError, neither ClientError nor BotoCoreError).
HTML_PAGE = "HTML"


def error_response(environ: dict, fault: Fault, start_response: Callable) -> list[bytes]:
    """The error document the service's protocol uses: EC2's XML, or JSON (SSM)."""
    headers = []
    if fault.code == HTML_PAGE:  # a proxy's page, not the service's document
        start_response(f"{fault.status} Proxy", [("Content-Type", "text/html")])
        return [b"<!DOCTYPE html><html><body><h1>Bad gateway<br></h1>&nbsp;retry</body></html>"]
    if environ.get("HTTP_X_AMZ_TARGET"):
        body = json.dumps({"__type": fault.code, "message": fault.message})
        kind = "application/x-amz-json-1.1"
    elif credential_scope(environ)[3:4] == ["ebs"]:  # REST-JSON
        body = json.dumps({"message": fault.message})
        kind, headers = "application/json", [("x-amzn-ErrorType", fault.code)]
    else:
        body = ERROR_XML.format(code=fault.code, message=fault.message, n=id(fault))
        kind = "text/xml"
    start_response(f"{fault.status} Error", [("Content-Type", kind), *headers])
    return [body.encode()]


class Endpoint:
    """The patched moto server with its faults and call log."""

    def __init__(self, port: int = 0) -> None:
        apply_patches()
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.hooks: list[Callable[[Call], None]] = []
        self.buckets: TokenBuckets | None = None
        self._lock = threading.Lock()
        # moto's backends are not thread-safe (a CreateImage iterating the images while
        # a DeregisterImage removes one fails with HTTP 500), so moto gets one request at
        # a time; the clients' own concurrency, and their calls in flight, are unchanged.
        self._moto = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", port, self._wrap(app), threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()

    def reset(self) -> None:
        """Forget all AWS state, faults, calls and settings."""
        moto_api_backend.reset()
        SETTINGS.reset()
        volumes.VOLUMES.reset()
        with self._lock:
            self.faults.clear()
            self.calls.clear()
            self.hooks.clear()
            self.buckets = None

    def throttle(
        self, enabled: bool = True, busier: dict[str, tuple[int, float]] | None = None
    ) -> None:
        """Emulate EC2's request token buckets from now on, all of them full; busier gives
        some APIs smaller buckets than the documented ones: an account whose other work
        spends part of them (the tool's pacer does not know)."""
        self.buckets = TokenBuckets(busier=busier) if enabled else None

    def inject(
        self, action: str, code: str, status: int = 400, times: int = 1, lost: bool = False,
        **match: str,
    ) -> Fault:  # fmt: skip
        """Fail the next `times` calls of action whose parameters match (lost: after acting)."""
        fault = Fault(action, code, status, times, match, lost=lost)
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, action: str | None = None, ok: bool | None = None, **match: str) -> int:
        """How many calls (of an action; answered with success or not; with these params) it
        saw. A call still in flight (no status yet) is neither a success nor a failure."""
        with self._lock:
            calls = list(self.calls)
        return sum(
            1
            for c in calls
            if (action is None or c.action == action)
            and (ok is None or (c.status != 0 and (c.status < 400) == ok))
            and all(c.params.get(k) == v for k, v in match.items())
        )

    def _take_fault(self, action: str, params: dict[str, str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(action, params):
                    fault.times -= 1
                    return fault
        return None

    def _wrap(self, app: Any) -> Callable:
        def middleware(environ: dict, start_response: Callable) -> Any:
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            if environ.get("PATH_INFO") == CONTROL_PATH:
                return control(body, start_response)
            environ["wsgi.input"] = io.BytesIO(body)
            params = request_params(environ, body)
            action = params.get("Action", "")
            scope = credential_scope(environ)
            call = Call(action, params, service=scope[3] if len(scope) > 3 else "ec2",
                        region=region_of(environ), key=scope[0])  # fmt: skip
            with self._lock:
                self.calls.append(call)
                hooks = list(self.hooks)
            for hook in hooks:
                hook(call)
            advance()
            where = {**params, "Region": call.region}  # a fault may match on Region
            fault = self._take_fault(action, where) if action else None
            fault = fault or capacity_fault(action, params)
            buckets = self.buckets
            if (
                action
                and not fault
                and buckets
                and call.service != "ebs"  # the direct APIs have their own quotas
                and not buckets.admit(region_of(environ), action, params)
            ):
                fault = THROTTLED
            if fault and fault.lost:
                with self._moto:  # the backend acts; its answer is dropped
                    list(app(environ, lambda *_: None))
            if fault:
                call.status = fault.status
                return error_response(environ, fault, start_response)

            def recording_start(status: str, headers: list, exc_info: Any = None) -> Any:
                call.status = int(status.split()[0])
                return start_response(status, headers, exc_info)

            if call.service == "ebs":
                return self._direct_api(app, environ, call, start_response)
            with self._moto:
                return list(app(environ, recording_start))

        return middleware

    def _direct_api(self, app: Any, environ: dict, call: Call, start_response: Callable) -> Any:
        """An EBS direct API call, with moto's XML refusal turned into REST-JSON (I3)."""
        answer: dict[str, Any] = {}

        def keep(status: str, headers: list, exc_info: Any = None) -> None:
            answer.update(status=status, headers=headers)

        with self._moto:
            body = b"".join(app(environ, keep))
        call.status = int(answer["status"].split()[0])
        if call.status >= 400 and body.lstrip().startswith(b"<"):
            code = re.search(rb"<Code>(.*?)</Code>", body)
            message = re.search(rb"<Message>(.*?)</Message>", body)
            name = code.group(1).decode() if code else "InternalServerException"
            fault = Fault(call.action, DIRECT_API_CODES.get(name, name), call.status,
                          message=message.group(1).decode() if message else "")  # fmt: skip
            return error_response(environ, fault, start_response)
        start_response(answer["status"], answer["headers"])
        return [body]


# A standalone endpoint (the demo's) takes its volumes' writes over HTTP: a POST of
# {"volume_id": ..., "blocks": [...]} here does what write_blocks does in-process.
CONTROL_PATH = "/_harness/write-blocks"


def control(body: bytes, start_response: Callable) -> list[bytes]:
    """Write blocks to a volume on a request to CONTROL_PATH."""
    try:
        request = json.loads(body)
        write_blocks(request["volume_id"], request["blocks"])
    except (ValueError, KeyError, TypeError) as err:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [f"{type(err).__name__}: {err}".encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def main(argv: list[str] | None = None) -> int:
    """Serve the patched endpoint on 127.0.0.1 until killed; print its URL first."""
    parser = argparse.ArgumentParser(description="The tests' local EC2 endpoint, standalone.")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--image-pending-seconds", type=float, default=1.0)
    parser.add_argument("--instance-pending-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    endpoint = Endpoint(args.port)
    SETTINGS.pending_seconds = args.image_pending_seconds
    SETTINGS.instance_pending_seconds = args.instance_pending_seconds
    print(endpoint.url, flush=True)
    endpoint._server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
