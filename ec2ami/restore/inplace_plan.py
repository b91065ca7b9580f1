"""Restore in place, the first half: find the server's live instance and its backup, check
that the backup is of this instance, and plan what happens to each device. Pure but for
the describes in find_instance and observe.

Each device the backup holds gets a new volume from the backup's snapshot:
- the root device of a running instance through a root volume replacement task
  (CreateReplaceRootVolumeTask with the image: the instance keeps running, its id,
  interfaces, addresses and attachments; EC2 API Reference);
- every other device by a new volume with the current one's type, IOPS, throughput and
  encryption (and size, if it grew), swapped while the instance is stopped: a volume in
  use by a running system cannot be swapped safely. The root device of a stopped
  instance is swapped so too.
A device attached now that the backup does not hold is left attached, and reported.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ec2ami import clock
from ec2ami.contract import TAG_IN_PLACE, TAG_RESTORED_SERVER
from ec2ami.facts import CLOCK_SKEW
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.recorded import read_recorded

LIVE_STATES = ("pending", "running", "stopping", "stopped")
VOLUME_SETTINGS = ("VolumeType", "Iops", "Throughput", "Encrypted", "KmsKeyId")


@dataclass
class Device:
    """One device of the instance: what is there now, and what the backup puts there."""

    name: str
    root: bool
    current: dict | None  # the attached volume, as DescribeVolumes has it
    snapshot: str | None  # the backup's snapshot for it; None: the backup does not hold it
    size: int = 0  # GiB of the new volume
    settings: dict = field(default_factory=dict)  # CreateVolume's VolumeType, Iops, ...
    delete_on_termination: bool = True
    action: str = "leave"  # "replace-root", "swap", "add" or "leave"


@dataclass
class InPlacePlan:
    """Everything an in-place restore will do, decided before it changes anything."""

    server: str
    instance: dict
    image: dict
    run: str  # this restore's id: in every tag it writes, so a rerun finds its work
    devices: list[Device]
    was: str  # the instance's state before the restore: "running" or "stopped"
    discard: bool  # delete the replaced volumes instead of keeping them
    warnings: list[str] = field(default_factory=list)

    @property
    def stop(self) -> bool:
        """Whether the instance must be stopped: a device other than a running
        instance's root is swapped."""
        return self.was == "running" and any(d.action in ("swap", "add") for d in self.devices)

    @property
    def zone(self) -> str:
        return str(self.instance["Placement"]["AvailabilityZone"])

    def token(self, what: str) -> str:
        """An idempotency token for one of this run's creations (at most 64 characters)."""
        return hashlib.sha256(f"{self.run}/{what}".encode()).hexdigest()[:64]


def find_instance(ec2: Any, config: RestoreConfig, image: dict, server: str) -> dict:
    """The server's live instance: INSTANCE_ID, else the instance the backup was made
    from if it still exists, else the newest one a restore of the server launched."""
    wanted = config.instance_id or image.get("SourceInstanceId")
    if wanted:
        found = live(ec2, InstanceIds=[wanted]) if config.instance_id else live(
            ec2, Filters=[{"Name": "instance-id", "Values": [wanted]}])  # fmt: skip
        if found:
            return found[0]
        if config.instance_id:
            raise RestoreError(f"instance {wanted} is not running or stopped")
    restored = live(ec2, Filters=[{"Name": f"tag:{TAG_RESTORED_SERVER}", "Values": [server]}])
    if not restored:
        raise RestoreError(
            f"{server} has no live instance (neither {wanted} nor one restored from its "
            "backups): restore it as a new instance, without --in-place"
        )
    return max(restored, key=lambda i: str(i.get("LaunchTime", "")))


def live(ec2: Any, **kwargs: Any) -> list[dict]:
    """The instances asked for that are not shutting down or terminated."""
    answer = ec2.describe_instances(**kwargs)["Reservations"]
    return [i for r in answer for i in r["Instances"] if i["State"]["Name"] in LIVE_STATES]


def check_lineage(image: dict, instance: dict, launched_from: dict | None) -> None:
    """The backup must be of this instance, or of the instance it was restored from, as
    EC2 records it (SourceInstanceId; the instance's own ImageId): never a tag alone."""
    source, instance_id = image.get("SourceInstanceId"), instance["InstanceId"]
    if source and source == instance_id:
        return
    if source and launched_from and launched_from.get("SourceInstanceId") == source:
        return
    raise RestoreError(
        f"backup {image['ImageId']} was made from {source or 'no instance EC2 knows of'}, "
        f"which is neither {instance_id} nor the instance {instance_id} was restored from: "
        "an in-place restore puts back this server's own disks only"
    )


def check_not_busy(plan_image: dict, instance: dict, pending: list[dict]) -> str | None:
    """Refuse while a backup of the server is pending; return the run to resume, if an
    in-place restore of this same backup did not finish (None: a fresh run)."""
    if pending:
        raise RestoreError(f"a backup of this server is still pending ({pending[0]['ImageId']}): "
                           "wait for it, then restore in place")  # fmt: skip
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    held = str(tags.get(TAG_IN_PLACE) or "")
    if not held:
        return None
    run, image_id, *_ = [*held.split(), "", ""]
    if image_id != plan_image["ImageId"]:
        raise RestoreError(
            f"an in-place restore (run {run}, from {image_id}) did not finish on "
            f"{instance['InstanceId']}: rerun it with --ami {image_id} --in-place to finish "
            f"it, or undo it with --rollback {run}"
        )
    return run


