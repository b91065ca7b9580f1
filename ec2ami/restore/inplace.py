"""Restore in place, the story: find the live instance and the backup, plan each device
(ec2ami.restore.inplace_plan), confirm, then put the backup's disks on the instance, check
them, report, and (--rollback) put the old ones back.

Every step can be run again: the instance carries TAG_IN_PLACE ("<run> <image> <state
before>") from the first change to the last, every volume to be replaced carries
TAG_REPLACED_BY_RESTORE from before it is touched, and every new volume carries
TAG_IN_PLACE_VOLUME from its creation. A rerun of the same command (after a failure or a
kill) reads them, and finishes; --rollback <run> reads them, and undoes. At any moment the
instance holds, device by device, its old volume or its new one, and the report (or the
rerun) says which.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami import clock, polling
from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.contract import (
    TAG_IN_PLACE,
    TAG_IN_PLACE_VOLUME,
    TAG_MANAGED,
    TAG_REPLACED_BY_RESTORE,
    TAG_RESTORED_IN_PLACE,
    TAG_SERVER,
    TOOL,
)
from ec2ami.errors import EXIT_FAILED, EXIT_OK
from ec2ami.facts import NOT_FOUND_CODES, PENDING
from ec2ami.output import human, print_json
from ec2ami.restore.config import RestoreConfig, RestoreError
from ec2ami.restore.images import find_image, pick_images
from ec2ami.restore.inplace_plan import (
    InPlacePlan,
    backup_age,
    check_lineage,
    check_not_busy,
    describe_plan,
    find_instance,
    plan_devices,
    plan_warnings,
)
from ec2ami.restore.launch import statuses_ok
from ec2ami.restore.recorded import read_recorded

if TYPE_CHECKING:
    from ec2ami.aws import Clients

log = logging.getLogger(__name__)
TASK_DONE = {"succeeded"}
TASK_FAILED = {"failed", "failed-detached"}


class InPlaceError(Exception):
    """An in-place restore stopped after changing something: the report says where."""


@dataclass
class Progress:
    """What the run did, for the report: each step's seconds, each device's new volume."""

    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float]] = field(default_factory=list)
    new: dict[str, str] = field(default_factory=dict)  # device -> new volume
    old: dict[str, str] = field(default_factory=dict)  # device -> replaced volume
    step: str = "planning"

    def timed(self, name: str, since: float) -> None:
        self.steps.append((name, round(time.monotonic() - since, 1)))


def restore_in_place(clients: Clients, config: RestoreConfig, args: argparse.Namespace) -> int:
    """Plan, confirm, restore the server's disks on its live instance, check, report."""
    ec2 = clients.ec2
    try:
        plan = prepare(ec2, config, args.discard_replaced)
    except AWS_ERRORS as err:
        raise RestoreError(f"AWS error: {error_text(err)}") from None
    if args.dry_run and args.json:
        print_json({"dry_run": True, "server": plan.server, "instance": plan.instance["InstanceId"],
                    "image": plan.image["ImageId"], "run": plan.run,
                    "devices": [{"device": d.name, "action": d.action, "snapshot": d.snapshot}
                                for d in plan.devices],
                    "warnings": plan.warnings, "plan": describe_plan(plan)})  # fmt: skip
        return EXIT_OK
    print("\n".join(describe_plan(plan)), file=human(args.json))
    if args.dry_run:
        return EXIT_OK
    if not args.yes:
        confirm(plan.instance["InstanceId"])
    progress = Progress()
    try:
        act(ec2, plan, config, progress)
    except (InPlaceError, RestoreError, *AWS_ERRORS) as err:
        text = str(err) if isinstance(err, (InPlaceError, RestoreError)) else error_text(err)
        report(plan, progress, args.json, error=text)
        return EXIT_FAILED
    report(plan, progress, args.json)
    return EXIT_OK


