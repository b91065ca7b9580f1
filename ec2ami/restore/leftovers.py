"""What earlier drills left behind, found and removed: instances past their own deadline,
and the detached volumes and network interfaces of drills.

A drill launches every interface and volume with DeleteOnTermination, so a drill that
ends leaves nothing. What remains comes from a drill killed by SIGKILL (its instances
live on until a later drill ends them), from a check that attached something, or from an
older version of the tool. Each drill sweeps first.

Ownership never rests on a tag alone. An instance is ended only in DRILL_SUBNET_ID and
past the deadline its own drill wrote on it, so drills with other timeouts never end
each other's. An interface is deleted only when EC2 says it is detached and in
DRILL_SUBNET_ID. A volume only when EC2 says it is detached and it was made from a
snapshot of the image it says it was restored from, an image of this account.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, chunked, error_text, paginate
from ec2ami.contract import TAG_DRILL, TAG_DRILL_DEADLINE, TAG_RESTORED_FROM
from ec2ami.restore.config import RestoreConfig

if TYPE_CHECKING:
    from ec2ami.restore.model import Run

log = logging.getLogger(__name__)

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
DEADLINE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# An instance of a drill made before drills wrote their deadline: over after this long.
UNDATED_DRILL_HOURS = 24


@dataclass
class Leftovers:
    """What a sweep found (and then removed), by kind, with what it could not tie."""

    instances: list[dict] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)  # volumes kept: no evidence they are ours
    failed: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.instances or self.volumes or self.interfaces)


# --- config --------------------------------------------------------------------------


def drill_deadline(config: RestoreConfig, run: Run) -> str:
    """The deadline a drill writes on its instances: twice DRILL_TIMEOUT_MINUTES after it
    begins. Each instance lives DRILL_TIMEOUT_MINUTES after its own launch at most; the
    rest is room for a fleet's launches."""
    return f"{run.utc + timedelta(minutes=2 * config.drill_timeout_minutes):{DEADLINE_FORMAT}}"


# --- observe -------------------------------------------------------------------------


def find_leftovers(ec2: Any, config: RestoreConfig, run: Run) -> Leftovers:
    """Drill instances past their deadline, and drill interfaces and volumes detached."""
    found = Leftovers()
    tagged = {"Name": "tag-key", "Values": [TAG_DRILL]}
    subnet = {"Name": "subnet-id", "Values": [config.drill_subnet_id]}
    live = {"Name": "instance-state-name", "Values": LIVE_STATES}
    instances = paginate(ec2, "describe_instances", "Reservations", Filters=[tagged, subnet, live])
    found.instances = [i for r in instances for i in r["Instances"] if past_deadline(i, run)]
    detached = {"Name": "status", "Values": ["available"]}
    interfaces = paginate(ec2, "describe_network_interfaces", "NetworkInterfaces",
                          Filters=[tagged, subnet, detached])  # fmt: skip
    found.interfaces = [n["NetworkInterfaceId"] for n in interfaces]
    volumes = list(paginate(ec2, "describe_volumes", "Volumes", Filters=[tagged, detached]))
    ours = image_snapshots(ec2, {tag(v, TAG_RESTORED_FROM) for v in volumes} - {""})
    for volume in volumes:
        tied = volume.get("SnapshotId") in ours.get(tag(volume, TAG_RESTORED_FROM), set())
        (found.volumes if tied else found.untied).append(volume["VolumeId"])
    return found


def past_deadline(instance: dict, run: Run) -> bool:
    """Whether the drill that launched an instance is surely over: its TAG_DRILL_DEADLINE
    has passed (no or a bad deadline: UNDATED_DRILL_HOURS after its launch)."""
    try:
        when = datetime.strptime(tag(instance, TAG_DRILL_DEADLINE), DEADLINE_FORMAT)
        deadline = when.replace(tzinfo=timezone.utc)
    except ValueError:
        deadline = instance["LaunchTime"] + timedelta(hours=UNDATED_DRILL_HOURS)
    return run.utc > deadline


