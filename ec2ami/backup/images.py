"""Do it: create each planned image (tagged at creation), follow every new image with one
DescribeImages per poll, and deregister with its snapshots.
"""

from __future__ import annotations

import logging
import queue
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami import polling
from ec2ami.aws import AWS_ERRORS, error_text, paginate
from ec2ami.backup.look import to_image
from ec2ami.contract import TAG_MANAGED, TAG_RUN, TOOL
from ec2ami.facts import (
    AVAILABLE,
    DESCRIPTION_MAX,
    DISABLED,
    ERR_DUPLICATE_NAME,
    ERR_SNAPSHOT_IN_USE,
    ERR_SNAPSHOT_NOT_FOUND,
    ERRS_IMAGE_GONE,
    PENDING,
    SNAPSHOT_DELETED,
    SNAPSHOT_NO_PERMISSION,
    SNAPSHOT_SKIPPED,
)

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig, ServerSpec
    from ec2ami.backup.journal import Journal
    from ec2ami.backup.look import Outcome
    from ec2ami.backup.plan import Image, ServerPlan

log = logging.getLogger(__name__)


def create_backup(
    ec2: Any, planned: ServerPlan, config: BackupConfig, out: Outcome, no_reboot: bool = True
) -> None:
    """Start CreateImage for one server, named and tagged as planned: tags at creation."""
    spec, name, tags = planned.spec, planned.name, planned.tags
    try:
        response = ec2.create_image(
            InstanceId=spec.instance_id,
            Name=name,
            Description=description(
                f"{TOOL} {config.schedule} backup of {spec.name} ({spec.instance_id})"
            ),
            NoReboot=no_reboot,
            TagSpecifications=[
                {"ResourceType": "image", "Tags": tags},
                {"ResourceType": "snapshot", "Tags": tags},
            ],
        )
        out.made(response["ImageId"])
    except ClientError as err:
        if err.response["Error"]["Code"] != ERR_DUPLICATE_NAME:
            raise
        adopt_duplicate(ec2, spec, name, out)


def description(text: str) -> str:
    """An image Description within EC2's 255 characters (the server name is in the tags
    whole); botocore does not check the limit, EC2 refuses the call."""
    return text if len(text) <= DESCRIPTION_MAX else text[: DESCRIPTION_MAX - 3] + "..."


def adopt_duplicate(ec2: Any, spec: ServerSpec, name: str, out: Outcome) -> None:
    """Take an image of this name as the backup only if this very run made it.

    That happens when EC2 made the image but its answer was lost, and botocore's
    retry met the name. Any other image of the name, even an earlier run's, means
    this run made no backup.
    """
    raw = list(
        paginate(
            ec2,
            "describe_images",
            "Images",
            Owners=["self"],
            Filters=[{"Name": "name", "Values": [name]}],
            IncludeDisabled=True,  # a disabled image keeps its name too
        )
    )
    tags = {t["Key"]: t["Value"] for image in raw for t in image.get("Tags", [])}
    ours = tags.get(TAG_MANAGED) == TOOL and tags.get(TAG_RUN) == out.run_id
    if raw and ours:
        out.made(raw[0]["ImageId"])
        log.info("%s: this run's image %s exists as %s; using it", spec.name, name, out.image_id)
        return
    owner = raw[0]["ImageId"] if raw else "an image this account cannot see"
    whose = "an earlier run's backup" if tags.get(TAG_MANAGED) == TOOL else "not made by this tool"
    out.fail(
        f"AMI name {name} is taken by {owner} ({whose}), so no backup was made: "
        "NAME_FORMAT must give each run its own name"
    )


ALL_CREATED: Any = object()  # what create_all queues after the last outcome


class PollSchedule:
    """When to poll the new images.

    While images are still being created (a large run, paced by EC2's buckets):
    after POLL_WHILE_CREATING_FIRST_SECONDS, then every POLL_MAX_SECONDS, so
    pruning starts early. Once all are created: after POLL_FIRST_SECONDS,
    backing off to POLL_MAX_SECONDS.
    """

    def __init__(self) -> None:
        self.delay = polling.POLL_MAX_SECONDS
        self.next_at = time.monotonic() + polling.POLL_WHILE_CREATING_FIRST_SECONDS
        self.creating = True

    def created_all(self) -> None:
        """All images are created: poll soon, then back off."""
        self.creating = False
        self.delay = polling.POLL_FIRST_SECONDS
        self.next_at = min(self.next_at, time.monotonic() + polling.POLL_FIRST_SECONDS)

    def seconds_left(self) -> float:
        """Seconds until the next poll is due."""
        return max(0.0, self.next_at - time.monotonic())

    def polled(self) -> None:
        """A poll starts now: schedule the next one."""
        if not self.creating:
            self.delay = min(self.delay * polling.POLL_FACTOR, polling.POLL_MAX_SECONDS)
        self.next_at = time.monotonic() + self.delay


