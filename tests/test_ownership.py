"""Ownership from what EC2 records: no tag that someone else can write makes the backup
count, order, or delete anything (ec2ami/backup/ownership.py, the sweep's evidence)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from ec2ami import clock
from localaws.endpoint import SETTINGS, finish_pending
from localaws.fleet import launch
from tests.conftest import (
    REGION,
    all_snapshots,
    backup_config,
    documented,
    managed,
    orphaned_managed_snapshots,
    run,
    tags_of,
    write_config,
)

CREATED = "ec2-to-ami:created"


def real_backups(ec2: Any, server: str, instance_id: str) -> list[str]:
    """The server's backups that EC2 says were made from its instance, oldest first."""
    images = [i for i in managed(ec2, server) if i.get("SourceInstanceId") == instance_id]
    return [i["ImageId"] for i in sorted(images, key=lambda i: i["CreationDate"])]


def forge(ec2: Any, source: dict, instance_id: str, name: str, **changes: str) -> str:
    """An insider's own image of their own instance, wearing every tag of a real backup."""
    image_id = ec2.create_image(InstanceId=instance_id, Name=name)["ImageId"]
    tags = {**tags_of(source), **changes}
    ec2.create_tags(Resources=[image_id], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    return image_id


def test_an_insiders_look_alikes_delete_nothing_real_and_are_reported(ec2, fleet, tmp_path):
    """The insider forges the whole contract on images of their own instance: one dated
    2099, one naming web01's own instance, one consistent with itself; and marks a
    snapshot of their own volume. KEEP holds, nothing of theirs or ours is wrongly
    deleted, and --check and --list say which images are not what they claim."""
    config = backup_config(tmp_path, fleet, KEEP=2)
    web = fleet.instances["web01"]
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    finish_pending()
    [real] = managed(ec2, "web01")
    insider = launch(ec2, fleet, "insider01")
    forged = [
        forge(ec2, real, insider, "f-future", **{CREATED: "2099-01-01T00:00:00Z"}),
        forge(ec2, real, insider, "f-named", **{"ec2-to-ami:instance-id": web}),
        forge(ec2, real, insider, "f-self", **{"ec2-to-ami:instance-id": insider}),
    ]
    volume = ec2.describe_instances(InstanceIds=[insider])["Reservations"][0]["Instances"][0][
        "BlockDeviceMappings"][0]["Ebs"]["VolumeId"]  # fmt: skip
    marked = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in
                                              tags_of(real).items()]}])["SnapshotId"]  # fmt: skip
    finish_pending()
    for _ in range(3):
        result = run("ec2_to_ami.py", config, "--server", "web01")
        assert result.returncode == 0, result.stderr
        finish_pending()
    for image_id in forged:
        assert f"image {image_id}" in result.stderr and "not its backup" in result.stderr
    assert len(real_backups(ec2, "web01", web)) == 2  # KEEP, of the real ones
    assert set(forged) <= {i["ImageId"] for i in managed(ec2, "web01")}
    assert marked in {s["SnapshotId"] for s in all_snapshots(ec2)}
    check = run("ec2_to_ami.py", config, "--check", "--json", "--server", "web01")
    document = documented(check, "backup-check")
    assert check.returncode == 1 and all(f in document["summary"] for f in forged)
    [fresh] = [b for b in document["backups"] if b["server"] == "web01"]
    assert fresh["status"] == "fresh" and 0 <= fresh["age_hours"] < 1
    listing = run("ec2_to_ami.py", config, "--list").stdout
    apart = listing.split("Not this pool's backups")[1]
    assert all(f in apart for f in forged)


def test_a_host_clock_that_ran_ahead_prunes_no_correct_backup(ec2, fleet, tmp_path, monkeypatch):
    config = backup_config(tmp_path, fleet, KEEP=2)
    web = fleet.instances["web01"]
    for _ in range(2):
        assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    ahead = datetime.now(timezone.utc) + timedelta(days=1)
    with monkeypatch.context() as patch:
        patch.setattr(clock, "utc_now", lambda: ahead)
        assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    soon = f"{datetime.now(timezone.utc) + timedelta(hours=12):%Y-%m-%dT%H:%M:%SZ}"
    [future] = [i["ImageId"] for i in managed(ec2, "web01") if tags_of(i)[CREATED] > soon]
    for _ in range(2):
        result = run("ec2_to_ami.py", config, "--server", "web01")
        assert result.returncode == 0
    assert f"image {future}" in result.stderr and "is after EC2's CreationDate" in result.stderr
    backups = real_backups(ec2, "web01", web)
    assert len(backups) == 3 and future in backups  # 2 by KEEP, and the suspect one, kept