def prepare(ec2: Any, config: RestoreConfig, discard: bool) -> InPlacePlan:
    """Find the backup and the live instance, check they belong together and that nothing
    else is at work on the server, and plan each device. Changes nothing."""
    image = find_image(ec2, config) if config.ami_id else pick_images(ec2, config)[0].image
    assert image is not None  # a single restore raises rather than leave it None
    server = read_recorded(image).server or image["ImageId"]
    instance = find_instance(ec2, config, image, server)
    check_lineage(image, instance, launched_from(ec2, instance))
    pending = ec2.describe_images(Owners=["self"], Filters=[
        {"Name": "state", "Values": [PENDING]}, {"Name": f"tag:{TAG_SERVER}", "Values": [server]},
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]}])["Images"]  # fmt: skip
    resumed = check_not_busy(image, instance, pending)
    state = instance["State"]["Name"]
    if not resumed and state not in ("running", "stopped"):
        raise RestoreError(f"instance {instance['InstanceId']} is {state}: wait until it is "
                           "running or stopped")  # fmt: skip
    run = resumed or clock.new_run_id()
    was = held_value(instance, 2) or state
    attached = attached_volumes(ec2, instance)
    current = {**attached, **volumes_of_run(ec2, TAG_REPLACED_BY_RESTORE, run)}  # a rerun: old
    plan = InPlacePlan(server, instance, image, run, plan_devices(instance, image, current),
                       was, discard)  # fmt: skip
    plan.warnings = plan_warnings(plan)
    if resumed:
        new = {d: v["VolumeId"] for d, v in volumes_of_run(ec2, TAG_IN_PLACE_VOLUME, run).items()}
        where = ", ".join(
            f"{d.name} {'new' if new.get(d.name) == held else 'old'} "
            f"({held or 'nothing attached'})"
            for d in plan.devices if d.snapshot
            for held in [attached.get(d.name, {}).get("VolumeId")]
        )  # fmt: skip
        plan.warnings.insert(0, f"run {run} did not finish ({state}; now {where}): this run "
                                "goes on from where it stopped")  # fmt: skip
    return plan


def launched_from(ec2: Any, instance: dict) -> dict | None:
    """The image the instance was launched from, as EC2 records it, if it still exists."""
    try:
        images = ec2.describe_images(ImageIds=[instance["ImageId"]])["Images"]
    except ClientError as err:
        if err.response["Error"]["Code"] not in NOT_FOUND_CODES:
            raise
        return None
    return images[0] if images else None


def held_value(instance: dict, index: int) -> str | None:
    """A field of the instance's TAG_IN_PLACE value: 0 the run, 1 the image, 2 the state."""
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    parts = tags.get(TAG_IN_PLACE, "").split()
    return parts[index] if len(parts) > index else None


def attached_volumes(ec2: Any, instance: dict) -> dict[str, dict]:
    """The instance's volumes now, by device (one DescribeVolumes)."""
    ids = [m["Ebs"]["VolumeId"] for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
    if not ids:
        return {}
    volumes = ec2.describe_volumes(VolumeIds=ids)["Volumes"]
    return {a["Device"]: v for v in volumes for a in v.get("Attachments", [])
            if a["InstanceId"] == instance["InstanceId"]}  # fmt: skip


def volumes_of_run(ec2: Any, key: str, run: str) -> dict[str, dict]:
    """The volumes a run tagged with key (its replaced or its new ones), by device."""
    filters = [{"Name": f"tag:{key}", "Values": [f"{run} *"]}]
    found = {}
    for volume in ec2.describe_volumes(Filters=filters)["Volumes"]:
        value = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}[key].split()
        found[value[1]] = volume
    return found


def confirm(instance_id: str) -> None:
    """A person says yes, by typing the instance id (the CLI refused a non-terminal)."""
    print(
        f"This changes the disks of {instance_id}. Type its id to go on: ",
        end="",
        file=sys.stderr,
        flush=True,
    )  # a prompt, not output: stdout may be --json's
    answer = sys.stdin.readline().strip()
    if answer != instance_id:
        raise RestoreError("not confirmed")


