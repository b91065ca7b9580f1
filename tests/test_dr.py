"""Disaster recovery end to end: copies in other regions with their own retention,
sharing with other accounts, deprecation, an assumed role, and a restore in the
DR region after the source region is lost."""

from __future__ import annotations

import re
import signal
import subprocess
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from localaws.endpoint import SETTINGS, finish_pending
from localaws.fleet import Fleet, build_network, drill_network, launch
from tests.conftest import (
    REGION,
    backup_config,
    managed,
    orphaned_managed_snapshots,
    run,
    script_command,
    tags_of,
    wait_for,
    write_config,
)

DR = "us-west-2"
DR2 = "eu-west-1"
PARTNER = "111122223333"  # the DR account images are shared with
OTHER_ACCOUNT = "210987654321"  # the account an assumed role reaches


@pytest.fixture
def dr(endpoint) -> Any:
    """EC2 in the DR region."""
    return boto3.client("ec2", region_name=DR, endpoint_url=endpoint.url)


def client(endpoint, service: str, region: str) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=endpoint.url)


def available(ec2: Any, server: str) -> list[dict]:
    return [i for i in managed(ec2, server) if i["State"] == "available"]


def orphaned_snapshots(ec2: Any) -> set[str]:
    """The tool's snapshots in a region that no registered image uses."""
    marked = ec2.describe_snapshots(
        Filters=[{"Name": "tag:ec2-to-ami:managed-by", "Values": ["ec2-to-ami"]}]
    )["Snapshots"]
    used = {
        m["Ebs"]["SnapshotId"]
        for image in ec2.describe_images(Owners=["self"])["Images"]
        for m in image.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }
    return {s["SnapshotId"] for s in marked} - used


def launch_permissions(ec2: Any, image_id: str) -> set[str]:
    attribute = ec2.describe_image_attribute(ImageId=image_id, Attribute="launchPermission")
    return {p["UserId"] for p in attribute["LaunchPermissions"] if "UserId" in p}


def volume_permissions(ec2: Any, image: dict) -> set[str]:
    users: set[str] = set()
    for mapping in image["BlockDeviceMappings"]:
        attribute = ec2.describe_snapshot_attribute(
            SnapshotId=mapping["Ebs"]["SnapshotId"], Attribute="createVolumePermission"
        )
        users |= {p["UserId"] for p in attribute["CreateVolumePermissions"] if "UserId" in p}
    return users


def dr_config(tmp_path, fleet, **overrides):
    """The standard backup config, copying to the DR region (and keeping 3 there)."""
    settings = {"COPY_TO_REGIONS": {DR: {"keep": 3, "kms_key_id": None}}, **overrides}
    return backup_config(tmp_path, fleet, **settings)


# --- Copies and their retention ----------------------------------------------------------


def test_four_runs_keep_exactly_keep_in_each_region_with_no_orphaned_snapshots(
    ec2, dr, fleet, tmp_path
):
    SETTINGS.copy_pending_seconds = 0.1
    config = dr_config(tmp_path, fleet, KEEP=2)
    for _ in range(4):
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 0, result.stderr
    for server in ("web01", "app01", "win01"):
        assert len(available(ec2, server)) == 2
        assert len(available(dr, server)) == 3
    assert orphaned_snapshots(ec2) == set() and orphaned_snapshots(dr) == set()
    assert "3 copies: 3 available, 0 pending, 0 failed" in result.stderr


