"""--cost: what the kept backups store, counted block by block with the EBS direct APIs
against volumes whose blocks the tests write between backups (harness patches P24-P26)."""

from __future__ import annotations

import random
from typing import Any

from localaws.endpoint import BLOCKS_PER_GIB, resize_volume, write_blocks
from localaws.fleet import launch
from tests.conftest import backup_config, documented, managed, run, tags_of, write_config

DR = "us-west-2"
BLOCK_GIB = 1 / 2048  # a 512 KiB block, in GiB
STANDARD, ARCHIVE = 0.05, 0.0125  # the default prices, USD per GiB-month


def volumes_of(ec2: Any, instance_id: str) -> dict[str, str]:
    """The instance's volumes by device name."""
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    mappings = reservations[0]["Instances"][0]["BlockDeviceMappings"]
    return {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in mappings}


def backup(config, *args: str) -> None:
    result = run("ec2_to_ami.py", config, "-q", *args)
    assert result.returncode == 0, result.stderr


def cost(config, *args: str) -> tuple[int, dict, str]:
    """Run --cost --json; return the exit code, the report and stderr."""
    result = run("ec2_to_ami.py", config, "--cost", "--json", *args)
    return result.returncode, documented(result, "backup-cost"), result.stderr


def row(report: dict, server: str, region: str = "us-east-1") -> dict:
    (found,) = [r for r in report["rows"] if r["server"] == server and r["region"] == region]
    return found


def by_age(images: list[dict]) -> list[dict]:
    """Images oldest first, by when their backup was taken."""
    return sorted(images, key=lambda image: tags_of(image)["ec2-to-ami:created"])


def one_server(tmp_path, fleet, name: str = "web01", **settings: Any):
    servers = [{"name": name, "instance_id": fleet.instances[name]}]
    return backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={}, **settings)


def test_cost_counts_exactly_what_a_week_of_two_percent_daily_change_stores(
    ec2, fleet, tmp_path, endpoint
):
    config = one_server(tmp_path, fleet, KEEP=7)
    root = volumes_of(ec2, fleet.instances["web01"])["/dev/sda1"]
    size = 8 * BLOCKS_PER_GIB  # moto's 8 GiB root volume
    rng = random.Random(2)
    write_blocks(root, range(12000))  # more than one page (10,000) of ListSnapshotBlocks
    backup(config)
    days = [rng.sample(range(size), size // 50) for _ in range(7)]  # 2 % of the blocks a day
    for changed in days:
        write_blocks(root, changed)
        backup(config)
    # KEEP=7 pruned the first backup: its blocks live on in the second, which holds all
    # it had plus the first day's changes; each later backup adds the blocks of its day.
    expected = len(set(range(12000)) | set(days[0])) + sum(len(d) for d in days[1:])
    endpoint.inject("ListChangedBlocks", "RequestThrottledException", 400)
    code, report, _ = cost(config)
    assert code == 0
    web = row(report, "web01")
    assert (web["backups"], web["volumes"], web["size_gib"]) == (7, 1, 8)
    assert web["stored_blocks"] == expected
    assert web["usd_per_month"] == round(expected * BLOCK_GIB * STANDARD, 2)
    assert report["total"]["usd_per_month"] == web["usd_per_month"]
    # The documented budget: the oldest snapshot's pages, then one call per later backup.
    assert endpoint.count("ListSnapshotBlocks", ok=True) == 2
    assert endpoint.count("ListChangedBlocks", ok=True) == 6


def test_cost_follows_two_volumes_one_grown_into_a_copy_in_the_dr_region(
    ec2, fleet, tmp_path, endpoint
):
    disks = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1}},
             {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 1}}]  # fmt: skip
    launch(ec2, fleet, "db01", BlockDeviceMappings=disks)
    config = one_server(tmp_path, fleet, "db01", KEEP=3, COPY_TO_REGIONS={DR: {}})
    volumes = volumes_of(ec2, fleet.instances["db01"])
    root, data = volumes["/dev/sda1"], volumes["/dev/sdf"]
    write_blocks(root, range(1000))
    write_blocks(data, range(2000))
    backup(config)
    resize_volume(data, 2)
    write_blocks(data, [*range(2048, 3048), *range(100)])  # the new half, and old blocks
    backup(config)
    write_blocks(root, range(50))
    backup(config)
    code, report, _ = cost(config)
    assert code == 0
    expected = (1000 + 50) + (2000 + 1100)
    for region in ("us-east-1", DR):
        db = row(report, "db01", region)
        assert (db["backups"], db["volumes"], db["size_gib"]) == (3, 2, 3), region
        assert db["stored_blocks"] == expected, region
    assert report["total"]["stored_gib"] == round(2 * expected * BLOCK_GIB, 3)