def act(ec2: Any, plan: InPlacePlan, config: RestoreConfig, progress: Progress) -> None:
    """Each step in turn; each one finds its own work done on a rerun, and skips it.

    Long because it is the list of steps, in the order that keeps the server whole.
    """
    instance_id, deadline = plan.instance["InstanceId"], wait_deadline(config)
    progress.step = "marking the instance and the volumes to replace"
    hold(ec2, plan)
    root = next((d for d in plan.devices if d.action == "replace-root"), None)
    if root is not None:
        progress.step, since = "replacing the root volume", time.monotonic()
        progress.new[root.name] = replace_root(ec2, plan, config, deadline)
        progress.old[root.name] = root.current["VolumeId"] if root.current else "-"
        progress.timed(f"{root.name}: root volume replacement task", since)
    swapped = [d for d in plan.devices if d.action in ("swap", "add")]
    if swapped:
        if plan.stop:
            progress.step, since = "stopping the instance", time.monotonic()
            set_state(ec2, instance_id, "stopped", deadline)
            progress.timed("stop the instance", since)
        progress.step, since = "creating the new volumes", time.monotonic()
        made = new_volumes(ec2, plan, swapped, deadline)
        progress.timed("create the new volumes", since)
        for device in swapped:
            progress.step, since = f"swapping {device.name}", time.monotonic()
            swap(ec2, instance_id, device, made[device.name], deadline)
            progress.new[device.name] = made[device.name]
            progress.old[device.name] = device.current["VolumeId"] if device.current else "-"
            progress.timed(f"{device.name}: detach the old volume, attach the new", since)
        if plan.stop:
            progress.step, since = "starting the instance", time.monotonic()
            set_state(ec2, instance_id, "running", deadline)
            progress.timed("start the instance", since)
    if config.wait == "status-ok" and plan.was == "running":
        progress.step, since = "waiting for status checks", time.monotonic()
        wait_for(lambda: instance_id in statuses_ok(ec2, [instance_id]), "status checks",
                 deadline)  # fmt: skip
        progress.timed("status checks", since)
    progress.step = "checking the disks against the backup"
    check_devices(ec2, plan)
    if plan.discard:
        progress.step = "deleting the replaced volumes"
        for volume in volumes_of_run(ec2, TAG_REPLACED_BY_RESTORE, plan.run).values():
            ec2.delete_volume(VolumeId=volume["VolumeId"])
    progress.step = "recording the restore"
    stamp = clock.utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
    ec2.create_tags(Resources=[plan.image["ImageId"]], Tags=[
        {"Key": TAG_RESTORED_IN_PLACE, "Value": f"{stamp} {instance_id} {plan.run}"}])  # fmt: skip
    ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": TAG_IN_PLACE}])
    progress.step = "done"


def wait_deadline(config: RestoreConfig) -> float:
    return time.monotonic() + config.wait_timeout_minutes * 60


def hold(ec2: Any, plan: InPlacePlan) -> None:
    """Mark the instance (the lock a backup and another in-place restore respect) and each
    volume to be replaced (how a rerun and --rollback find them), before any change."""
    instance_id = plan.instance["InstanceId"]
    if held_value(plan.instance, 0) != plan.run:
        value = f"{plan.run} {plan.image['ImageId']} {plan.was}"
        ec2.create_tags(Resources=[instance_id], Tags=[{"Key": TAG_IN_PLACE, "Value": value}])
    stamp = clock.utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
    for device in plan.devices:
        tags = {t["Key"] for t in (device.current or {}).get("Tags", [])}
        if device.action in ("replace-root", "swap") and TAG_REPLACED_BY_RESTORE not in tags:
            value = f"{plan.run} {device.name} {instance_id} {stamp}"
            ec2.create_tags(Resources=[device.current["VolumeId"]],  # type: ignore[index]
                            Tags=[{"Key": TAG_REPLACED_BY_RESTORE, "Value": value}])  # fmt: skip