def test_a_copy_carries_the_backup_tags_and_where_it_came_from(ec2, dr, fleet, tmp_path):
    assert run("ec2_to_ami.py", dr_config(tmp_path, fleet)).returncode == 0
    [source] = managed(ec2, "web01")
    [copy] = managed(dr, "web01")
    tags = tags_of(copy)
    assert tags["ec2-to-ami:source-region"] == REGION
    assert tags["ec2-to-ami:source-image-id"] == source["ImageId"]
    assert tags_of(source).items() <= tags.items()
    snapshot_id = copy["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = dr.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert tags_of(snapshot)["ec2-to-ami:server"] == "web01"
    assert tags_of(snapshot)["ec2-to-ami:source-image-id"] == source["ImageId"]


def test_a_copy_is_encrypted_with_the_regions_key(endpoint, dr, fleet, tmp_path):
    key = client(endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    config = dr_config(tmp_path, fleet, COPY_TO_REGIONS={DR: {"kms_key_id": key}})
    assert run("ec2_to_ami.py", config).returncode == 0
    [copy] = managed(dr, "web01")
    snapshot_id = copy["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = dr.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == key


def test_retention_in_a_region_never_touches_images_the_tool_did_not_copy_there(
    ec2, dr, fleet, tmp_path
):
    """The DR region's own backups of a server of the same name, and unmarked images, stay."""
    dr_fleet = dr_network(dr, fleet)
    launch(dr, dr_fleet, "web01")
    servers = [{"name": "web01", "instance_id": dr_fleet.instances["web01"]}]
    local = write_config(tmp_path / "local.py", REGION=DR, SERVERS=servers, KEEP=2)
    assert run("ec2_to_ami.py", local).returncode == 0
    unmarked = dr.create_image(InstanceId=dr_fleet.instances["web01"], Name="by-hand")["ImageId"]
    config = dr_config(tmp_path, fleet, COPY_TO_REGIONS={DR: {"keep": 1}})
    for _ in range(3):
        assert run("ec2_to_ami.py", config).returncode == 0
    in_dr = managed(dr, "web01")
    copies = [i for i in in_dr if "ec2-to-ami:source-region" in tags_of(i)]
    assert len(copies) == 1 and len(in_dr) == 2
    assert dr.describe_images(ImageIds=[unmarked])["Images"]


def dr_network(dr: Any, fleet: Fleet) -> Fleet:
    """The DR region's own VPC, subnet, groups and key pair (IAM, so the profile, is global)."""
    vpc_id = dr.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet_id = dr.create_subnet(VpcId=vpc_id, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    group_ids = [
        dr.create_security_group(GroupName=n, Description=n, VpcId=vpc_id)["GroupId"]
        for n in ("dr-web", "dr-admin")
    ]
    dr.create_key_pair(KeyName=fleet.key_name)
    return Fleet(vpc_id, subnet_id, group_ids, fleet.key_name, fleet.profile_arn)


def test_a_failed_copy_fails_the_run_and_prunes_nothing_in_that_region(
    ec2, fleet, tmp_path, endpoint
):
    eu = client(endpoint, "ec2", DR2)
    dr = client(endpoint, "ec2", DR)
    for _ in range(2):  # two copies in each region
        config = dr_config(tmp_path, fleet, COPY_TO_REGIONS={DR: {"keep": 2}, DR2: {"keep": 2}})
        assert run("ec2_to_ami.py", config).returncode == 0
    before = {i["ImageId"] for i in available(eu, "web01")}
    # Now keep one, in each region: a region whose copy fails keeps both.
    regions = {DR: {"keep": 1}, DR2: {"keep": 1}}
    config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS=regions)
    SETTINGS.fail_copies_to = {DR2}
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert f"web01 ({fleet.instances['web01']}) in {DR2}: copy FAILED: image ami-" in result.stderr
    assert "ended in state failed" in result.stderr
    assert len(before) == 2
    assert {i["ImageId"] for i in available(eu, "web01")} == before  # nothing pruned there
    assert {i["State"] for i in managed(eu, "web01")} == {"available"}  # the failed copy is gone
    assert len(available(dr, "web01")) == 1  # the other region went on as usual
    assert len(available(ec2, "web01")) == 1
    assert orphaned_snapshots(eu) == set()


def test_a_refused_copy_names_the_server_region_and_error(ec2, dr, fleet, tmp_path, endpoint):
    for _ in range(2):
        config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 2}})
        result = run("ec2_to_ami.py", config)
        assert result.returncode == 0, result.stderr
    endpoint.inject("CopyImage", "ResourceLimitExceeded", times=100, Region=DR)
    config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}})
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert f"in {DR}: copy FAILED: copy of ami-" in result.stderr
    assert "ResourceLimitExceeded" in result.stderr
    assert len(managed(dr, "web01")) == 2  # KEEP there is 1 now, but nothing is pruned
    assert len(managed(ec2, "web01")) == 1  # the source region is pruned as usual


