"""Look at what exists: the servers (listed and selected by tag), their instances, what
each runs with (the launch record), and the backups already made.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.attributes import LAUNCH_DATA_KEYS, read_all
from ec2ami.aws import AWS_ERRORS, chunked, error_text, paginate
from ec2ami.backup.config import ServerSpec, with_consistency
from ec2ami.backup.naming import name_problem, render_name
from ec2ami.backup.plan import Image
from ec2ami.contract import (
    INTERFACE_DEFAULTS,
    LAUNCH_DEFAULTS,
    LAUNCH_VERSION,
    TAG_CREATED,
    TAG_DRILL,
    TAG_INSTANCE_ID,
    TAG_MANAGED,
    TAG_POOL,
    TAG_SCHEDULE,
    TAG_SERVER,
    TOOL,
)
from ec2ami.facts import LAUNCH_DATA_THREADS, LIVE_INSTANCE_STATES, PROTECTION_OFF

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig

log = logging.getLogger(__name__)


@dataclass
class Server:
    """A server resolved to its instance, ready to back up."""

    spec: ServerSpec
    instance: dict
    eip: str | None = None  # the Elastic IP on the primary address (TAG_ELASTIC_IP)
    launch: dict | None = None  # the launch record (TAG_LAUNCH)


@dataclass
class Outcome:
    """What happened to one server in this run."""

    name: str
    instance_id: str
    image_id: str | None = None
    run_id: str = ""  # the TAG_RUN of this run: its images, and only they, are polled
    image: Image | None = None  # this run's image as last seen
    missed_polls: int = 0  # polls in a row that did not find the new image
    missing_since: float | None = None  # when a poll first missed it (time.monotonic)
    error: str | None = None
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    post_command: str | None = None  # the post-script's SSM command, checked after the creates
    region: str | None = None  # a copy's destination region; None for the backup itself
    # A failed post-script, share or deprecation: reported (exit 1), but the image stands.
    late_errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    # An outcome changes only through these methods: the creator, the follower and the
    # housekeeping threads all write to it.

    def fail(self, message: str) -> None:
        """This server (or copy) failed; a later failure is added to the first."""
        with self._lock:
            self.error = f"{self.error}; {message}" if self.error else message

    def warn(self, message: str) -> None:
        """Something the operator should know; the backup still stands."""
        with self._lock:
            self.warnings.append(message)

    def fail_late(self, message: str) -> None:
        """A failure after the image stands (post-script, share, deprecation): exit 1."""
        with self._lock:
            self.late_errors.append(message)

    def made(self, image_id: str) -> None:
        """The image that is this run's backup (or copy)."""
        with self._lock:
            self.image_id = image_id

    def pruned_image(self, image_id: str) -> None:
        """An image retention deregistered."""
        with self._lock:
            self.pruned.append(image_id)


def describe_instances(ec2: Any, filters: list[dict]) -> list[dict]:
    """All instances matching filters, flattened out of their reservations."""
    reservations = paginate(ec2, "describe_instances", "Reservations", Filters=filters)
    return [instance for r in reservations for instance in r["Instances"]]


def discover(
    ec2: Any, config: BackupConfig, only: list[str], now: datetime
) -> tuple[list[Server], list[Outcome]]:
    """Resolve SERVERS and SELECT_TAGS to instances; return servers and early failures."""
    specs = [s for s in config.servers if not only or s.name in only]
    failures: list[Outcome] = []
    found: dict[str, dict] = {}
    ids = [s.instance_id for s in specs]
    for batch in chunked(ids):
        for described in describe_instances(ec2, [{"Name": "instance-id", "Values": batch}]):
            found[described["InstanceId"]] = described
    servers: list[Server] = []
    for spec in specs:
        instance = found.get(spec.instance_id)
        state = instance["State"]["Name"] if instance else None
        if instance and state in LIVE_INSTANCE_STATES:
            servers.append(Server(spec, instance))
        else:
            reason = f"instance is {state}" if state else "instance not found"
            failures.append(Outcome(spec.name, spec.instance_id, error=reason))
    servers += select_by_tags(ec2, config, set(ids) | {s.instance_id for s in config.servers})
    servers = [s for s in servers if not only or s.spec.name in only]
    servers, failures = split_name_clashes(servers, failures)
    return split_bad_image_names(servers, failures, config, now)


