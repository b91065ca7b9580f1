"""The plan, pure: retention (which images each server keeps) and what the run will create
and remove. No AWS call here, so the dry run prints exactly what the run does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ec2ami.backup.naming import render_name
from ec2ami.backup.tags import VSS_TAG_ROOM, backup_tags, contract_tags, instance_tags, launch_tags
from ec2ami.contract import MAX_TAGS, TAG_SHARED_WITH, TAG_SOURCE_REGION
from ec2ami.facts import AVAILABLE, DISABLED, FAILED, PROTECTION_OFF

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig, ServerSpec
    from ec2ami.backup.dr import Region
    from ec2ami.backup.look import Outcome, Server


SHARE_PENDING = ";pending"  # on TAG_SHARED_WITH: granted or revoked, not yet confirmed


@dataclass
class Image:
    """A managed image as DescribeImages reports it: what its tags claim, and the facts
    EC2 records that no user can set.

    `created` is CreationDate, which orders and ages backups (a copy's is the time of the
    copy); `claimed` is what the created tag says, only ever checked against it.
    """

    image_id: str
    name: str
    state: str
    created: datetime
    server: str
    schedule: str
    instance_id: str = ""
    snapshot_ids: list[str] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # device name -> snapshot id
    reason: str = ""  # StateReason, for a failed image
    tags: dict[str, str] = field(default_factory=dict)
    encrypted: bool = False
    deprecation_time: str | None = None
    pool: str = ""  # "" for an image made before pools were recorded
    protection: str = PROTECTION_OFF  # DeregistrationProtection
    claimed: datetime | None = None  # the created tag; None if missing or unreadable
    source_instance_id: str = ""  # EC2's SourceInstanceId: CreateImage's instance
    source_image_id: str = ""  # EC2's SourceImageId: a copy's source
    source_image_region: str = ""  # EC2's SourceImageRegion
    owner_id: str = ""

    @property
    def protected(self) -> bool:
        """Whether DeregisterImage is refused until protection is disabled."""
        return self.protection.startswith("enabled")

    @property
    def source_region(self) -> str | None:
        """The region this copy came from; None for an image made from an instance."""
        return self.tags.get(TAG_SOURCE_REGION)

    @property
    def shared_with(self) -> set[str]:
        """The accounts the tool shared this very image with, or (share_pending) may have:
        the tag is written before a grant, and confirmed after it."""
        image_id, _, accounts = self.tags.get(TAG_SHARED_WITH, "").partition(":")
        accounts = accounts.removesuffix(SHARE_PENDING)
        return set(accounts.split(",")) - {""} if image_id == self.image_id else set()

    @property
    def share_pending(self) -> bool:
        """Whether a change of sharing was begun and not confirmed (a run died in it)."""
        value = self.tags.get(TAG_SHARED_WITH, "")
        return value.startswith(f"{self.image_id}:") and value.endswith(SHARE_PENDING)


def plan_prune(
    images: list[Image], keep: int, max_age_days: float | None, now: datetime
) -> list[tuple[Image, str]]:
    """Return (image, reason) for each image of one server that retention removes.

    Failed images always go. Pending images never go. Of the complete ones
    (available, or disabled by someone: EnableImage brings them back) the newest
    `keep` stay; older ones go, and with max_age_days so does any but the newest
    that is older than that.
    """
    doomed = [(image, "state failed") for image in images if image.state == FAILED]
    available = sorted(
        (image for image in images if image.state in (AVAILABLE, DISABLED)),
        key=lambda image: (image.created, image.image_id),
        reverse=True,
    )
    cutoff = now - timedelta(days=max_age_days) if max_age_days is not None else None
    for rank, image in enumerate(available):
        if rank >= keep:
            doomed.append((image, f"beyond KEEP={keep}"))
        elif rank > 0 and cutoff is not None and image.created < cutoff:
            doomed.append((image, f"older than MAX_AGE_DAYS={max_age_days:g}"))
    return doomed


@dataclass(frozen=True)
class Prune:
    """One image retention removes: once the run's new image (or copy) is verified, or at
    once, whatever the run makes, for an image that failed and can never be restored."""

    image: Image
    reason: str
    once_verified: bool = True


def due(prunes: list[Prune], verified: bool) -> list[Prune]:
    """What of a server's planned prunes its run carries out, given the one fact the plan
    cannot know: whether the new image (or copy) was verified."""
    return [p for p in prunes if verified or not p.once_verified]


@dataclass
class ServerPlan:
    """What a run will do for one server, decided before it acts."""

    server: Server
    name: str  # the new image's AMI name
    tags: list[dict[str, str]]  # set at creation on the image and its snapshots
    dropped_tags: list[str]  # instance tag keys left out by EC2's 50-tag limit
    prunes: list[Prune]  # deregistered here (see Prune for when)
    copy_prunes: dict[str, list[Prune]]  # per region
    deprecate_at: datetime | None  # DEPRECATE_AFTER_DAYS after the run starts
    # Images retention would remove, kept: (region, image, why), e.g. still referenced.
    held: list[tuple[str, Image, str]] = field(default_factory=list)

    @property
    def spec(self) -> ServerSpec:
        """The server as the config names it."""
        return self.server.spec


@dataclass
class BackupPlan:
    """The whole run, planned: printed by --dry-run, carried out by the run."""

    servers: list[ServerPlan]
    failures: list[Outcome]  # servers that fail before anything is made
    prune: bool  # False with --no-prune: nothing is deregistered or swept
    run_id: str  # TAG_RUN on every image the run makes
    share_with: frozenset[str]  # each new image and copy is shared with exactly these
    deprecate_after_days: float | None
    protect: bool  # DEREGISTRATION_PROTECTION on each new image and copy


def plan_backup(
    config: BackupConfig, servers: list[Server], failures: list[Outcome], natives: list[Image],
    regions: list[Region], copies: dict[str, list[Image]], now: datetime, prune: bool,
    run_id: str,
) -> BackupPlan:  # fmt: skip
    """Plan each server's new image (name, tags, deprecation), and what retention removes
    once it (and each copy) stands, here and in each COPY_TO_REGIONS region. Pure: no AWS
    call."""
    days = config.deprecate_after_days
    plans = []
    for server in servers:
        spec = server.spec
        name = render_name(config.name_format, spec, config.schedule, now)
        tags, dropped = planned_tags(server, config, now, run_id)
        prunes = prunes_after(natives, name, spec.keep, config, now, spec) if prune else []
        copy_prunes = {
            r.name: prunes_after(copies[r.name], name, r.keep or spec.keep, config, now, spec)
            if prune else []
            for r in regions
        }  # fmt: skip
        deprecate_at = now + timedelta(days=days) if days else None
        plans.append(ServerPlan(server, name, tags, dropped, prunes, copy_prunes, deprecate_at))
    accounts = frozenset(config.share_with_accounts)
    return BackupPlan(
        plans, failures, prune, run_id, accounts, days, config.deregistration_protection
    )


def keep_referenced(
    plan: BackupPlan, home: str, referenced: Mapping[str, Mapping[str, str]]
) -> BackupPlan:
    """The plan without the prunes of images something still uses (region -> image id ->
    what): a launch template, an instance, an SSM parameter. Each is held, and reported."""
    for server in plan.servers:
        for region, prunes in [(home, server.prunes), *server.copy_prunes.items()]:
            users = referenced.get(region, {})
            server.held += [(region, p.image, users[p.image.image_id])
                            for p in prunes if p.image.image_id in users]  # fmt: skip
            prunes[:] = [p for p in prunes if p.image.image_id not in users]
    return plan


def planned_tags(
    server: Server, config: BackupConfig, now: datetime, run_id: str
) -> tuple[list[dict[str, str]], list[str]]:
    """A new image's tags, and the instance tags that do not fit. Room is left for what
    copies and sharing add, and for the VSS document's own tags."""
    spec = server.spec
    fixed = contract_tags(spec, config, now, run_id, server.instance, server.eip)
    fixed += launch_tags(spec, server.launch)
    copied = instance_tags(server.instance, config.select_tags) if config.copy_instance_tags else []
    room = 2 * bool(config.copy_to_regions) + bool(config.share_with_accounts)
    room += VSS_TAG_ROOM if spec.consistency == "vss" else 0
    return backup_tags(fixed, {**config.tags, **spec.tags}, copied, limit=MAX_TAGS - room)


def prunes_after(
    images: list[Image], name: str, keep: int, config: BackupConfig, now: datetime, spec: ServerSpec
) -> list[Prune]:
    """What retention removes of a server's existing images once a new one is available;
    its failed images go whether or not the new one is. Without WAIT, the new image is not
    seen through: retention keeps KEEP of the images there are, and prunes at once."""
    mine = [i for i in images if i.server == spec.name]
    if not config.wait:  # this run never sees its image verified: keep KEEP of the others
        doomed = plan_prune(mine, keep, config.max_age_days, now)
        return [Prune(image, reason, once_verified=False) for image, reason in doomed]
    assumed = Image("(new)", name, AVAILABLE, now, spec.name, config.schedule)
    doomed = plan_prune([*mine, assumed], keep, config.max_age_days, now)
    return [
        Prune(image, reason, once_verified=image.state != FAILED)
        for image, reason in doomed
        if image is not assumed
    ]