def test_copying_survives_throttling_and_server_errors(ec2, dr, fleet, tmp_path, endpoint):
    endpoint.inject("CopyImage", "RequestLimitExceeded", status=503, times=2)
    endpoint.inject("CopyImage", "InternalError", status=500, times=1)
    result = run("ec2_to_ami.py", dr_config(tmp_path, fleet))
    assert result.returncode == 0, result.stderr
    assert {tags_of(i)["ec2-to-ami:server"] for i in managed(dr)} == {"web01", "app01", "win01"}
    assert len(managed(dr)) == 3  # one copy each: a retried call makes no second one


def test_a_run_killed_while_copying_leaves_only_labelled_copies_and_the_next_runs_recover(
    ec2, dr, fleet, tmp_path, endpoint
):
    config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}})
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.copy_pending_seconds = 600
    proc = subprocess.Popen(script_command("ec2_to_ami.py", config), stderr=subprocess.DEVNULL)
    wait_for(lambda: endpoint.count("CopyImage", ok=True) >= 5, "copies")  # 3, then 2 of these
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for(lambda: all(c.status for c in endpoint.calls), "the answer to the dying call")
    for image in dr.describe_images(Owners=["self"])["Images"]:
        assert tags_of(image)["ec2-to-ami:managed-by"] == "ec2-to-ami"
        assert tags_of(image)["ec2-to-ami:source-region"] == REGION
    finish_pending()
    SETTINGS.copy_pending_seconds = 0.1
    for _ in range(2):
        assert run("ec2_to_ami.py", config).returncode == 0
    for server in ("web01", "app01", "win01"):
        assert len(available(dr, server)) == 1 and len(managed(dr, server)) == 1
    assert orphaned_snapshots(dr) == set() and orphaned_snapshots(ec2) == set()


def test_a_copy_still_pending_is_left_and_the_next_run_counts_it(ec2, dr, fleet, tmp_path):
    SETTINGS.copy_pending_seconds = 3600
    config = dr_config(
        tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}}, WAIT_TIMEOUT_MINUTES=0.02,
        SHARE_WITH_ACCOUNTS=[PARTNER], DEPRECATE_AFTER_DAYS=30,
    )  # fmt: skip
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 0, result.stderr
    assert (
        "still pending after 0.02 minutes; left to finish, the next run counts it" in result.stderr
    )
    [pending] = managed(dr, "web01")
    assert pending["State"] == "pending"
    finish_pending()
    SETTINGS.copy_pending_seconds = 0
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 0, result.stderr
    [kept] = managed(dr, "web01")  # the newer copy; the first one, now available, was pruned
    assert kept["ImageId"] != pending["ImageId"]
    assert launch_permissions(dr, kept["ImageId"]) == {PARTNER}


def test_the_next_run_finishes_a_copy_left_pending(ec2, dr, fleet, tmp_path):
    SETTINGS.copy_pending_seconds = 3600
    config = dr_config(
        tmp_path, fleet, COPY_TO_REGIONS={DR: {"keep": 5}}, WAIT_TIMEOUT_MINUTES=0.02,
        SHARE_WITH_ACCOUNTS=[PARTNER], DEPRECATE_AFTER_DAYS=30,
    )  # fmt: skip
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [first] = managed(dr, "web01")
    finish_pending()
    SETTINGS.copy_pending_seconds = 0
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    image = dr.describe_images(ImageIds=[first["ImageId"]])["Images"][0]
    assert image["State"] == "available"
    assert launch_permissions(dr, image["ImageId"]) == {PARTNER}
    assert volume_permissions(dr, image) == {PARTNER}
    assert image.get("DeprecationTime")


# --- Sharing and deprecation ---------------------------------------------------------------


def test_new_images_and_copies_are_shared_and_retention_takes_the_sharing_back(
    ec2, dr, fleet, tmp_path, endpoint
):
    key = client(endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    config = dr_config(
        tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1, "kms_key_id": key}},
        SHARE_WITH_ACCOUNTS=[PARTNER],
    )  # fmt: skip
    assert run("ec2_to_ami.py", config).returncode == 0
    [old] = managed(ec2, "web01")
    [old_copy] = managed(dr, "web01")
    for region_ec2, image in ((ec2, old), (dr, old_copy)):
        assert launch_permissions(region_ec2, image["ImageId"]) == {PARTNER}
        assert volume_permissions(region_ec2, image) == {PARTNER}
    # The next run prunes the old image; its deregistration fails, but it is unshared first.
    endpoint.inject("DeregisterImage", "UnauthorizedOperation", 403, ImageId=old["ImageId"])
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 1
    assert f"could not deregister {old['ImageId']}" in result.stderr
    assert launch_permissions(ec2, old["ImageId"]) == set()
    assert volume_permissions(ec2, old) == set()
    [new_copy] = managed(dr, "web01")
    assert new_copy["ImageId"] != old_copy["ImageId"]
    assert launch_permissions(dr, new_copy["ImageId"]) == {PARTNER}