def select_by_tags(ec2: Any, config: BackupConfig, listed: set[str]) -> list[Server]:
    """Every live instance carrying all SELECT_TAGS that SERVERS does not list, except a
    restore drill's."""
    if not config.select_tags:
        return []
    filters = [{"Name": f"tag:{k}", "Values": [v]} for k, v in config.select_tags.items()]
    filters.append({"Name": "instance-state-name", "Values": LIVE_INSTANCE_STATES})
    servers = []
    for instance in describe_instances(ec2, filters):
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        if instance["InstanceId"] in listed or TAG_DRILL in tags:
            continue  # a restore drill's instance is a test copy, never a server
        name = tags.get("Name") or instance["InstanceId"]
        spec = ServerSpec(name, instance["InstanceId"], config.defaults.keep)
        spec = with_consistency(spec, {}, config.defaults, "SELECT_TAGS")
        servers.append(Server(spec, instance))
    return servers


def split_name_clashes(
    servers: list[Server], failures: list[Outcome]
) -> tuple[list[Server], list[Outcome]]:
    """Fail every server name that two different instances resolve to."""
    by_name: dict[str, list[Server]] = {}
    for server in servers:
        by_name.setdefault(server.spec.name, []).append(server)
    clean: list[Server] = []
    for name, group in by_name.items():
        if len(group) == 1:
            clean.extend(group)
            continue
        ids = ", ".join(s.spec.instance_id for s in group)
        error = (
            f"server name {name!r} resolves to several instances ({ids}); give them distinct names"
        )
        failures += [Outcome(name, s.spec.instance_id, error=error) for s in group]
    return clean, failures


def split_bad_image_names(
    servers: list[Server], failures: list[Outcome], config: BackupConfig, now: datetime
) -> tuple[list[Server], list[Outcome]]:
    """Fail servers found by tag whose AMI name is invalid or the same as another's."""
    by_name: dict[str, list[Server]] = {}
    for server in servers:
        spec = server.spec
        problem = name_problem(config.name_format, spec, config.schedule, now)
        if problem:
            failures.append(Outcome(spec.name, spec.instance_id, error=f"NAME_FORMAT: {problem}"))
            continue
        name = render_name(config.name_format, spec, config.schedule, now)
        by_name.setdefault(name, []).append(server)
    clean: list[Server] = []
    for name, group in by_name.items():
        if len(group) == 1:
            clean.extend(group)
            continue
        names = " and ".join(repr(s.spec.name) for s in group)
        error = f"servers {names} would get the same AMI name {name!r}; rename one"
        failures += [Outcome(s.spec.name, s.spec.instance_id, error=error) for s in group]
    return clean, failures


@dataclass
class LaunchContext:
    """What every server's launch record draws on, read once a run: the region's Elastic
    IPs (one call) and load-balancer members (a call per target group; None: unknown)."""

    addresses: list[dict]
    balancers: dict[str, dict[str, list]] | None

    @classmethod
    def read(cls, clients: Clients, config: BackupConfig, servers: list[Server]) -> LaunchContext:
        if not servers:
            return cls([], {})
        addresses = clients.ec2.describe_addresses().get("Addresses", [])
        return cls(addresses, load_balancer_membership(clients, config, servers))

    def record(self, ec2: Any, server: Server, found: dict | None = None) -> None:
        """Record what an instance runs with that DescribeInstances does not say: its Elastic
        IPs, load balancers, and its protections, shutdown behaviour and CPU credits (its
        GetLaunchTemplateData, read here unless found). A run does it just ahead of the
        server's CreateImage: the describe bucket refills four times faster than
        CreateImage's, so the reads never hold creation up (EC2's throttling page)."""
        if found is None:
            found = launch_data(ec2, server)
        members = (
            self.balancers.get(server.spec.instance_id) if self.balancers is not None else None
        )
        server.launch = launch_record(server.instance, found, self.addresses, members)
        server.eip = primary_elastic_ip(server.launch)

    def record_all(self, ec2: Any, servers: list[Server]) -> None:
        """Every server's launch record at once (a dry run, which creates nothing)."""
        with ThreadPoolExecutor(LAUNCH_DATA_THREADS) as pool:  # the pacer keeps EC2's rate
            data = list(pool.map(lambda server: launch_data(ec2, server), servers))
        for server, found in zip(servers, data, strict=True):
            self.record(ec2, server, found)


def launch_data(ec2: Any, server: Server) -> dict[str, Any]:
    """The instance's GetLaunchTemplateData: what DescribeInstances does not say (see
    ec2ami.attributes); empty if it could not be read."""
    spec = server.spec
    try:
        answer = ec2.get_launch_template_data(InstanceId=spec.instance_id)
    except ClientError as err:
        log.warning("%s (%s): its protections and shutdown behaviour are not recorded: %s",
                    spec.name, spec.instance_id, error_text(err))  # fmt: skip
        return {}
    return dict(answer["LaunchTemplateData"])


