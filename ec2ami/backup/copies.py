"""Carrying out the DR part of the plan: copy each new image to the COPY_TO_REGIONS as it
becomes available (Replication), then share, deprecate and prune there (Finisher).
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.backup.dr import copy_all
from ec2ami.backup.housekeeping import Housekeeping, HousekeepingThread
from ec2ami.backup.images import follow_up, revoke_sharing
from ec2ami.backup.plan import SHARE_PENDING
from ec2ami.backup.tags import stamp
from ec2ami.contract import TAG_SHARED_WITH
from ec2ami.facts import AVAILABLE, DEPRECATE_LEAD, KEY_MANAGER_AWS

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.dr import Region
    from ec2ami.backup.journal import Journal
    from ec2ami.backup.look import Outcome
    from ec2ami.backup.plan import BackupPlan, Image

log = logging.getLogger(__name__)


class Replication:
    """Copies each new backup to COPY_TO_REGIONS, and keeps each region's copies.

    Per region, three threads: one starts copies as backups become available, one
    polls them (one DescribeImages a poll for all of that region's copies), and one
    shares, deprecates and prunes a server's copies once its new copy has settled.
    A copy that fails leaves that region's copies of that server unpruned.
    """

    def __init__(self, clients: Clients, regions: list[Region], config: BackupConfig,
                 existing: dict[str, list[Image]], plan: BackupPlan,
                 journal: Journal) -> None:  # fmt: skip
        self.copies: list[Outcome] = []
        self.errors: list[str] = []
        self.lanes: list[tuple[queue.Queue, threading.Thread, HousekeepingThread]] = []
        for region in regions:
            inbox: queue.Queue = queue.Queue()
            created: queue.Queue = queue.Queue()
            finisher = Finisher(clients, region.name, plan)
            planned = {p.spec.name: p.copy_prunes[region.name] for p in plan.servers}
            care = Housekeeping(
                region.ec2, finisher, existing[region.name], planned, plan.prune, journal
            )
            worker = HousekeepingThread(care)
            args = (region, clients.region, inbox, created, self.copies)
            threading.Thread(target=copy_all, args=args, daemon=True).start()
            follower = threading.Thread(
                target=self._follow, args=(region, created, config, worker), daemon=True
            )
            follower.start()
            self.lanes.append((inbox, follower, worker))

    def _follow(
        self, region: Region, created: queue.Queue, config: BackupConfig, worker: HousekeepingThread
    ) -> None:
        try:
            follow_up(region.ec2, created, config, worker.submit, pending_ok=True)
        except Exception as err:  # a bug must not pass for success
            log.debug("following copies in %s", region.name, exc_info=True)
            self.errors.append(
                f"{region.name}: following copies failed: {type(err).__name__}: {err}"
            )

    def submit(self, out: Outcome) -> None:
        """Copy a server's new backup, if it is available."""
        if not out.error and out.image is not None and out.image.state == AVAILABLE:
            for inbox, _, _ in self.lanes:
                inbox.put(out)

    def finish(self) -> list[Outcome]:
        """No more backups: wait for every copy to settle and every region to be pruned."""
        for inbox, _, _ in self.lanes:
            inbox.put(None)
        for _, follower, worker in self.lanes:
            follower.join()
            worker.finish()
        return sorted(self.copies, key=lambda c: (c.name, c.region or ""))


class Finisher:
    """Shares and deprecates one region's available images as the config asks.

    Each image records whom the tool shared it with (TAG_SHARED_WITH), so a later
    run finishes images a run left pending, and follows SHARE_WITH_ACCOUNTS as it
    changes: accounts added are granted, accounts removed are revoked.
    """

    def __init__(self, clients: Clients, region: str | None, plan: BackupPlan) -> None:
        self.clients, self.region = clients, region
        self.ec2 = clients.client("ec2", region)
        self.accounts = set(plan.share_with)
        self.days = plan.deprecate_after_days
        self.protect = plan.protect
        self.key_managers: dict[str, str] = {}
        self.unblocked: list[str] | None = None  # what block public access leaves open

    def finish(self, images: list[Image], out: Outcome) -> None:
        """Deprecate and share each image that needs it; a failure is reported, not fatal."""
        where = f" in {self.region}" if self.region else ""
        for image in images:
            try:
                if self.days and not image.deprecation_time:
                    self.deprecate(image)
                if self.protect and not image.protected:
                    self.ec2.enable_image_deregistration_protection(
                        ImageId=image.image_id, WithCooldown=False
                    )  # without: retention may disable it and deregister at once
                    image.protection = "enabled-without-cooldown"
                if image.shared_with != self.accounts or image.share_pending:
                    self.share(image, out, where)
            except AWS_ERRORS as err:
                out.fail_late(
                    f"could not deprecate, protect or share {image.image_id}{where}: "
                    f"{error_text(err)}"
                )

    def deprecate(self, image: Image) -> None:
        """EnableImageDeprecation DEPRECATE_AFTER_DAYS after the image was made (its
        CreationDate: no tag can move it)."""
        when = max(
            image.created + timedelta(days=self.days or 0),
            datetime.now(timezone.utc) + DEPRECATE_LEAD,
        )
        self.ec2.enable_image_deprecation(ImageId=image.image_id, DeprecateAt=when)
        image.deprecation_time = stamp(when)
        log.info("%s: %s deprecates at %s", image.server, image.image_id, stamp(when))

    def share(self, image: Image, out: Outcome, where: str) -> None:
        """Grant and revoke launch and create-volume permissions to match SHARE_WITH_ACCOUNTS.

        The tag is written first, naming every account that may hold access once the grants
        are made (pending), then confirmed: a run killed in between leaves a tag that still
        names each account it granted, and the next run grants and revokes again.
        """
        add, remove = self.accounts - image.shared_with, image.shared_with - self.accounts
        if image.share_pending:
            add = set(self.accounts)  # granting again what is granted already changes nothing
        if add and image.encrypted and self.aws_managed_key(image):
            out.warn(
                f"{image.image_id}{where} is encrypted with the AWS-managed KMS key (aws/ebs), "
                f"which cannot be shared: not shared with {', '.join(sorted(add))}. Encrypt "
                "with a customer-managed key (COPY_TO_REGIONS kms_key_id) whose policy lets "
                "those accounts use it"
            )
            add = set()
        if add and self.public_access_open():
            out.fail_late(
                f"{image.image_id}{where} not shared with {', '.join(sorted(add))}: block "
                f"public access is off for {' and '.join(self.public_access_open())} here, "
                "so one grant of the group all would make a backup public; turn it on "
                "(docs/dr.md, Sharing) and the next run shares"
            )
            add = set()
        if add or remove:
            self.tag_shared(image, image.shared_with | add, pending=True)
        if add:
            grant = [{"UserId": account} for account in sorted(add)]
            self.ec2.modify_image_attribute(ImageId=image.image_id, LaunchPermission={"Add": grant})
            for snapshot_id in image.snapshot_ids:
                self.ec2.modify_snapshot_attribute(
                    SnapshotId=snapshot_id, Attribute="createVolumePermission",
                    OperationType="add", UserIds=sorted(add),
                )  # fmt: skip
        if remove:
            revoke_sharing(self.ec2, image, remove)
        if add or remove:
            shared = sorted((image.shared_with | add) - remove)
            self.tag_shared(image, set(shared), pending=False)
            log.info(
                "%s: %s%s shared with %s",
                out.name,
                image.image_id,
                where,
                ", ".join(shared) or "no account",
            )

    def public_access_open(self) -> list[str]:
        """What block public access leaves open in this region ("AMIs", "snapshots"),
        asked once: IAM cannot keep ModifyImageAttribute from making an image public, and
        the account setting can (GetImageBlockPublicAccessState, "block-new-sharing";
        GetSnapshotBlockPublicAccessState, "block-all-sharing" or "block-new-sharing")."""
        if self.unblocked is None:
            image = self.ec2.get_image_block_public_access_state()
            snapshot = self.ec2.get_snapshot_block_public_access_state()
            self.unblocked = [what for what, blocked in (
                ("AMIs", image.get("ImageBlockPublicAccessState") == "block-new-sharing"),
                ("snapshots", snapshot.get("State") in ("block-all-sharing",
                                                         "block-new-sharing")),
            ) if not blocked]  # fmt: skip
        return self.unblocked

    def tag_shared(self, image: Image, accounts: set[str], pending: bool) -> None:
        """Write TAG_SHARED_WITH: the accounts, and whether the grants are yet to be made."""
        value = f"{image.image_id}:{','.join(sorted(accounts))}{SHARE_PENDING if pending else ''}"
        self.ec2.create_tags(
            Resources=[image.image_id], Tags=[{"Key": TAG_SHARED_WITH, "Value": value}]
        )
        image.tags[TAG_SHARED_WITH] = value

    def aws_managed_key(self, image: Image) -> bool:
        """Whether a snapshot of the image is encrypted with an AWS-managed KMS key."""
        if not image.snapshot_ids:
            return False  # DescribeSnapshots without ids would list the whole account
        snapshots = self.ec2.describe_snapshots(SnapshotIds=image.snapshot_ids)["Snapshots"]
        kms = self.clients.client("kms", self.region)
        for key in {s["KmsKeyId"] for s in snapshots if s.get("KmsKeyId")}:
            if key not in self.key_managers:
                metadata = kms.describe_key(KeyId=key)["KeyMetadata"]
                self.key_managers[key] = metadata.get("KeyManager", "")
            if self.key_managers[key] == KEY_MANAGER_AWS:
                return True
        return False