def test_an_account_taken_off_the_list_loses_access_to_kept_images(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, SHARE_WITH_ACCOUNTS=[PARTNER, "444455556666"])
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    [image] = managed(ec2, "web01")
    assert launch_permissions(ec2, image["ImageId"]) == {PARTNER, "444455556666"}
    config = backup_config(tmp_path, fleet, SHARE_WITH_ACCOUNTS=[PARTNER])
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    assert launch_permissions(ec2, image["ImageId"]) == {PARTNER}
    assert volume_permissions(ec2, image) == {PARTNER}


def test_no_backup_is_shared_while_block_public_access_is_off_and_the_next_run_shares(
    ec2, fleet, tmp_path
):
    SETTINGS.block_public_access["snapshot"] = "unblocked"  # AWS's default for snapshots
    config = backup_config(tmp_path, fleet, SHARE_WITH_ACCOUNTS=[PARTNER])
    result = run("ec2_to_ami.py", config, "--server", "web01")
    assert result.returncode == 1
    [image] = managed(ec2, "web01")
    assert f"{image['ImageId']} not shared with {PARTNER}: block public access is off for " \
        "snapshots" in result.stderr  # fmt: skip
    assert launch_permissions(ec2, image["ImageId"]) == set()
    assert volume_permissions(ec2, image) == set()
    SETTINGS.block_public_access["snapshot"] = "block-all-sharing"
    assert run("ec2_to_ami.py", config, "--server", "web01").returncode == 0
    assert launch_permissions(ec2, image["ImageId"]) == {PARTNER}


def test_an_image_under_the_aws_managed_key_is_not_shared_and_says_why(
    ec2, dr, fleet, tmp_path, endpoint
):
    SETTINGS.encrypt_images_of[fleet.instances["web01"]] = None  # aws/ebs
    key = client(endpoint, "kms", DR).create_key()["KeyMetadata"]["Arn"]
    config = dr_config(
        tmp_path, fleet, COPY_TO_REGIONS={DR: {"kms_key_id": key}}, SHARE_WITH_ACCOUNTS=[PARTNER]
    )
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    [image] = managed(ec2, "web01")
    assert (
        f"{image['ImageId']} is encrypted with the AWS-managed KMS key (aws/ebs)" in result.stderr
    )
    assert "cannot be shared: not shared with 111122223333" in result.stderr
    assert launch_permissions(ec2, image["ImageId"]) == set()
    [copy] = managed(dr, "web01")  # re-encrypted with a customer key: shareable
    assert launch_permissions(dr, copy["ImageId"]) == {PARTNER}
    [other] = managed(ec2, "app01")
    assert launch_permissions(ec2, other["ImageId"]) == {PARTNER}


def test_new_images_and_copies_deprecate_together(ec2, dr, fleet, tmp_path):
    config = dr_config(tmp_path, fleet, DEPRECATE_AFTER_DAYS=30)
    dry_run = run("ec2_to_ami.py", config, "--dry-run").stdout
    planned = re.search(r"deprecated, with its copies, at (\S+)", dry_run)
    assert run("ec2_to_ami.py", config).returncode == 0
    [image] = managed(ec2, "web01")
    [copy] = managed(dr, "web01")
    taken = datetime.fromisoformat(tags_of(image)["ec2-to-ami:created"].replace("Z", "+00:00"))
    shown = datetime.fromisoformat(planned.group(1).replace("Z", "+00:00"))
    for deprecated in (image["DeprecationTime"], copy["DeprecationTime"]):
        when = datetime.fromisoformat(deprecated.replace("Z", "+00:00"))
        assert abs(when - (taken + timedelta(days=30))) < timedelta(minutes=1)
        assert abs(when - shown) < timedelta(minutes=1)  # the dry run showed it