def load_balancer_membership(
    clients: Clients, config: BackupConfig, servers: list[Server]
) -> dict[str, dict[str, list]] | None:
    """Each instance's ELBv2 target groups (ARN and port) and Classic Load Balancers;
    None when they cannot be read (the record then says they are unknown)."""
    if not config.record_load_balancers:
        return None
    found: dict[str, dict[str, list]] = {
        s.spec.instance_id: {"target_groups": [], "classic_load_balancers": []} for s in servers
    }
    vpcs = {s.instance.get("VpcId") for s in servers}
    try:
        elbv2 = clients.client("elbv2")
        for group in paginate(elbv2, "describe_target_groups", "TargetGroups"):
            if group.get("TargetType") != "instance" or group.get("VpcId") not in vpcs:
                continue
            arn = group["TargetGroupArn"]
            health = elbv2.describe_target_health(TargetGroupArn=arn)
            for target in health.get("TargetHealthDescriptions", []):
                spot = target.get("Target", {})
                if spot.get("Id") in found:
                    found[spot["Id"]]["target_groups"].append(
                        {"arn": arn, "port": spot.get("Port")}
                    )
        elb = clients.client("elb")
        for balancer in paginate(elb, "describe_load_balancers", "LoadBalancerDescriptions"):
            for member in balancer.get("Instances", []):
                if member.get("InstanceId") in found:
                    name = balancer["LoadBalancerName"]
                    found[member["InstanceId"]]["classic_load_balancers"].append(name)
    except AWS_ERRORS as err:
        log.warning(
            "load balancer membership is not recorded (a restore will say so): %s; allow "
            "the Describe calls in --print-iam-policy, or set RECORD_LOAD_BALANCERS = False",
            error_text(err),
        )
        return None
    return found


def launch_record(
    instance: dict, data: dict[str, Any], addresses: list[dict], balancers: dict[str, list] | None
) -> dict[str, Any]:
    """The instance's launch configuration as the TAG_LAUNCH document: defaults left out."""
    values = {
        **read_all(instance, data),
        "interfaces": interfaces_of(instance, addresses),
        "elastic_ips": elastic_ips_of(instance, addresses),
        **(balancers or {}),
    }
    unknown = [key for name, key in LAUNCH_DATA_KEYS.items() if data.get(name) is None]
    if balancers is None:
        unknown += ["target_groups", "classic_load_balancers"]
    values["unknown"] = unknown
    record: dict[str, Any] = {"v": LAUNCH_VERSION}
    record.update({k: v for k, v in values.items() if v is not None and v != LAUNCH_DEFAULTS[k]})
    return record


def interfaces_of(instance: dict, addresses: list[dict]) -> list[dict]:
    """The instance's network interfaces by device index; defaults left out."""
    elastic = {a.get("PublicIp") for a in addresses if a.get("AllocationId")}
    made = []
    for nic in sorted(instance.get("NetworkInterfaces", []), key=device_index):
        ips = nic.get("PrivateIpAddresses", [])
        entry = {
            "index": device_index(nic),
            "subnet": nic.get("SubnetId"),
            "groups": [g["GroupId"] for g in nic.get("Groups", [])],
            "ip": nic.get("PrivateIpAddress"),
            "secondary": sorted(
                (p["PrivateIpAddress"] for p in ips if not p.get("Primary")),
                key=ipaddress.IPv4Address,
            ),
            "ipv6": len(nic.get("Ipv6Addresses", [])),
            "source_dest_check": nic.get("SourceDestCheck", True),
            "description": nic.get("Description", ""),
            "delete_on_termination": nic.get("Attachment", {}).get("DeleteOnTermination", True),
            "public_ip": nic.get("Association", {}).get("PublicIp", "") not in elastic | {""},
        }
        made.append({k: v for k, v in entry.items() if v != INTERFACE_DEFAULTS.get(k)})
    return made


def device_index(nic: dict) -> int:
    """An attached network interface's device index."""
    return int(nic.get("Attachment", {}).get("DeviceIndex", 0))


