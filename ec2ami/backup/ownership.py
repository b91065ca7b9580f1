"""Ownership: which marked images a pool made, decided by what EC2 records, not by tags.

Anyone who may call CreateTags can write this tool's tags on images and snapshots of their
own. So an image counts in a pool, and retention may remove it, only when EC2's own facts
(DescribeImages: SourceInstanceId, SourceImageId, SourceImageRegion, CreationDate) agree
with what its tags claim:

- an image made by CreateImage: its SourceInstanceId is the instance its tags name, and
  that instance is the server's: its instance now, the one a restore launched it from
  (the restore tags the new instance with the image), or one ADOPT_INSTANCES names;
- a copy in another region: its SourceImageRegion is the region backed up, and its
  SourceImageId one of the pool's own images there; once that source is gone, a copy
  counts if its tags name an instance of the server (the tag guard covers the rest);
- in both cases, its created tag is no later than its CreationDate (a run starts before
  its CreateImage; SigV4 refuses a host clock more than 5 minutes off).

Every other image that carries the marker and claims a server of this pool is "not
ours": named in a warning and by --list, never counted, never pruned. Images made before
EC2 recorded SourceInstanceId are trusted by their tags only if TRUST_TAGS_BEFORE says so.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ec2ami.aws import chunked, paginate
from ec2ami.backup.look import Outcome, managed_images
from ec2ami.contract import TAG_KEEP, TAG_RESTORED_FROM
from ec2ami.facts import CLOCK_SKEW

if TYPE_CHECKING:
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.dr import Region
    from ec2ami.backup.look import Server
    from ec2ami.backup.plan import Image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owners:
    """What decides, for one config in one region, whether a marked image is the pool's."""

    pool: str
    lineage: Mapping[str, frozenset[str]]  # server -> the instances whose backups are its
    trust_tags_before: datetime | None = None  # TRUST_TAGS_BEFORE

    def claims(self, image: Image) -> bool:
        """Whether the image's tags say it is a backup of one of this pool's servers."""
        return image.server in self.lineage and image.pool in (self.pool, "")

    def native(self, image: Image) -> str | None:
        """Why an image in the region backed up is not this pool's; None if it is."""
        wrong = self._tags_problem(image)
        if wrong:
            return wrong
        made_from, ours = image.source_instance_id, self.lineage[image.server]
        if not made_from:
            return self._untraced(image, "EC2 records no source instance for it")
        if made_from != image.instance_id:
            return f"made from {made_from}, but its tags say {image.instance_id or 'nothing'}"
        if made_from not in ours:
            return (
                f"made from {made_from}, which is not {image.server}'s instance "
                f"({', '.join(sorted(ours))}) nor one it replaced; ADOPT_INSTANCES adopts it"
            )
        return None

    def copy(
        self, image: Image, source_region: str, sources: set[str], alive: set[str]
    ) -> str | None:
        """Why an image in a DR region is not one of this pool's copies; None if it is.

        sources: the pool's own images in source_region; alive: every image there now.
        """
        wrong = self._tags_problem(image)
        if wrong:
            return wrong
        if image.source_instance_id or image.source_image_region != source_region:
            return f"not a copy from {source_region}: EC2 records no such source for it"
        if image.source_image_id in sources:
            return None
        if image.source_image_id in alive:
            return f"copied from {image.source_image_id}, which is not this pool's"
        if image.instance_id not in self.lineage[image.server]:
            return f"copied from {image.source_image_id} (gone), of another instance"
        return None

    def _tags_problem(self, image: Image) -> str | None:
        """What makes the tags themselves untrustworthy, whatever the image is."""
        if image.claimed is None:
            return "its created tag is missing or not a time with a zone"
        if image.claimed > image.created + CLOCK_SKEW:
            return f"its created tag ({image.claimed:%Y-%m-%dT%H:%M:%SZ}) is after EC2's " + (
                f"CreationDate ({image.created:%Y-%m-%dT%H:%M:%SZ})"
            )
        return None

    def _untraced(self, image: Image, why: str) -> str | None:
        """An image without EC2's proof: trusted by its tags only under TRUST_TAGS_BEFORE."""
        before = self.trust_tags_before
        if before and image.created < before and image.instance_id in self.lineage[image.server]:
            return None
        return f"{why}; TRUST_TAGS_BEFORE can trust its tags if it predates this check"