def test_a_copy_made_by_hand_with_the_backups_tags_is_never_pruned(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [source] = managed(ec2, "web01")
    kept = ec2.copy_image(SourceImageId=source["ImageId"], SourceRegion=ec2.meta.region_name,
                          Name="web01-keep-forever", CopyImageTags=True)["ImageId"]  # fmt: skip
    finish_pending()
    for _ in range(2):
        result = run("ec2_to_ami.py", config, "--server", "web01")
        assert result.returncode == 0
    assert kept in {i["ImageId"] for i in managed(ec2, "web01")}
    assert "EC2 records no source instance for it" in result.stderr


def test_the_sweep_deletes_only_snapshots_facts_tie_to_the_pool(ec2, fleet, tmp_path):
    """A copy of our snapshot and a stranger's snapshot, both wearing our tags, stay;
    an orphan of our own deregistration (a volume of the server) goes."""
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [image] = managed(ec2, "web01")
    ours = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    tags = [{"Key": k, "Value": v} for k, v in tags_of(image).items()]
    copied = ec2.copy_snapshot(SourceSnapshotId=ours, SourceRegion=ec2.meta.region_name,
                               TagSpecifications=[{"ResourceType": "snapshot",
                                                   "Tags": tags}])["SnapshotId"]  # fmt: skip
    stranger = launch(ec2, fleet, "stranger01")
    volume = ec2.describe_instances(InstanceIds=[stranger])["Reservations"][0]["Instances"][0][
        "BlockDeviceMappings"][0]["Ebs"]["VolumeId"]  # fmt: skip
    theirs = ec2.create_snapshot(VolumeId=volume, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": tags}])["SnapshotId"]  # fmt: skip
    ec2.deregister_image(ImageId=image["ImageId"])  # by hand: our snapshots are orphaned
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 0
    left = {s["SnapshotId"] for s in all_snapshots(ec2)}
    assert ours not in left and {copied, theirs} <= left
    assert "no fact ties them to it" in result.stderr


def test_snapshots_of_an_image_in_the_recycle_bin_are_in_use(ec2, fleet, tmp_path):
    """With a Recycle Bin rule for images only, a deleted snapshot would be gone for good,
    and the binned image could never be restored."""
    SETTINGS.recycle_bin_days, SETTINGS.recycle_bin_images_only = 7, True
    config = backup_config(tmp_path, fleet, KEEP=3)
    for _ in range(2):
        assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    binned = sorted(managed(ec2, "web01"), key=lambda i: i["CreationDate"])[0]
    snapshots = {m["Ebs"]["SnapshotId"] for m in binned["BlockDeviceMappings"] if "Ebs" in m}
    ec2.deregister_image(ImageId=binned["ImageId"])  # into the bin, snapshots kept
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    assert snapshots <= {s["SnapshotId"] for s in all_snapshots(ec2)}
    listed = ec2.list_images_in_recycle_bin()["Images"]
    assert binned["ImageId"] in {i["ImageId"] for i in listed}


def test_a_protection_someone_else_set_is_never_lifted(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)  # DEREGISTRATION_PROTECTION off
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [protected] = managed(ec2, "web01")
    ec2.enable_image_deregistration_protection(ImageId=protected["ImageId"], WithCooldown=False)
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 0
    assert f"{protected['ImageId']} is due for pruning but kept" in result.stderr
    assert "which this config does not set" in result.stderr
    image = ec2.describe_images(ImageIds=[protected["ImageId"]])["Images"][0]
    assert image["DeregistrationProtection"].startswith("enabled")


def test_a_created_tag_without_a_zone_is_reported_not_a_traceback(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [image] = managed(ec2, "web01")
    ec2.create_tags(
        Resources=[image["ImageId"]], Tags=[{"Key": CREATED, "Value": "2026-12-01T00:00:00"}]
    )
    for args in ([], ["--check"], ["--cost"], ["--list"]):
        result = run("ec2_to_ami.py", config, "--server", "web01", *args)
        assert "Traceback" not in result.stderr and result.returncode in (0, 1), args
    assert image["ImageId"] in {i["ImageId"] for i in managed(ec2, "web01")}
    assert orphaned_managed_snapshots(ec2) == []


def test_images_from_before_ownership_are_trusted_only_before_trust_tags_before(
    ec2, fleet, tmp_path
):
    """An image EC2 recorded no source instance for (RegisterImage here, as for AMIs made
    before EC2 reported SourceInstanceId) is kept; TRUST_TAGS_BEFORE lets retention have it."""
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [made] = managed(ec2, "web01")
    old = ec2.register_image(
        Name="web01-legacy",
        RootDeviceName="/dev/sda1",
        BlockDeviceMappings=made["BlockDeviceMappings"][:1],
    )["ImageId"]
    ec2.create_tags(Resources=[old], Tags=[{"Key": k, "Value": v}
                                           for k, v in tags_of(made).items()])  # fmt: skip
    finish_pending()
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    assert old in {i["ImageId"] for i in managed(ec2, "web01")}
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    trusting = backup_config(tmp_path, fleet, KEEP=1, TRUST_TAGS_BEFORE=f"{later:%Y-%m-%dT%H:%MZ}")
    assert run("ec2_to_ami.py", trusting, "--server", "web01").returncode == 0
    assert old not in {i["ImageId"] for i in managed(ec2, "web01")}


PARTNER = "210987654321"


def launch_permitted(ec2: Any, image_id: str) -> set[str]:
    attribute = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    return {p["UserId"] for p in attribute["LaunchPermissions"] if "UserId" in p}


def test_a_share_cut_short_is_taken_back_when_the_account_is_removed(
    ec2, fleet, tmp_path, endpoint
):
    """The image is granted and its snapshots are not when the run stops: the tag, written
    before the grants, still names the account, so a config without it takes access back."""
    config = backup_config(tmp_path, fleet, KEEP=3, SHARE_WITH_ACCOUNTS=[PARTNER])
    endpoint.inject("ModifySnapshotAttribute", "InternalError", status=500, times=100)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 1
    [image] = managed(ec2, "web01")
    assert launch_permitted(ec2, image["ImageId"]) == {PARTNER}
    endpoint.faults.clear()
    unshared = backup_config(tmp_path, fleet, KEEP=3)
    assert run("ec2_to_ami.py", unshared, "--server", "web01").returncode == 0
    assert all(not launch_permitted(ec2, i["ImageId"]) for i in managed(ec2, "web01"))


def test_a_share_cut_short_is_finished_by_the_next_run(ec2, fleet, tmp_path, endpoint):
    config = backup_config(tmp_path, fleet, KEEP=3, SHARE_WITH_ACCOUNTS=[PARTNER])
    endpoint.inject("ModifySnapshotAttribute", "InternalError", status=500, times=100)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 1
    endpoint.faults.clear()
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    for image in managed(ec2, "web01"):
        snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        volume = ec2.describe_snapshot_attribute(SnapshotId=snapshot,
                                                 Attribute="createVolumePermission")  # fmt: skip
        assert {p["UserId"] for p in volume["CreateVolumePermissions"]} == {PARTNER}
        assert not tags_of(image)["ec2-to-ami:shared-with"].endswith(";pending")


def test_an_image_still_used_by_a_launch_template_is_kept_and_named(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [base] = managed(ec2, "web01")
    template = ec2.create_launch_template(
        LaunchTemplateName="web-fleet", LaunchTemplateData={"ImageId": base["ImageId"]}
    )
    dry = run("ec2_to_ami.py", config, "--server", "web01", "--dry-run")
    assert f"Would keep {base['ImageId']}" in dry.stdout and "ec2:LaunchTemplate" in dry.stdout
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 0
    assert f"{base['ImageId']} in {REGION} is due for pruning but kept" in result.stderr
    assert template["LaunchTemplate"]["LaunchTemplateId"] in result.stderr
    assert base["ImageId"] in {i["ImageId"] for i in managed(ec2, "web01")}
    ignoring = backup_config(tmp_path, fleet, KEEP=1, CHECK_IMAGE_REFERENCES=False)
    assert run("ec2_to_ami.py", ignoring, "--server", "web01").returncode == 0
    assert base["ImageId"] not in {i["ImageId"] for i in managed(ec2, "web01")}


def test_a_restore_never_picks_a_look_alike_that_ec2_contradicts(ec2, fleet, tmp_path):
    """The forged images claim to be web01's newest backup; EC2 says otherwise (made from
    the insider's instance, or dated before its created tag), so the restore takes the
    real one, and names each forgery."""
    web = fleet.instances["web01"]
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet), "--server", "web01").returncode == 0
    finish_pending()
    [real] = managed(ec2, "web01")
    insider = launch(ec2, fleet, "insider01")
    forged = [
        forge(ec2, real, insider, "f-future", **{CREATED: "2099-01-01T00:00:00Z"}),
        forge(ec2, real, insider, "f-named", **{CREATED: "2098-01-01T00:00:00Z",
                                                "ec2-to-ami:instance-id": web}),
        forge(ec2, real, web, "f-dated", **{CREATED: "2097-01-01T00:00:00Z"}),
    ]  # fmt: skip
    finish_pending()
    result = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="web01"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"from {real['ImageId']} (server web01" in result.stdout
    for image_id in forged:
        assert f"image {image_id} carries the backup tags of server 'web01'" in result.stderr