def image_snapshots(ec2: Any, image_ids: set[str]) -> dict[str, set[str]]:
    """The snapshots of each of these images of this account that still exist."""
    snapshots: dict[str, set[str]] = {}
    for batch in chunked(sorted(image_ids)):
        filters = [{"Name": "image-id", "Values": batch}]
        for image in paginate(ec2, "describe_images", "Images", Owners=["self"], Filters=filters):
            mappings = image.get("BlockDeviceMappings", [])
            snapshots[image["ImageId"]] = {m["Ebs"]["SnapshotId"] for m in mappings
                                           if m.get("Ebs", {}).get("SnapshotId")}  # fmt: skip
    return snapshots


def tag(resource: dict, key: str) -> str:
    return next((t["Value"] for t in resource.get("Tags", []) if t["Key"] == key), "")


# --- act -----------------------------------------------------------------------------


def remove_leftovers(ec2: Any, found: Leftovers) -> None:
    """End the instances, delete the interfaces and volumes; what fails is logged with
    its id and kept in found.failed (the next drill tries again)."""
    if found.instances:
        terminate(ec2, [i["InstanceId"] for i in found.instances], "left by an earlier drill")
    for kind, ids, delete, key in (
        ("network interface", found.interfaces, ec2.delete_network_interface,
         "NetworkInterfaceId"),
        ("volume", found.volumes, ec2.delete_volume, "VolumeId"),
    ):  # fmt: skip
        for resource in list(ids):
            try:
                delete(**{key: resource})
                log.info("deleted %s %s, left by an earlier drill", kind, resource)
            except AWS_ERRORS as err:
                log.error("could not delete %s %s, left by an earlier drill: %s; the next "
                          "drill will try again", kind, resource, error_text(err))  # fmt: skip
                ids.remove(resource)
                found.failed.append(resource)
    for volume in found.untied:
        log.warning("volume %s is tagged %s and detached, but is not made from a snapshot of "
                    "the image it names: kept; delete it by hand if it is a drill's", volume,
                    TAG_DRILL)  # fmt: skip


def terminate(ec2: Any, ids: list[str], why: str) -> None:
    """Terminate instances, FILTER_VALUES_MAX a call; a failure is logged with the ids (the
    next drill terminates them), and does not stop the rest."""
    for batch in chunked(ids):
        try:
            ec2.terminate_instances(InstanceIds=batch)
            log.info("terminated %s: %s", ", ".join(batch), why)
        except AWS_ERRORS as err:
            log.error("could not terminate %s (%s): %s; the next drill will", ", ".join(batch),
                      why, error_text(err))  # fmt: skip


# --- report --------------------------------------------------------------------------


def show_leftovers(found: Leftovers) -> None:
    """The dry run's account of what the sweep would remove."""
    for instance in found.instances:
        print(f"Would terminate {instance['InstanceId']}, left by an earlier drill "
              f"(launched {instance['LaunchTime']:%Y-%m-%d %H:%M} UTC)")  # fmt: skip
    for interface in found.interfaces:
        print(f"Would delete network interface {interface}, left by an earlier drill")
    for volume in found.volumes:
        print(f"Would delete volume {volume}, left by an earlier drill")
    for volume in found.untied:
        print(f"Would keep volume {volume}: tagged {TAG_DRILL}, but not made from its image")


def log_leftovers(config: RestoreConfig, found: Leftovers, run: Run) -> None:
    """One DRILL_LOG line for what the sweep removed, if anything."""
    if not config.drill_log or not (found.any() or found.failed):
        return
    line = {"drill": f"{run.utc:%Y-%m-%dT%H:%M:%SZ}", "cleanup": {
        "instances": [i["InstanceId"] for i in found.instances], "volumes": found.volumes,
        "network_interfaces": found.interfaces, "failed": found.failed}}  # fmt: skip
    try:
        with open(config.drill_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
    except OSError as err:
        log.error("could not append to DRILL_LOG %s: %s", config.drill_log, err.strerror)