def test_dry_run_shows_copies_and_changes_nothing(ec2, dr, fleet, tmp_path, endpoint):
    config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}},
                       SHARE_WITH_ACCOUNTS=[PARTNER], DEPRECATE_AFTER_DAYS=30)  # fmt: skip
    assert run("ec2_to_ami.py", config).returncode == 0
    [copy] = managed(dr, "web01")
    start = len(endpoint.calls)
    result = run("ec2_to_ami.py", config, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Would copy web01-daily-" in result.stdout and f"(web01) to {DR}" in result.stdout
    assert (
        f"Would deregister {copy['ImageId']}" in result.stdout
        and f"in {DR}: beyond KEEP=1" in result.stdout
    )
    assert f"Would share each new image and copy with {PARTNER}" in result.stdout
    actions = {c.action for c in endpoint.calls[start:]}
    assert all(a.startswith(("Describe", "Get")) for a in actions), actions


def test_list_shows_each_region(ec2, dr, fleet, tmp_path):
    config = dr_config(tmp_path, fleet)
    assert run("ec2_to_ami.py", config).returncode == 0
    result = run("ec2_to_ami.py", config, "--list", "--server", "web01")
    rows = [line.split()[:2] for line in result.stdout.splitlines()[1:]]
    assert rows == [["web01", REGION], ["web01", DR]]


# --- An assumed role ---------------------------------------------------------------------------


def assumed(endpoint, role_arn: str, service: str, region: str = REGION) -> Any:
    sts = client(endpoint, "sts", REGION)
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="test")["Credentials"]
    return boto3.client(
        service, region_name=region, endpoint_url=endpoint.url,
        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )  # fmt: skip


def test_role_arn_backs_up_a_fleet_in_another_account(ec2, endpoint, tmp_path):
    role = f"arn:aws:iam::{OTHER_ACCOUNT}:role/ec2-to-ami-backup"
    theirs = assumed(endpoint, role, "ec2")
    their_fleet = build_network(theirs, assumed(endpoint, role, "iam"))
    launch(theirs, their_fleet, "web01")
    servers = [{"name": "web01", "instance_id": their_fleet.instances["web01"]}]
    config = write_config(
        tmp_path / "theirs.py", ROLE_ARN=role, SERVERS=servers, COPY_TO_REGIONS={DR: {}},
        WAIT_TIMEOUT_MINUTES=1,
    )  # fmt: skip
    start = len(endpoint.calls)
    result = run("ec2_to_ami.py", config)
    calls = endpoint.calls[start:]
    assert result.returncode == 0, result.stderr
    assert calls[0].action == "AssumeRole"  # before any EC2 call
    assert calls[0].params["RoleSessionName"] == "ec2-to-ami-backup-daily"
    [image] = managed(theirs, "web01")
    assert image["OwnerId"] == OTHER_ACCOUNT
    assert managed(ec2, "web01") == []  # nothing in the admin host's own account
    assert len(managed(assumed(endpoint, role, "ec2", DR), "web01")) == 1


def test_a_role_that_cannot_be_assumed_stops_the_run_before_any_ec2_call(fleet, tmp_path, endpoint):
    role = f"arn:aws:iam::{OTHER_ACCOUNT}:role/missing"
    endpoint.inject("AssumeRole", "AccessDenied", status=403)
    start = len(endpoint.calls)
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet, ROLE_ARN=role))
    assert result.returncode == 1
    assert f"could not assume ROLE_ARN {role}: AccessDenied" in result.stderr
    assert "Traceback" not in result.stderr
    assert [c.action for c in endpoint.calls[start:]] == ["AssumeRole"]


# --- Restore in the DR region -------------------------------------------------------------------


def instances_in(ec2: Any) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    return [
        i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]
    ]


def lose_the_source_region(ec2: Any) -> None:
    """Terminate every instance and deregister every image there, as an outage would take them."""
    ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in instances_in(ec2)])
    for image in managed(ec2):
        ec2.deregister_image(ImageId=image["ImageId"])


@pytest.fixture
def copied(ec2, dr, fleet, tmp_path):
    """Two runs copied to the DR region, then the source region lost; returns the DR network."""
    config = dr_config(tmp_path, fleet)
    for _ in range(2):
        assert run("ec2_to_ami.py", config).returncode == 0
    lose_the_source_region(ec2)
    return dr_network(dr, fleet)