def follow_up(
    ec2: Any, created: queue.Queue, config: BackupConfig, settle: Any, pending_ok: bool = False
) -> None:
    """Verify each new image as it is created, with few polls, and settle each server once.

    A server is settled (handed to `settle`) when its image is available or
    failed, when its backup failed, or at the timeout; without WAIT, as soon
    as its image is created. `created` yields outcomes, then ALL_CREATED.
    With pending_ok (copies), an image still pending at the timeout is left
    to finish, with a warning, instead of failing its server.
    """
    waiting: dict[str, Outcome] = {}
    schedule, deadline = PollSchedule(), None
    while schedule.creating or waiting:
        try:
            out = created.get(timeout=schedule.seconds_left() if waiting else None)
        except queue.Empty:
            out = None
        if out is ALL_CREATED:
            schedule.created_all()
            deadline = time.monotonic() + config.wait_timeout_minutes * 60
        elif out is not None and out.image_id and not out.error and config.wait:
            waiting[out.image_id] = out
        elif out is not None:
            settle(out)
        if waiting and schedule.seconds_left() == 0:
            schedule.polled()
            poll_once(ec2, waiting, settle)
        if deadline is not None and waiting and time.monotonic() >= deadline:
            time_out(waiting, config.wait_timeout_minutes, settle, pending_ok)


def time_out(waiting: dict[str, Outcome], minutes: float, settle: Any, pending_ok: bool) -> None:
    """Fail (or with pending_ok, leave) every image still pending at the deadline."""
    for image_id in list(waiting):
        out = waiting.pop(image_id)
        message = f"image {image_id} still pending after {minutes:g} minutes"
        if pending_ok:
            out.warn(f"{message}; left to finish, the next run counts it")
        else:
            out.fail(message)
        settle(out)


def poll_once(ec2: Any, waiting: dict[str, Outcome], settle: Any) -> None:
    """One DescribeImages for all waiting images; settle those that are done."""
    try:
        images = describe_run_images(ec2, sorted({o.run_id for o in waiting.values()}))
    except AWS_ERRORS as err:  # the next poll, or the timeout, decides
        log.warning("could not poll %d new image(s): %s", len(waiting), error_text(err))
        return
    for image_id in list(waiting):
        if settle_image(waiting[image_id], images.get(image_id)):
            settle(waiting.pop(image_id))


def describe_run_images(ec2: Any, run_ids: list[str]) -> dict[str, Image]:
    """This run's images, found by their run tag: one call however many servers."""
    filters = [
        {"Name": f"tag:{TAG_MANAGED}", "Values": [TOOL]},
        {"Name": f"tag:{TAG_RUN}", "Values": run_ids},
    ]
    images: dict[str, Image] = {}
    for raw in paginate(ec2, "describe_images", "Images", Owners=["self"], Filters=filters):
        image = to_image(raw)
        images[image.image_id] = image
    return images


def settle_image(out: Outcome, image: Image | None) -> bool:
    """Record one polled image in its outcome; return whether it is settled."""
    if image is None:
        out.missed_polls += 1
        if out.missing_since is None:
            out.missing_since = time.monotonic()
        late = time.monotonic() - out.missing_since < polling.MISSED_GRACE_SECONDS
        if out.image is None and (out.missed_polls < polling.MISSED_POLLS_MAX or late):
            return False  # not visible yet: EC2 is eventually consistent
        seen = "while pending" if out.image else "before it was ever seen"
        out.fail(f"image {out.image_id} disappeared {seen} (deregistered by someone else?)")
        return True
    out.missed_polls, out.missing_since = 0, None
    out.image = image
    if image.state == PENDING:
        return False
    if image.state != AVAILABLE:
        reason = image.reason or "no reason given"
        out.fail(f"image {image.image_id} ended in state {image.state}: {reason}")
    return True