def replace_root(ec2: Any, plan: InPlacePlan, config: RestoreConfig, deadline: float) -> str:
    """The root volume from the image, by a replacement task (this run's, if one exists);
    wait for it; tag the new root volume as this run's. Return its id."""
    instance_id = plan.instance["InstanceId"]
    tasks = ec2.describe_replace_root_volume_tasks(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}]
    )["ReplaceRootVolumeTasks"]
    task = next(
        (t for t in tasks if {"Key": TAG_IN_PLACE, "Value": plan.run} in t.get("Tags", [])), None
    )
    if task is None:
        extra = ({"VolumeInitializationRate": config.volume_initialization_rate}
                 if config.volume_initialization_rate else {})  # fmt: skip
        task = ec2.create_replace_root_volume_task(
            InstanceId=instance_id, ImageId=plan.image["ImageId"], ClientToken=plan.token("root"),
            DeleteReplacedRootVolume=plan.discard, TagSpecifications=[{
                "ResourceType": "replace-root-volume-task",
                "Tags": [{"Key": TAG_IN_PLACE, "Value": plan.run}]}], **extra,
        )["ReplaceRootVolumeTask"]  # fmt: skip
    task_id, seen = task["ReplaceRootVolumeTaskId"], {"state": task.get("TaskState")}

    def ended() -> bool:
        found = ec2.describe_replace_root_volume_tasks(ReplaceRootVolumeTaskIds=[task_id])
        seen["state"] = found["ReplaceRootVolumeTasks"][0]["TaskState"]
        return seen["state"] in TASK_DONE | TASK_FAILED

    wait_for(ended, f"task {task_id}", deadline)
    if seen["state"] in TASK_FAILED:
        raise InPlaceError(
            f"root volume replacement task {task_id} failed: EC2 left the "
            "original root volume on the instance; nothing else was changed"
        )
    root = str(plan.instance.get("RootDeviceName"))
    new = attached_volumes(ec2, describe_instance(ec2, instance_id))[root]["VolumeId"]
    ec2.create_tags(Resources=[new], Tags=[{"Key": TAG_IN_PLACE_VOLUME,
                                            "Value": f"{plan.run} {root}"}])  # fmt: skip
    return str(new)


def describe_instance(ec2: Any, instance_id: str) -> dict:
    """One instance, as DescribeInstances has it now."""
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return dict(reservations[0]["Instances"][0])


def set_state(ec2: Any, instance_id: str, wanted: str, deadline: float) -> None:
    """Stop or start the instance, unless it is so already, and wait until it is."""
    now = describe_instance(ec2, instance_id)["State"]["Name"]
    if now != wanted:
        if wanted == "stopped":
            ec2.stop_instances(InstanceIds=[instance_id])
        elif now == "stopped":
            ec2.start_instances(InstanceIds=[instance_id])
    wait_for(lambda: describe_instance(ec2, instance_id)["State"]["Name"] == wanted,
             f"{instance_id} to be {wanted}", deadline)  # fmt: skip


def new_volumes(ec2: Any, plan: InPlacePlan, devices: list, deadline: float) -> dict[str, str]:
    """A new volume per device from the backup's snapshot, in the instance's zone, with
    the current volume's settings and tags (this run's own, if made already); wait until
    they are all available."""
    made = {d: v["VolumeId"] for d, v in volumes_of_run(ec2, TAG_IN_PLACE_VOLUME, plan.run).items()}
    for device in devices:
        if device.name in made:
            continue
        kept = [t for t in (device.current or {}).get("Tags", [])
                if not t["Key"].startswith(("aws:", TAG_REPLACED_BY_RESTORE))]  # fmt: skip
        tags = [*kept, {"Key": TAG_IN_PLACE_VOLUME, "Value": f"{plan.run} {device.name}"}]
        volume = ec2.create_volume(
            AvailabilityZone=plan.zone, SnapshotId=device.snapshot, Size=device.size,
            ClientToken=plan.token(device.name), **device.settings,
            TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
        )  # fmt: skip
        made[device.name] = volume["VolumeId"]

    def all_available() -> bool:
        volumes = ec2.describe_volumes(VolumeIds=list(made.values()))["Volumes"]
        return all(v["State"] in ("available", "in-use") for v in volumes)

    wait_for(all_available, "the new volumes", deadline)
    return made