def owners_of(
    config: BackupConfig, servers: list[Server], listed: list[Image],
    gone: Mapping[str, str] | None = None,
) -> Owners:  # fmt: skip
    """The Owners of this run: each server's lineage from what EC2 and the restore say;
    gone: servers whose listed instance is gone (for --check), by name."""
    by_id = {image.image_id: image for image in listed}
    lineage = {
        name: frozenset({instance_id, *config.adopt_instances.get(name, ())})
        for name, instance_id in (gone or {}).items()
    }
    for server in servers:
        spec = server.spec
        ids = {spec.instance_id, *config.adopt_instances.get(spec.name, ())}
        tags = {t["Key"]: t["Value"] for t in server.instance.get("Tags", [])}
        restored = by_id.get(tags.get(TAG_RESTORED_FROM, ""))
        if restored is not None and restored.source_instance_id and restored.server == spec.name:
            ids.add(restored.source_instance_id)
        lineage[spec.name] = frozenset(ids)
    return Owners(config.pool, lineage, config.trust_tags_before)


def split_natives(owners: Owners, listed: list[Image], region: str) -> tuple[list, list]:
    """The pool's own images made in this region, and those that claim to be but are not
    (image, why); images of other pools, servers or regions are neither."""
    ours, impostors = [], []
    for image in listed:
        if not owners.claims(image) or is_copy(image, region):
            continue
        why = owners.native(image)
        if why is None:
            ours.append(image)
        else:
            impostors.append((image, why))
    return ours, impostors


def is_copy(image: Image, region: str) -> bool:
    """Whether EC2 says the image was copied here from another region."""
    return not image.source_instance_id and image.source_image_region not in ("", region)


@dataclass
class Holdings:
    """What a pool holds, by EC2's facts: its images here, its copies in each DR region,
    and what only claims to be its (region, image, why)."""

    owners: Owners
    natives: list[Image]
    copies: dict[str, list[Image]] = field(default_factory=dict)
    impostors: list[tuple[str, Image, str]] = field(default_factory=list)

    def warn(self) -> None:
        """Name each image that claims to be this pool's but is not: kept, never counted."""
        for region, image, why in self.impostors:
            log.warning(
                "%s: image %s (%s) in %s carries this pool's tags but is not its backup: %s; "
                "it is not counted and never pruned",
                image.server, image.image_id, image.name, region, why,
            )  # fmt: skip


def find_holdings(
    ec2: Any, schedule: str, region: str, owners: Owners, listed: list[Image],
    regions: list[Region],
) -> Holdings:  # fmt: skip
    """Sort the pool's images here (listed) and in each DR region by EC2's facts: one
    DescribeImages per region, and one more for the sources of copies this one does not
    hold."""
    natives, impostors = split_natives(owners, listed, region)
    found = Holdings(owners, natives, impostors=[(region, i, why) for i, why in impostors])
    sources = {i.image_id for i in natives}
    for target in regions:
        claimed = [i for i in managed_images(target.ec2, schedule) if owners.claims(i)]
        claimed = [i for i in claimed if is_copy(i, target.name)]
        unknown = sorted({i.source_image_id for i in claimed} - sources)
        alive = visible_images(ec2, unknown)
        found.copies[target.name] = []
        for image in claimed:
            why = owners.copy(image, region, sources, alive)
            if why is None:
                found.copies[target.name].append(image)
            else:
                found.impostors.append((target.name, image, why))
    return found


def visible_images(ec2: Any, image_ids: list[str]) -> set[str]:
    """Which of these images exist now (ours or not): one call per 200 ids."""
    seen: set[str] = set()
    for batch in chunked(image_ids):
        filters = [{"Name": "image-id", "Values": batch}]
        for image in paginate(ec2, "describe_images", "Images", Filters=filters,
                              IncludeDisabled=True):  # fmt: skip
            seen.add(image["ImageId"])
    return seen


def split_keep_conflicts(
    config: BackupConfig, servers: list[Server], natives: list[Image], failures: list[Outcome]
) -> list[Server]:
    """Fail each server whose own backups another config keeps with another KEEP: two
    copies of one config (two hosts, two files) would cut each other's to the smaller."""
    clean = []
    for server in servers:
        spec = server.spec
        others = {
            tag for image in natives if image.server == spec.name
            for tag in [image.tags.get(TAG_KEEP, "")]
            if "@" in tag and tag.split("@")[1] != config.config_id
            and tag.split("@")[0] != str(spec.keep)
        }  # fmt: skip
        if not others:
            clean.append(server)
            continue
        kept = ", ".join(
            f"KEEP={t.split('@')[0]} (config {t.split('@')[1]})" for t in sorted(others)
        )
        failures.append(Outcome(spec.name, spec.instance_id, error=(
            f"another config keeps this instance's backups in pool {config.pool!r} with "
            f"{kept}, this one with KEEP={spec.keep} (config {config.config_id}): each would "
            "cut the other's to the smaller; give them different POOL settings"
        )))  # fmt: skip
    return clean