def test_cost_prices_an_archived_snapshot_apart_and_follows_shrinking_change(
    ec2, fleet, tmp_path, endpoint
):
    config = one_server(tmp_path, fleet)
    root = volumes_of(ec2, fleet.instances["web01"])["/dev/sda1"]
    write_blocks(root, range(4000))
    backup(config)
    for changed in (range(800), range(4000, 4400), range(100)):  # less change each day
        write_blocks(root, changed)
        backup(config, "--no-prune")
    oldest = by_age(managed(ec2, "web01"))[0]
    ec2.modify_snapshot_tier(
        SnapshotId=oldest["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"], StorageTier="archive"
    )
    code, report, _ = cost(config)
    assert code == 0
    web = row(report, "web01")
    assert web["backups"] == 4
    # Standard tier: the second backup whole (4,000 blocks), then 400 and 100 more. The
    # archived first backup is a full snapshot of its 4,000 blocks, at the archive price.
    assert web["stored_blocks"] == 4500
    assert web["archived_gib"] == round(4000 * BLOCK_GIB, 3)
    assert web["usd_per_month"] == round(
        4500 * BLOCK_GIB * STANDARD + 4000 * BLOCK_GIB * ARCHIVE, 2
    )


def test_cost_of_servers_without_backups_is_zero_and_the_table_says_what_it_counts(
    fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, SELECT_TAGS={})
    result = run("ec2_to_ami.py", config, "--cost")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVER", "SCHEDULE", "REGION", "POOL", "BACKUPS", "VOLUMES",
                                "SIZE", "GiB", "STORED", "GiB", "ARCHIVED", "GiB", "IN",
                                "BIN", "USD/MONTH"]  # fmt: skip
    assert [line.split()[:5] for line in lines[1:3]] == [
        ["app01", "daily", "us-east-1", "backup", "0"],
        ["web01", "daily", "us-east-1", "backup", "0"],
    ]  # fmt: skip
    assert lines[3].split() == ["TOTAL", "0", "0", "0.00", "0.00", "0", "0.00"]
    assert "An estimate" in result.stdout and "SNAPSHOT_PRICE_GB_MONTH" in result.stdout
    assert endpoint.count("ListSnapshotBlocks") == 0


def test_a_volume_that_cannot_be_measured_fails_the_report_naming_it_but_not_the_others(
    ec2, fleet, tmp_path, endpoint
):
    config = backup_config(tmp_path, fleet, SELECT_TAGS={}, SNAPSHOT_PRICE_GB_MONTH=0.06)
    roots = {
        name: volumes_of(ec2, fleet.instances[name])["/dev/sda1"] for name in ("web01", "app01")
    }
    for volume in roots.values():
        write_blocks(volume, range(300))
    backup(config)
    for volume in roots.values():
        write_blocks(volume, range(20))
    backup(config)
    newest = by_age(managed(ec2, "web01"))[-1]
    snapshot = newest["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    endpoint.inject("ListChangedBlocks", "InternalServerException", 500, times=10,
                    SnapshotId=snapshot)  # fmt: skip
    code, report, stderr = cost(config)
    assert code == 1
    assert "web01" in stderr and snapshot in stderr and "InternalServerException" in stderr
    assert "Traceback" not in stderr
    assert row(report, "web01")["errors"]
    app = row(report, "app01")
    assert (app["stored_blocks"], app["errors"]) == (320, [])
    assert app["usd_per_month"] == round(320 * BLOCK_GIB * 0.06, 2)


def test_two_pools_servers_of_one_name_are_two_rows(ec2, fleet, tmp_path):
    for name, instance in (("prod.py", "web01"), ("staging.py", "app01")):
        entry = {"name": "web01", "instance_id": fleet.instances[instance]}
        config = write_config(tmp_path / name, SERVERS=[entry])
        assert run("ec2_to_ami.py", config).returncode == 0
    document = documented(run("ec2_to_ami.py", config, "--cost", "--json"), "backup-cost")
    pools = sorted(r["pool"] for r in document["rows"] if r["server"] == "web01" and r["backups"])
    assert pools == ["prod", "staging"]


def test_a_restored_servers_first_backup_counts_only_what_changed_since_its_backup(
    ec2, fleet, tmp_path, endpoint
):
    """EBS stores a snapshot of a volume made from snapshot A incrementally to A: the
    restored server's first backup adds its own writes, not the whole disk again."""
    from localaws.endpoint import SETTINGS

    config = one_server(tmp_path, fleet, KEEP=5)
    write_blocks(volumes_of(ec2, fleet.instances["web01"])["/dev/sda1"], range(3000))
    backup(config)
    ec2.terminate_instances(InstanceIds=[fleet.instances["web01"]])
    SETTINGS.instance_pending_seconds = 0.1
    restored = run("ami_to_ec2.py", write_config(tmp_path / "r.py", SERVER="web01",
                                                 WAIT="running"))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    [twin] = [line.split()[0] for line in restored.stdout.splitlines() if line.startswith("i-")]
    twin_root = volumes_of(ec2, twin)["/dev/sda1"]
    write_blocks(twin_root, range(5000, 5100))  # a day on the restored server
    config = backup_config(tmp_path, fleet, KEEP=5, SELECT_TAGS={},
                           SERVERS=[{"name": "web01", "instance_id": twin}])  # fmt: skip
    backup(config)
    code, report, _ = cost(config)
    assert code == 0
    web = row(report, "web01")
    assert web["backups"] == 2
    assert web["stored_blocks"] == 3000 + 100  # not 3000 + 3100
    [note] = web["notes"]  # the original's first backup: its volume went with the instance
    assert "is gone, so whether it was made from a snapshot is not known" in note