def test_restore_in_the_dr_region_with_its_own_subnet_and_groups(ec2, dr, fleet, copied, tmp_path):
    newest = max(managed(dr, "web01"), key=lambda i: tags_of(i)["ec2-to-ami:created"])
    config = write_config(tmp_path / "restore.py", SERVER="web01")
    groups = ",".join(copied.group_ids)
    result = run("ami_to_ec2.py", config, "--region", DR, "--subnet-id", copied.subnet_id,
                 "--security-group-ids", groups)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [new] = instances_in(dr)
    assert new["ImageId"] == newest["ImageId"]
    assert new["SubnetId"] == copied.subnet_id
    assert sorted(g["GroupId"] for g in new["SecurityGroups"]) == sorted(copied.group_ids)
    assert new["KeyName"] == fleet.key_name
    assert new["IamInstanceProfile"]["Arn"] == fleet.profile_arn
    assert new["MetadataOptions"]["HttpTokens"] == "required"
    assert tags_of(new)["Name"] == "web01" and tags_of(new)["Env"] == "prod"
    assert (
        f"Elastic IP {fleet.eips['web01']} is in {REGION}, so none is associated" in result.stderr
    )
    assert dr.describe_addresses()["Addresses"] == []


def test_a_drill_in_the_dr_region_proves_the_copies_with_its_own_subnet_alone(dr, copied, tmp_path):
    drill = drill_network(dr, copied, cidr="10.30.9.0/24")
    config = write_config(tmp_path / "drill.py", REGION=DR, DRILL_SUBNET_ID=drill[0],
                          DRILL_SECURITY_GROUP_IDS=[drill[1]])  # fmt: skip
    result = run("ami_to_ec2.py", config, "--drill", "--all")
    assert result.returncode == 0, result.stderr
    assert instances_in(dr) == []  # every drill instance terminated
    for server in ("web01", "app01", "win01"):
        newest = max(managed(dr, server), key=lambda i: tags_of(i)["ec2-to-ami:created"])
        assert tags_of(newest)["ec2-to-ami:verified"].split()[1] == "ok"


def test_a_dr_restore_without_the_regions_ids_fails_cleanly_and_launches_nothing(
    dr, copied, tmp_path, endpoint
):
    config = write_config(tmp_path / "restore.py", SERVER="web01", REGION=DR)
    start = len(endpoint.calls)
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 1
    assert f"is a copy from {REGION}" in result.stderr
    assert "Set SUBNET_ID and SECURITY_GROUP_IDS" in result.stderr
    assert "nothing launched" in result.stderr and "Traceback" not in result.stderr
    assert instances_in(dr) == []
    assert "RunInstances" not in {c.action for c in endpoint.calls[start:]}


def test_a_dr_restore_maps_the_recorded_ids_through_region_map(ec2, dr, fleet, copied, tmp_path):
    allocation = dr.allocate_address(Domain="vpc")["AllocationId"]
    mapping = {fleet.subnet_id: copied.subnet_id, fleet.eips["web01"]: allocation}
    mapping.update(zip(fleet.group_ids, copied.group_ids, strict=True))
    config = write_config(tmp_path / "restore.py", SERVER="web01", REGION=DR,
                          REGION_MAP={DR: mapping})  # fmt: skip
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 0, result.stderr
    [new] = instances_in(dr)
    assert new["SubnetId"] == copied.subnet_id
    assert [g["GroupId"] for g in new["SecurityGroups"]] == copied.group_ids
    [address] = dr.describe_addresses(AllocationIds=[allocation])["Addresses"]
    assert address["InstanceId"] == new["InstanceId"]


def test_a_dr_restore_refuses_the_source_regions_private_ip(dr, copied, tmp_path):
    config = write_config(
        tmp_path / "restore.py", SERVER="web01", REGION=DR, PRIVATE_IP="same",
        SUBNET_ID=copied.subnet_id, SECURITY_GROUP_IDS=copied.group_ids,
    )  # fmt: skip
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 1
    assert f'PRIVATE_IP = "same": the recorded address is in {REGION}' in result.stderr
    assert instances_in(dr) == []