def swap(ec2: Any, instance_id: str, device: Any, new: str, deadline: float) -> None:
    """Detach what the device holds (unless it is the new volume already), attach the new
    volume there, and give it the old attachment's delete-on-termination."""
    held = attached_volumes(ec2, describe_instance(ec2, instance_id)).get(device.name)
    if held and held["VolumeId"] == new:
        return
    if held:
        ec2.detach_volume(VolumeId=held["VolumeId"], InstanceId=instance_id, Device=device.name)
        wait_for(lambda: volume_state(ec2, held["VolumeId"]) == "available",
                 f"{held['VolumeId']} to detach", deadline)  # fmt: skip
    ec2.attach_volume(VolumeId=new, InstanceId=instance_id, Device=device.name)
    wait_for(lambda: volume_state(ec2, new) == "in-use", f"{new} to attach", deadline)
    ec2.modify_instance_attribute(InstanceId=instance_id, BlockDeviceMappings=[{
        "DeviceName": device.name,
        "Ebs": {"DeleteOnTermination": device.delete_on_termination}}])  # fmt: skip


def volume_state(ec2: Any, volume_id: str) -> str:
    return str(ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"])


def wait_for(done: Any, what: str, deadline: float) -> None:
    """Poll done() (backing off) until it is true; InPlaceError past the deadline."""
    delay = polling.POLL_FIRST_SECONDS / 4
    while not done():
        if time.monotonic() > deadline:
            raise InPlaceError(f"gave up waiting for {what} (WAIT_TIMEOUT_MINUTES)")
        time.sleep(delay)
        delay = min(delay * polling.POLL_FACTOR, polling.POLL_MAX_SECONDS)


def check_devices(ec2: Any, plan: InPlacePlan) -> None:
    """Each device the backup holds now holds a volume made from the backup's snapshot."""
    now = attached_volumes(ec2, describe_instance(ec2, plan.instance["InstanceId"]))
    wrong = [f"{d.name} holds {now.get(d.name, {}).get('VolumeId', 'nothing')}, not a volume "
             f"from {d.snapshot}" for d in plan.devices
             if d.snapshot and now.get(d.name, {}).get("SnapshotId") != d.snapshot]  # fmt: skip
    if wrong:
        raise InPlaceError("the disks differ from the backup: " + "; ".join(wrong))


def report(plan: InPlacePlan, progress: Progress, as_json: bool, error: str | None = None) -> None:
    """Per-device volumes and timings, the RTO and the RPO; on failure, where it stopped
    and the two ways on."""
    rto = round(time.monotonic() - progress.started, 1)
    result = {
        "server": plan.server, "instance": plan.instance["InstanceId"],
        "image": plan.image["ImageId"], "run": plan.run, "backup_age": backup_age(plan.image),
        "result": "failed" if error else "ok", "error": error,
        "stopped_at": progress.step if error else None, "rto_seconds": rto,
        "devices": [{"device": d.name, "action": d.action, "snapshot": d.snapshot,
                     "old": progress.old.get(d.name), "new": progress.new.get(d.name)}
                    for d in plan.devices],
        "steps": [{"step": s, "seconds": t} for s, t in progress.steps],
    }  # fmt: skip
    if as_json:
        print_json(result)
    else:
        for step, seconds in progress.steps:
            print(f"  {seconds:>7.1f} s  {step}")
        for d in result["devices"]:
            if d["new"]:
                print(f"  {d['device']}: {d['old']} -> {d['new']} (from {d['snapshot']})")
        print(
            f"{plan.server}: restored in place on {plan.instance['InstanceId']} in {rto} s "
            f"(RTO), from a backup {result['backup_age']} old (RPO)"
            if not error
            else ""
        )
    if error:
        log.error(
            "%s (%s): in-place restore %s stopped while %s: %s. Rerun the same command "
            "to finish it, or undo it with --rollback %s",
            plan.server,
            plan.instance["InstanceId"],
            plan.run,
            progress.step,
            error,
            plan.run,
        )


def roll_back(clients: Clients, config: RestoreConfig, args: argparse.Namespace) -> int:
    """--rollback RUN: put back the volumes an in-place restore replaced, device by device
    (the instance stopped meanwhile, as a root volume can only be swapped so), and leave the
    restore's own volumes detached, named, for you to delete."""
    ec2, run = clients.ec2, args.rollback
    olds = volumes_of_run(ec2, TAG_REPLACED_BY_RESTORE, run)
    if not olds:
        raise RestoreError(f"no volume carries {TAG_REPLACED_BY_RESTORE} of run {run}: nothing "
                           "to put back (deleted with --discard-replaced?)")  # fmt: skip
    values = {d: {t["Key"]: t["Value"] for t in v["Tags"]}[TAG_REPLACED_BY_RESTORE].split()
              for d, v in olds.items()}  # fmt: skip
    instance_id = next(iter(values.values()))[2]
    instance = describe_instance(ec2, instance_id)
    was = held_value(instance, 2) or instance["State"]["Name"]
    shown = human(args.json)
    print(f"Roll back run {run} on {instance_id} ({instance['State']['Name']}):", file=shown)
    for device, volume in sorted(olds.items()):
        print(f"  {device}: put back {volume['VolumeId']}", file=shown)
    put_back = {d: v["VolumeId"] for d, v in sorted(olds.items())}
    if args.dry_run:
        if args.json:
            print_json({"dry_run": True, "run": run, "instance": instance_id,
                        "put_back": put_back})  # fmt: skip
        return EXIT_OK
    if not args.yes:
        confirm(instance_id)
    deadline, progress = wait_deadline(config), Progress()
    try:
        set_state(ec2, instance_id, "stopped", deadline)
        for device, volume in sorted(olds.items()):
            held = attached_volumes(ec2, describe_instance(ec2, instance_id)).get(device)
            if held and held["VolumeId"] != volume["VolumeId"]:
                progress.new[device] = held["VolumeId"]
            attachment: dict = next(iter((held or {}).get("Attachments", [])), {})
            back = Back(device, bool(attachment.get("DeleteOnTermination", False)))
            swap(ec2, instance_id, back, volume["VolumeId"], deadline)
            ec2.delete_tags(Resources=[volume["VolumeId"]],
                            Tags=[{"Key": TAG_REPLACED_BY_RESTORE}])  # fmt: skip
        if was == "running":
            set_state(ec2, instance_id, "running", deadline)
        ec2.delete_tags(Resources=[instance_id], Tags=[{"Key": TAG_IN_PLACE}])
    except (InPlaceError, *AWS_ERRORS) as err:
        text = str(err) if isinstance(err, InPlaceError) else error_text(err)
        log.error("rollback of run %s on %s stopped: %s; run it again to finish", run,
                  instance_id, text)  # fmt: skip
        if args.json:
            print_json({"dry_run": False, "run": run, "instance": instance_id,
                        "put_back": put_back, "result": "failed", "error": text})  # fmt: skip
        return EXIT_FAILED
    if args.json:
        print_json({"dry_run": False, "run": run, "instance": instance_id, "put_back": put_back,
                    "left_detached": progress.new, "result": "ok", "error": None})  # fmt: skip
        return EXIT_OK
    left = ", ".join(f"{d} {v}" for d, v in sorted(progress.new.items())) or "none"
    print(
        f"{instance_id}: the volumes before run {run} are back; the restore's own volumes "
        f"are detached and kept ({left}): delete them when you are sure"
    )
    return EXIT_OK


@dataclass
class Back:
    """A device to put an old volume back on (swap's view of it)."""

    name: str
    delete_on_termination: bool = False