def elastic_ips_of(instance: dict, addresses: list[dict]) -> list[dict]:
    """Every Elastic IP on the instance, by (device index, private IP)."""
    index = {
        n["NetworkInterfaceId"]: device_index(n) for n in instance.get("NetworkInterfaces", [])
    }
    made = [
        {"index": index[a["NetworkInterfaceId"]], "ip": a.get("PrivateIpAddress"),
         "allocation": a["AllocationId"]}
        for a in addresses
        if a.get("AllocationId") and a.get("NetworkInterfaceId") in index
    ]  # fmt: skip
    return sorted(made, key=lambda e: (e["index"], e["ip"] or ""))


def primary_elastic_ip(record: dict) -> str | None:
    """The Elastic IP on the primary interface's primary address, for TAG_ELASTIC_IP."""
    primary = next((n.get("ip") for n in record.get("interfaces", []) if n["index"] == 0), None)
    for eip in record.get("elastic_ips", []):
        if eip["index"] == 0 and eip["ip"] == primary:
            return eip["allocation"]
    return None


def to_image(raw: dict) -> Image:
    """Turn a DescribeImages entry into an Image."""
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
    devices = {
        m["DeviceName"]: m["Ebs"]["SnapshotId"]
        for m in raw.get("BlockDeviceMappings", [])
        if m.get("Ebs", {}).get("SnapshotId")
    }
    return Image(
        image_id=raw["ImageId"],
        name=raw.get("Name", ""),
        state=raw["State"],
        created=parse_time(raw.get("CreationDate", "")),
        server=tags.get(TAG_SERVER, ""),
        schedule=tags.get(TAG_SCHEDULE, ""),
        instance_id=tags.get(TAG_INSTANCE_ID, ""),
        snapshot_ids=list(devices.values()),
        devices=devices,
        reason=raw.get("StateReason", {}).get("Message", ""),
        tags=tags,
        encrypted=any(
            m.get("Ebs", {}).get("Encrypted") for m in raw.get("BlockDeviceMappings", [])
        ),
        deprecation_time=raw.get("DeprecationTime"),
        pool=tags.get(TAG_POOL, ""),
        protection=raw.get("DeregistrationProtection") or PROTECTION_OFF,
        claimed=tag_time(tags.get(TAG_CREATED)),
        source_instance_id=raw.get("SourceInstanceId", ""),
        source_image_id=raw.get("SourceImageId", ""),
        source_image_region=raw.get("SourceImageRegion", ""),
        owner_id=raw.get("OwnerId", ""),
    )


def parse_time(text: str) -> datetime:
    """Parse EC2's ISO 8601 time; an unreadable one (or one without a zone) sorts as oldest."""
    return tag_time(text) or datetime.min.replace(tzinfo=timezone.utc)


def tag_time(text: str | None) -> datetime | None:
    """An ISO 8601 time with its zone, as this tool writes them; None if it is anything else."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def managed_images(ec2: Any, schedule: str | None) -> list[Image]:
    """Every image this tool made in this account and region (for one schedule)."""
    filters = [{"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]}]
    if schedule:
        filters.append({"Name": f"tag:{TAG_SCHEDULE}", "Values": [schedule]})
    raw = paginate(
        ec2, "describe_images", "Images", Owners=["self"], Filters=filters, IncludeDisabled=True
    )
    return [to_image(image) for image in raw]


def check_requested(only: list[str], servers: list[Server], failures: list[Outcome]) -> None:
    """Every --server NAME given must have resolved to something."""
    known = {s.spec.name for s in servers} | {f.name for f in failures}
    for name in only or []:
        if name not in known:
            failures.append(Outcome(name, "-", error="no such server in SERVERS or SELECT_TAGS"))


# DescribeImageReferences: at most 10 image ids a call (EC2 API reference). What it looks
# in: instances and launch templates (Auto Scaling groups' too). Not SSM parameters: that
# would need ssm:GetParameters on every parameter, secrets included, for the backup role.
REFERENCES_IDS_MAX = 10
REFERENCE_TYPES = ("ec2:Instance", "ec2:LaunchTemplate")


def image_references(ec2: Any, image_ids: list[str]) -> dict[str, str]:
    """What still uses each of these images, by image id: one call per 10 images."""
    used: dict[str, list[str]] = {}
    kinds = [{"ResourceType": kind} for kind in REFERENCE_TYPES]
    for batch in chunked(sorted(set(image_ids)), REFERENCES_IDS_MAX):
        for ref in paginate(ec2, "describe_image_references", "ImageReferences",
                            ImageIds=batch, ResourceTypes=kinds):  # fmt: skip
            used.setdefault(ref["ImageId"], []).append(f"{ref['ResourceType']} {ref['Arn']}")
    return {image_id: ", ".join(sorted(users)) for image_id, users in used.items()}