def test_role_arn_restores_into_the_other_account(endpoint, tmp_path):
    role = f"arn:aws:iam::{OTHER_ACCOUNT}:role/ec2-to-ami-restore"
    theirs = assumed(endpoint, role, "ec2")
    their_fleet = build_network(theirs, assumed(endpoint, role, "iam"))
    launch(theirs, their_fleet, "web01")
    servers = [{"name": "web01", "instance_id": their_fleet.instances["web01"]}]
    backup = write_config(tmp_path / "theirs.py", ROLE_ARN=role, SERVERS=servers)
    assert run("ec2_to_ami.py", backup).returncode == 0
    theirs.terminate_instances(InstanceIds=[their_fleet.instances["web01"]])
    config = write_config(tmp_path / "restore.py", SERVER="web01", ROLE_ARN=role)
    start = len(endpoint.calls)
    result = run("ami_to_ec2.py", config)
    assert result.returncode == 0, result.stderr
    assert endpoint.calls[start].params["RoleSessionName"].startswith("ec2-to-ami-restore-")
    [new] = instances_in(theirs)
    assert new["SubnetId"] == their_fleet.subnet_id


def test_a_long_server_name_still_fits_the_image_and_copy_descriptions(ec2, dr, fleet, tmp_path):
    name = "w" * 200
    config = write_config(
        tmp_path / "long.py", SERVERS=[{"name": name, "instance_id": fleet.instances["web01"]}],
        SCHEDULE="s" * 60, NAME_FORMAT="{instance_id}-{time:%Y%m%d-%H%M%S}",
        COPY_TO_REGIONS={DR: {"keep": 1}},
    )  # fmt: skip
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    [image], [copy] = managed(ec2, name), managed(dr, name)
    for made in (image, copy):
        assert len(made["Description"]) == 255 and made["Description"].endswith("...")


# --- Deregistration protection -----------------------------------------------------------


def test_protected_backups_and_copies_are_still_pruned_by_retention(ec2, dr, fleet, tmp_path):
    config = dr_config(tmp_path, fleet, KEEP=1, COPY_TO_REGIONS={DR: {"keep": 1}},
                       DEREGISTRATION_PROTECTION=True)  # fmt: skip
    assert run("ec2_to_ami.py", config).returncode == 0
    [image], [copy] = managed(ec2, "web01"), managed(dr, "web01")
    for made in (image, copy):
        assert made["DeregistrationProtection"] == "enabled-without-cooldown"
    planned = run("ec2_to_ami.py", config, "--dry-run").stdout
    assert f"Would deregister {image['ImageId']}" in planned
    assert "lifting its deregistration protection" in planned
    assert "Would protect each new image and copy from deregistration" in planned
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr
    [new], [new_copy] = managed(ec2, "web01"), managed(dr, "web01")
    assert new["ImageId"] != image["ImageId"] and new_copy["ImageId"] != copy["ImageId"]
    assert new["DeregistrationProtection"] == new_copy["DeregistrationProtection"]
    assert new["DeregistrationProtection"] == "enabled-without-cooldown"
    assert orphaned_managed_snapshots(ec2) == orphaned_managed_snapshots(dr) == []


def test_a_protection_with_cooldown_set_outside_the_tool_keeps_the_image(ec2, fleet, tmp_path):
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    [image] = managed(ec2, "web01")
    ec2.enable_image_deregistration_protection(ImageId=image["ImageId"], WithCooldown=True)
    planned = run("ec2_to_ami.py", config, "--dry-run").stdout
    assert f"Would keep {image['ImageId']}" in planned
    assert f"Would deregister {image['ImageId']}" not in planned
    result = run("ec2_to_ami.py", config)
    assert result.returncode == 0, result.stderr  # every new backup was made and verified
    assert f"{image['ImageId']} is due for pruning but kept: it has deregistration protection" in (
        result.stderr
    )
    kept = {i["ImageId"]: i for i in managed(ec2, "web01")}
    assert kept[image["ImageId"]]["DeregistrationProtection"] == "enabled-with-cooldown"
    ec2.disable_image_deregistration_protection(ImageId=image["ImageId"])  # the owner lifts it
    result = run("ec2_to_ami.py", config)
    assert "is in its deregistration protection's cooldown (disabled-until" in result.stderr
    assert image["ImageId"] in {i["ImageId"] for i in managed(ec2, "web01")}
    assert orphaned_managed_snapshots(ec2) == []