def plan_devices(instance: dict, image: dict, current: dict[str, dict]) -> list[Device]:
    """What happens to each device: the backup's devices get new volumes, the others stay.
    current: each device's volume before the restore (DescribeVolumes), by device."""
    backed = {m["DeviceName"]: m["Ebs"] for m in image.get("BlockDeviceMappings", [])
              if m.get("Ebs", {}).get("SnapshotId")}  # fmt: skip
    running = instance["State"]["Name"] == "running"
    devices = []
    for name in sorted(set(current) | set(backed)):
        volume = current.get(name)
        device = Device(name, name == instance.get("RootDeviceName"), volume,
                        backed.get(name, {}).get("SnapshotId"))  # fmt: skip
        if device.snapshot:
            ebs = backed[name]
            device.action = ("replace-root" if device.root and running
                             else "swap" if volume else "add")  # fmt: skip
            device.size = max(ebs.get("VolumeSize", 1), (volume or {}).get("Size", 0))
            device.settings = new_volume_settings(volume, ebs)
            attachment: dict = next(iter((volume or {}).get("Attachments", [])), {})
            device.delete_on_termination = bool(attachment.get(
                "DeleteOnTermination", ebs.get("DeleteOnTermination", False)))  # fmt: skip
        devices.append(device)
    return devices


def new_volume_settings(current: dict | None, ebs: dict) -> dict:
    """The new volume's type, IOPS, throughput and encryption: the current volume's, so a
    volume tuned since the backup stays tuned; a new device's from the image."""
    source = current or ebs
    made = {k: source[k] for k in VOLUME_SETTINGS if source.get(k) is not None}
    if made.get("VolumeType") not in ("io1", "io2", "gp3"):
        made.pop("Iops", None)
    if made.get("VolumeType") != "gp3":
        made.pop("Throughput", None)
    if not made.get("Encrypted"):
        made.pop("KmsKeyId", None)
    return made


def plan_warnings(plan: InPlacePlan) -> list[str]:
    """What the operator must know before saying yes."""
    warnings = [
        f"{d.name} ({d.current['VolumeId'] if d.current else '-'}) is not in the backup: "
        "it stays attached as it is"
        for d in plan.devices
        if d.action == "leave"
    ]
    public = plan.instance.get("PublicIpAddress")
    if plan.stop and public and not elastic(plan.instance, public):
        warnings.append(f"the instance is stopped to swap its data volumes, so its public IP "
                        f"{public} (not an Elastic IP) changes when it starts again")  # fmt: skip
    return warnings


def elastic(instance: dict, address: str) -> bool:
    """Whether the instance's public address is an Elastic IP (owned by the account)."""
    for nic in instance.get("NetworkInterfaces", []):
        association = nic.get("Association", {})
        if association.get("PublicIp") == address:
            return association.get("IpOwnerId") not in (None, "amazon")
    return False


def backup_age(image: dict, now: datetime | None = None) -> str:
    """How old the backup is (the RPO this restore gives), from EC2's CreationDate."""
    created = datetime.fromisoformat(image["CreationDate"].replace("Z", "+00:00"))
    seconds = max(0.0, ((now or clock.utc_now()) - created).total_seconds())
    if seconds < CLOCK_SKEW.total_seconds():
        return "just made"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours} h {rest // 60} min"


def describe_plan(plan: InPlacePlan) -> list[str]:
    """The plan in words: all --dry-run shows, and what the confirmation asks about."""
    recorded = read_recorded(plan.image)
    lines = [
        f"Restore {plan.server} in place on {plan.instance['InstanceId']} "
        f"({plan.instance['State']['Name']}) from {plan.image['ImageId']}, made "
        f"{recorded.created or plan.image.get('CreationDate')} ({backup_age(plan.image)} ago: "
        "what changed since is lost)",
        f"  run: {plan.run}",
        f"  instance: {'stopped, then started again' if plan.stop else 'left ' + plan.was}",
    ]
    kept = "deleted" if plan.discard else "detached, kept and tagged"
    for d in plan.devices:
        now = (f"{d.current['VolumeId']} ({d.current['Size']} GiB {d.current.get('VolumeType')})"
               if d.current else "nothing")  # fmt: skip
        what = {"replace-root": f"from {d.snapshot} by a root volume replacement task; the "
                                f"old root {kept}",
                "swap": f"a new {d.size} GiB volume from {d.snapshot}; the old one {kept}",
                "add": f"a new {d.size} GiB volume from {d.snapshot}",
                "leave": "left attached: not in the backup"}[d.action]  # fmt: skip
        lines.append(f"  {d.name}{' (root)' if d.root else ''}: {now} -> {what}")
    return lines + [f"  WARNING {w}" for w in plan.warnings]
