"""Disaster recovery: the destination regions, the copies already there, and CopyImage
for one new backup.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ec2ami.aws import AWS_ERRORS, error_text
from ec2ami.backup.images import ALL_CREATED, description
from ec2ami.backup.look import Outcome, managed_images
from ec2ami.contract import TAG_SHARED_WITH, TAG_SOURCE_IMAGE, TAG_SOURCE_REGION, TOOL

if TYPE_CHECKING:
    from ec2ami.aws import Clients
    from ec2ami.backup.config import BackupConfig
    from ec2ami.backup.plan import Image

log = logging.getLogger(__name__)


@dataclass
class Region:
    """A destination region of COPY_TO_REGIONS."""

    name: str
    ec2: Any
    keep: int | None  # None: each server's own keep
    kms_key_id: str | None


def destination_regions(clients: Clients, config: BackupConfig) -> list[Region]:
    """COPY_TO_REGIONS with a paced EC2 client for each region."""
    return [
        Region(name, clients.client("ec2", name), target.keep, target.kms_key_id)
        for name, target in config.copy_to_regions.items()
    ]


def marked_copies(region: Region, source_region: str) -> list[Image]:
    """Every marked image in a region that EC2 says was copied from source_region, of any
    schedule or pool, for --list and --cost (which count, and delete nothing)."""
    return [
        i
        for i in managed_images(region.ec2, None)
        if i.source_image_region == source_region and not i.source_instance_id
    ]


def copy_backup(region: Region, source_region: str, out: Outcome) -> Outcome:
    """Start CopyImage of a server's new image into a region; return the copy's outcome.

    The copy carries the source's tags (CopyImageTags) plus where it came from, and
    its snapshots get the same tags at creation. The ClientToken makes a retried
    call return the same copy.
    """
    image = out.image
    if image is None:  # only an available backup is copied
        raise RuntimeError(f"{out.name}: no image to copy")
    copy = Outcome(out.name, out.instance_id, run_id=out.run_id, region=region.name)
    origin = [
        {"Key": TAG_SOURCE_REGION, "Value": source_region},
        {"Key": TAG_SOURCE_IMAGE, "Value": image.image_id},
    ]
    inherited = [
        {"Key": k, "Value": v}
        for k, v in image.tags.items()
        if k != TAG_SHARED_WITH and not k.lower().startswith("aws:")
    ]
    params: dict[str, Any] = {
        "SourceImageId": image.image_id,
        "SourceRegion": source_region,
        "Name": image.name,
        "Description": description(
            f"{TOOL} copy of {image.image_id} ({out.name}) from {source_region}"
        ),
        "CopyImageTags": True,
        "ClientToken": f"{TOOL}-{image.image_id}-{region.name}",
        "TagSpecifications": [
            {"ResourceType": "image", "Tags": origin},
            {"ResourceType": "snapshot", "Tags": inherited + origin},
        ],
    }
    if region.kms_key_id:
        params.update(Encrypted=True, KmsKeyId=region.kms_key_id)
    try:
        copy.made(region.ec2.copy_image(**params)["ImageId"])
        log.info("%s: copying %s to %s as %s", out.name, image.image_id, region.name, copy.image_id)
    except AWS_ERRORS as err:
        copy.fail(f"copy of {image.image_id} failed: {error_text(err)}")
    return copy


def copy_all(
    region: Region, source_region: str, inbox: queue.Queue, created: queue.Queue,
    copies: list[Outcome],
) -> None:  # fmt: skip
    """Copy each available new backup into a region as it arrives; queue each copy."""
    try:
        while (out := inbox.get()) is not None:
            try:
                copy = copy_backup(region, source_region, out)
            except Exception as err:  # a bug must not hide a copy: report it as failed
                log.debug("%s: unexpected error", out.name, exc_info=True)
                copy = Outcome(out.name, out.instance_id, region=region.name)
                copy.fail(f"copy failed: unexpected {type(err).__name__}: {err}")
            copies.append(copy)
            created.put(copy)
    finally:
        created.put(ALL_CREATED)