def deregister(ec2: Any, image: Image, out: Outcome) -> set[str]:
    """Deregister one image and delete its snapshots, so none is orphaned; return those
    deleted (or kept for another image that uses them).

    An image that is already gone counts as deregistered; its snapshots are
    still deleted here, or by the sweep at the end of the run.
    """
    settled: set[str] = set()
    if image.protected:  # DEREGISTRATION_PROTECTION (or someone) set it: retention lifts it
        ec2.disable_image_deregistration_protection(ImageId=image.image_id)
        log.info("%s: disabled the deregistration protection of %s", out.name, image.image_id)
    if image.shared_with:
        revoke_sharing(ec2, image, image.shared_with)
    try:
        response = ec2.deregister_image(ImageId=image.image_id, DeleteAssociatedSnapshots=True)
    except ClientError as err:
        if err.response["Error"]["Code"] not in ERRS_IMAGE_GONE:
            raise
        log.info("%s: %s was already deregistered", out.name, image.image_id)
        response = {}
    results = {r["SnapshotId"]: r["ReturnCode"] for r in response.get("DeleteSnapshotResults", [])}
    for snapshot_id in image.snapshot_ids:
        code = results.get(snapshot_id)
        if code == SNAPSHOT_DELETED:
            settled.add(snapshot_id)
            continue
        if code == SNAPSHOT_SKIPPED:
            out.warn(f"snapshot {snapshot_id} of {image.image_id} kept: in use")
            settled.add(snapshot_id)
            continue
        if code == SNAPSHOT_NO_PERMISSION:  # a DeleteSnapshot would be refused too
            out.warn(
                f"image {image.image_id} is deregistered, but its snapshot {snapshot_id} stays: "
                "this role may not delete it (ec2:DeleteSnapshot on snapshots carrying the "
                f"{TAG_MANAGED} tag: see --print-iam-policy)"
            )
            continue
        try:
            delete_snapshot(ec2, snapshot_id, image.image_id, out)
            settled.add(snapshot_id)
        except AWS_ERRORS as err:
            out.warn(
                f"image {image.image_id} is deregistered, but its snapshot {snapshot_id} stays: "
                f"{error_text(err)}; the sweep at the end of the run (or the next run) retries"
            )
    return settled


def protection_hold(image: Image, ours: bool) -> str | None:
    """Why retention must keep an image it would prune, or None. This tool lifts only the
    protection it sets (DEREGISTRATION_PROTECTION, without a cooldown: ours); one that
    someone else chose stays until they lift it and any cooldown passes."""
    if image.protection == "enabled-with-cooldown":
        return "has deregistration protection with a cooldown, set outside this tool"
    if image.protection.startswith("disabled-until"):
        return f"is in its deregistration protection's cooldown ({image.protection})"
    if image.protected and not ours:
        return "is protected from deregistration, which this config does not set"
    return None


def delete_snapshot(ec2: Any, snapshot_id: str, image_id: str, out: Outcome) -> None:
    """Delete a snapshot that DeregisterImage left behind; in use is only a warning."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as err:
        code = err.response["Error"]["Code"]
        if code == ERR_SNAPSHOT_NOT_FOUND:
            return
        if code != ERR_SNAPSHOT_IN_USE:
            raise
        out.warn(f"snapshot {snapshot_id} of {image_id} kept: in use")


def prune(
    ec2: Any, doomed: list[tuple[Image, str]], out: Outcome, journal: Journal, protect: bool
) -> None:
    """Deregister the planned images of one server, each written in the journal first (see
    ec2ami.backup.journal); an error fails that server."""
    region = str(ec2.meta.region_name)
    for image, reason in doomed:
        try:
            held = protection_hold(image, protect)
            if held:
                out.warn(f"{image.image_id} is due for pruning but kept: it {held}")
                continue
            journal.record(region, image.image_id, image.snapshot_ids)
            journal.strike(region, deregister(ec2, image, out))
        except AWS_ERRORS as err:
            out.fail(f"could not deregister {image.image_id}: {error_text(err)}")
            return
        out.pruned_image(image.image_id)
        log.info("%s: deregistered %s (%s): %s", out.name, image.image_id, image.name, reason)


def revoke_sharing(ec2: Any, image: Image, accounts: set[str]) -> None:
    """Take back the launch and create-volume permissions the tool granted to accounts."""
    users = sorted(accounts)
    if image.state != DISABLED:  # DisableImage took its launch permissions already
        ec2.modify_image_attribute(
            ImageId=image.image_id, LaunchPermission={"Remove": [{"UserId": u} for u in users]}
        )
    for snapshot_id in image.snapshot_ids:
        ec2.modify_snapshot_attribute(
            SnapshotId=snapshot_id, Attribute="createVolumePermission",
            OperationType="remove", UserIds=users,
        )  # fmt: skip