def test_a_golden_image_fleet_counts_each_servers_own_writes(ec2, fleet, tmp_path, endpoint):
    """Servers launched from one golden image (another pipeline's, unmarked): each first
    backup adds what the server wrote since, not the golden image's blocks again."""
    source = launch(ec2, fleet, "builder")
    write_blocks(volumes_of(ec2, source)["/dev/sda1"], range(4000))
    golden = ec2.create_image(InstanceId=source, Name="golden-2026-12")["ImageId"]
    servers = []
    for n, writes in enumerate((range(10), range(100, 250))):
        name = f"app{n}"
        instance = launch(ec2, fleet, name, ImageId=golden)
        write_blocks(volumes_of(ec2, instance)["/dev/sda1"], writes)
        servers.append({"name": name, "instance_id": instance})
    config = backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={})
    backup(config)
    code, report, _ = cost(config)
    assert code == 0
    assert (row(report, "app0")["stored_blocks"], row(report, "app1")["stored_blocks"]) == (
        10, 150)  # fmt: skip


def test_a_first_backup_whose_parent_cannot_be_read_is_counted_whole_and_says_so(
    ec2, fleet, tmp_path, endpoint
):
    source = launch(ec2, fleet, "builder")
    write_blocks(volumes_of(ec2, source)["/dev/sda1"], range(400))
    golden = ec2.create_image(InstanceId=source, Name="golden-2026-11")["ImageId"]
    instance = launch(ec2, fleet, "app9", ImageId=golden)
    write_blocks(volumes_of(ec2, instance)["/dev/sda1"], range(1000, 1010))
    config = backup_config(tmp_path, fleet, SERVERS=[{"name": "app9", "instance_id": instance}],
                           SELECT_TAGS={})  # fmt: skip
    backup(config)
    [parent] = [m["Ebs"]["SnapshotId"] for m in ec2.describe_images(ImageIds=[golden])[
        "Images"][0]["BlockDeviceMappings"] if "Ebs" in m]  # fmt: skip
    endpoint.inject("ListChangedBlocks", "ValidationException", 400, times=5)  # e.g. archived
    code, report, _ = cost(config)
    assert code == 0
    app = row(report, "app9")
    assert app["stored_blocks"] == 410  # all it holds: what EBS bills if the parent is gone
    [note] = app["notes"]
    assert f"its volume was made from {parent}" in note and "EBS may store less" in note


def test_the_recycle_bin_snapshots_are_counted_in_their_own_column(ec2, fleet, tmp_path, endpoint):
    from localaws.endpoint import SETTINGS

    SETTINGS.recycle_bin_days = 7
    config = one_server(tmp_path, fleet, KEEP=1)
    write_blocks(volumes_of(ec2, fleet.instances["web01"])["/dev/sda1"], range(20))
    backup(config)
    backup(config)  # prunes the first: its snapshot waits in the bin
    code, report, _ = cost(config)
    assert code == 0
    web = row(report, "web01")
    assert (web["backups"], web["binned_snapshots"]) == (1, 1)
    assert report["total"]["binned_snapshots"] == 1
    text = run("ec2_to_ami.py", config, "--cost").stdout
    assert "IN BIN" in text and "in the Recycle Bin, billed at the standard rate" in text


def test_an_encrypted_snapshot_cost_cannot_read_names_its_key_and_the_permission(
    ec2, fleet, tmp_path, endpoint
):
    import boto3

    from localaws.endpoint import SETTINGS
    from tests.conftest import REGION

    kms = boto3.client("kms", region_name=REGION, endpoint_url=endpoint.url)
    key = kms.create_key(Description="web01 volumes")["KeyMetadata"]["Arn"]
    SETTINGS.encrypt_images_of[fleet.instances["web01"]] = key
    servers = [{"name": n, "instance_id": fleet.instances[n]} for n in ("web01", "app01")]
    config = backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={})
    backup(config)
    [snapshot] = [m["Ebs"]["SnapshotId"] for m in managed(ec2, "web01")[0]["BlockDeviceMappings"]
                  if "Ebs" in m]  # fmt: skip
    # What EBS answers a caller that may not use the key (the policy lacks kms:Decrypt).
    endpoint.inject("ListSnapshotBlocks", "AccessDeniedException", 403, SnapshotId=snapshot)
    code, report, stderr = cost(config)
    assert code == 1
    [error] = row(report, "web01")["errors"]
    assert f"encrypted with KMS key {key}" in error and "kms:Decrypt" in error
    assert "BACKUP_KMS_KEYS" in error and "web01" in stderr
    assert row(report, "app01")["errors"] == []  # the others are measured
