"""ami_to_ec2.py end to end: back up with ec2_to_ami.py, then restore, as subprocesses."""

from __future__ import annotations

import base64
import re
import sys

import pytest

from localaws.endpoint import SETTINGS, finish_pending
from localaws.fleet import launch
from tests.conftest import ROOT, backup_config, documented, managed, run, tags_of, write_config


@pytest.fixture
def backed_up(ec2, fleet, tmp_path):
    """The fleet with one backup of each server; new instances pend for a fifth of a second."""
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    SETTINGS.instance_pending_seconds = 0.2
    return fleet


def restore(tmp_path, *args: str, **settings):
    config = write_config(tmp_path / "restore.py", **settings)
    return run("ami_to_ec2.py", config, *args)


def instance(ec2, instance_id: str) -> dict:
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def live_instances(ec2) -> list[dict]:
    filters = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def launched_ids(result) -> list[str]:
    return [line.split()[0] for line in result.stdout.splitlines() if line.startswith("i-")]


def user_data_of(ec2, instance_id: str) -> str:
    attribute = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(attribute["UserData"]["Value"]).decode()


def test_restore_after_terminate_from_server_alone_matches_the_original(ec2, backed_up, tmp_path):
    original = instance(ec2, backed_up.instances["web01"])
    ec2.terminate_instances(InstanceIds=[original["InstanceId"]])
    result = restore(tmp_path, SERVER="web01")
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    new = instance(ec2, new_id)
    assert new["State"]["Name"] == "running"
    assert new["InstanceType"] == "t3.small" == original["InstanceType"]
    assert new["SubnetId"] == backed_up.subnet_id
    assert sorted(g["GroupId"] for g in new["SecurityGroups"]) == sorted(backed_up.group_ids)
    assert new["KeyName"] == "ops-key"
    assert new["IamInstanceProfile"]["Arn"] == backed_up.profile_arn
    assert new["MetadataOptions"]["HttpTokens"] == "required"
    tags = tags_of(new)
    assert (tags["Name"], tags["Env"]) == ("web01", "prod")
    assert tags["ec2-to-ami:restored-from"] == managed(ec2, "web01")[0]["ImageId"]
    assert "ec2-to-ami:restored-backup-time" in tags
    assert not any(k.startswith("ec2-to-ami:") and "restored" not in k for k in tags)
    [address] = ec2.describe_addresses(AllocationIds=[backed_up.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == new_id
    assert address["PublicIp"] in result.stdout
    assert "web01" in result.stdout and "client token: ec2-to-ami-" in result.stdout


def test_original_still_running_gets_a_suffixed_name_and_keeps_its_elastic_ip(
    ec2, backed_up, tmp_path
):
    result = restore(tmp_path, SERVER="web01")
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    assert tags_of(instance(ec2, new_id))["Name"] == "web01-restored"
    assert f"original instance {backed_up.instances['web01']} still exists" in result.stderr
    holder = backed_up.instances["web01"]
    assert f"is held by {holder} and was not moved; set ALLOW_REASSOCIATION" in result.stderr
    [address] = ec2.describe_addresses(AllocationIds=[backed_up.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == holder


def test_allow_reassociation_moves_the_elastic_ip(ec2, backed_up, tmp_path):
    result = restore(tmp_path, SERVER="web01", ALLOW_REASSOCIATION=True, WAIT="running")
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    [address] = ec2.describe_addresses(AllocationIds=[backed_up.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == new_id


def test_overrides_win_over_the_recording(ec2, backed_up, tmp_path):
    ec2.create_key_pair(KeyName="other-key")
    other_group = backed_up.group_ids[1]
    result = restore(
        tmp_path,
        SERVER="web01",
        INSTANCE_TYPE="m5.large",
        SECURITY_GROUP_IDS=[other_group],
        KEY_NAME="other-key",
        NAME="web01-test",
        TAGS={"Env": "staging", "Ticket": "INC-1"},
        IMDSV2="optional",
        TERMINATION_PROTECTION=True,
        ELASTIC_IP=None,
        WAIT="running",
    )
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    new = instance(ec2, new_id)
    assert new["InstanceType"] == "m5.large"
    assert [g["GroupId"] for g in new["SecurityGroups"]] == [other_group]
    assert new["KeyName"] == "other-key"
    assert new["MetadataOptions"]["HttpTokens"] == "optional"
    assert (tags_of(new)["Name"], tags_of(new)["Env"], tags_of(new)["Ticket"]) == (
        "web01-test",
        "staging",
        "INC-1",
    )
    protection = ec2.describe_instance_attribute(
        InstanceId=new_id, Attribute="disableApiTermination"
    )
    assert protection["DisableApiTermination"]["Value"] is True
    [address] = ec2.describe_addresses(AllocationIds=[backed_up.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == backed_up.instances["web01"]


def test_count_two_launches_each_under_its_own_name_and_gives_the_address_to_the_first(
    ec2, backed_up, tmp_path, endpoint
):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    result = restore(tmp_path, "--count", "2", SERVER="web01", WAIT="running")
    assert result.returncode == 0, result.stderr
    ids = launched_ids(result)
    assert len(ids) == 2
    # One RunInstances per instance, so that each is born with its own Name: no two live
    # instances ever share the server's name, which the next SELECT_TAGS backup refuses.
    assert endpoint.count("RunInstances", ok=True) == 3 + 2  # the fleet's three, then two
    assert [tags_of(instance(ec2, i))["Name"] for i in ids] == ["web01", "web01-2"]
    assert "go to the first instance (web01) only" in result.stderr
    [address] = ec2.describe_addresses(AllocationIds=[backed_up.eips["web01"]])["Addresses"]
    assert address["InstanceId"] == ids[0]


def test_dry_run_prints_the_plan_and_launches_nothing(ec2, backed_up, tmp_path, endpoint):
    before = len(live_instances(ec2))
    calls = len(endpoint.calls)
    result = restore(tmp_path, "--dry-run", SERVER="web01", USER_DATA="#!/bin/sh\necho s3cret")
    assert result.returncode == 0, result.stderr
    assert "Would launch 1 x t3.small from ami-" in result.stdout
    assert f"subnet:                 {backed_up.subnet_id}" in result.stdout
    assert "DryRun: EC2 accepts this RunInstances request" in result.stdout
    assert "bytes (not shown)" in result.stdout
    holder = backed_up.instances["web01"]
    assert f"now held by {holder}: would be left there (ALLOW_REASSOCIATION)" in result.stdout
    assert "still exists, so the new instance is named web01-restored" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert len(live_instances(ec2)) == before
    runs = [c for c in endpoint.calls[calls:] if c.action == "RunInstances"]
    assert [c.params.get("DryRun") for c in runs] == ["true"]


def test_unknown_server_fails_naming_the_servers_that_have_backups(ec2, backed_up, tmp_path):
    before = len(live_instances(ec2))
    result = restore(tmp_path, SERVER="db01")
    assert result.returncode == 1
    assert "no available backup of server 'db01'" in result.stderr
    assert "Servers with backups: app01, web01, win01" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(live_instances(ec2)) == before


def test_backup_before_picks_an_older_backup_or_fails_cleanly(ec2, backed_up, tmp_path):
    first = managed(ec2, "app01")[0]
    assert run("ec2_to_ami.py", backup_config(tmp_path, backed_up)).returncode == 0
    when = tags_of(first)["ec2-to-ami:created"]  # when the backup was taken
    result = restore(tmp_path, "--dry-run", "--before", when, SERVER="app01")
    assert result.returncode == 0, result.stderr
    assert f"from {first['ImageId']}" in result.stdout
    result = restore(tmp_path, "--dry-run", SERVER="app01", BACKUP_BEFORE="2020-01-01T00:00:00Z")
    assert result.returncode == 1
    assert "at or before 2020-01-01T00:00:00Z" in result.stderr


def test_failure_after_launch_reports_the_instance_and_exits_1(ec2, backed_up, tmp_path, endpoint):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    endpoint.inject("AssociateAddress", "InternalError", 500, times=10)
    config = write_config(tmp_path / "restore.py", SERVER="web01")
    result = run("ami_to_ec2.py", config, AWS_MAX_ATTEMPTS="2")
    assert result.returncode == 1
    [new_id] = launched_ids(result)
    assert f"after launching {new_id}: InternalError" in result.stderr
    assert instance(ec2, new_id)["State"]["Name"] == "running"


def test_rerun_with_the_same_client_token_launches_nothing_new(ec2, backed_up, tmp_path):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    first = restore(tmp_path, "--client-token", "incident-42", SERVER="web01", WAIT="running")
    assert first.returncode == 0, first.stderr
    before = len(live_instances(ec2))
    again = restore(tmp_path, "--client-token", "incident-42", SERVER="web01", WAIT="running")
    assert again.returncode == 0, again.stderr
    assert launched_ids(again) == launched_ids(first)
    assert len(live_instances(ec2)) == before
    assert "client token: incident-42" in again.stdout
    assert "was not moved" not in again.stderr  # the address is already on this instance


def test_a_token_rerun_after_a_newer_backup_says_which_image_the_token_launched(
    ec2, backed_up, tmp_path
):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    first = restore(tmp_path, "--client-token", "incident-43", SERVER="web01", WAIT="none")
    assert first.returncode == 0, first.stderr
    [launched_from] = {instance(ec2, i)["ImageId"] for i in launched_ids(first)}
    # A newer backup of web01, made in the same pool (its launch record is app01's, which
    # does not matter here: the restore picks the newest backup by its server).
    newer = backup_config(tmp_path, backed_up, SELECT_TAGS={}, SERVERS=[
        {"name": "web01", "instance_id": backed_up.instances["app01"]}])  # fmt: skip
    made = run("ec2_to_ami.py", newer, "--no-prune")
    assert made.returncode == 0, made.stderr
    again = restore(tmp_path, "--client-token", "incident-43", SERVER="web01", WAIT="none")
    assert again.returncode == 1
    assert f"from {launched_from}, not ami-" in again.stderr
    assert f"add --ami {launched_from} to finish that restore" in again.stderr
    fixed = restore(tmp_path, "--client-token", "incident-43", "--ami", launched_from,
                    WAIT="none")  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert launched_ids(fixed) == launched_ids(first)


def test_same_private_ip_comes_back_after_terminate(ec2, backed_up, tmp_path):
    original = instance(ec2, backed_up.instances["app01"])
    ec2.terminate_instances(InstanceIds=[original["InstanceId"]])
    result = restore(tmp_path, SERVER="app01", PRIVATE_IP="same", WAIT="running")
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    assert instance(ec2, new_id)["PrivateIpAddress"] == original["PrivateIpAddress"]


def test_a_rerun_with_the_token_finishes_a_same_address_restore(ec2, backed_up, tmp_path):
    """The address is held by the very instance this token launched: not a conflict."""
    original = instance(ec2, backed_up.instances["app01"])
    ec2.terminate_instances(InstanceIds=[original["InstanceId"]])
    first = restore(tmp_path, SERVER="app01", PRIVATE_IP="same", WAIT="running")
    assert first.returncode == 0, first.stderr
    token = re.search(r"client token: (\S+)", first.stdout).group(1)
    again = restore(tmp_path, "--client-token", token, SERVER="app01", PRIVATE_IP="same",
                    WAIT="running")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert launched_ids(again) == launched_ids(first)


def test_same_private_ip_still_in_use_fails_before_launch(ec2, backed_up, tmp_path):
    before = len(live_instances(ec2))
    result = restore(tmp_path, SERVER="app01", PRIVATE_IP="same")
    assert result.returncode == 1
    holder = backed_up.instances["app01"]
    assert f"is in use by {holder}; set PRIVATE_IP = None; nothing launched" in result.stderr
    assert len(live_instances(ec2)) == before


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"SUBNET_ID": "subnet-0123456789abcdef0"}, "subnet subnet-0123456789abcdef0 does not"),
        ({"KEY_NAME": "no-such-key"}, "key pair no-such-key does not exist"),
        ({"INSTANCE_TYPE": "m6g.large"}, "runs arm64, but image"),
    ],
)
def test_checks_before_launch_fail_cleanly(ec2, backed_up, tmp_path, settings, message):
    before = len(live_instances(ec2))
    result = restore(tmp_path, SERVER="web01", **settings)
    assert result.returncode == 1
    assert message in result.stderr and "nothing launched" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(live_instances(ec2)) == before


def test_security_group_of_another_vpc_is_refused(ec2, backed_up, tmp_path):
    other_vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="x", Description="x", VpcId=other_vpc)["GroupId"]
    result = restore(tmp_path, SERVER="web01", SECURITY_GROUP_IDS=[group])
    assert result.returncode == 1
    assert f"security group {group} is in {other_vpc}" in result.stderr


@pytest.mark.parametrize(
    ("settings", "args", "message"),
    [
        ({}, [], "set exactly one of SERVER, SERVERS and AMI_ID"),
        ({"SERVR": "web01"}, [], "unknown setting SERVR; did you mean SERVER?"),
        ({"SERVER": "web01", "COUNT": 0}, [], "COUNT must be a whole number >= 1"),
        ({"SERVER": "web01", "PRIVATE_IP": "same", "COUNT": 2}, [], "needs COUNT = 1"),
        ({"SERVER": "web01", "PRIVATE_IP": "10.0.0.300"}, [], "PRIVATE_IP must be None"),
        ({"SERVER": "web01", "ELASTIC_IP": "1.2.3.4"}, [], "ELASTIC_IP must be None"),
        ({"SERVER": "web01", "IMDSV2": "v2"}, [], "IMDSV2 must be one of"),
        ({"SERVER": "web01", "WAIT": "ok"}, [], "WAIT must be one of"),
        ({"SERVER": "web01", "HOSTNAME": "web_01"}, [], "HOSTNAME must be a DNS host name"),
        ({"SERVER": "web01", "USER_DATA": "@/nonexistent"}, [], "USER_DATA: cannot read"),
        ({"SERVER": "web01", "BACKUP_BEFORE": "yesterday"}, [], "BACKUP_BEFORE must be an ISO"),
        ({"SERVER": "web01", "KMS_KEY_ID": "k", "ENCRYPTED": False}, [], "KMS_KEY_ID needs"),
        ({"SERVER": "web01", "SECURITY_GROUP_IDS": ["web"]}, [], "is not a security group id"),
        ({"AMI_ID": "ami-xyz"}, [], "AMI_ID must be None or an image id"),
        ({"SERVER": "web01"}, ["--server", "a", "--ami", "ami-12345678"], "not allowed with"),
        ({"SERVER": "web01"}, ["--count", "two"], "invalid int value"),
        ({"SERVER": "web01"}, ["--region", "Oregon"], "REGION must be None or a region"),
        ({"SERVER": "web01"}, ["--subnet-id", "net-1"], "SUBNET_ID must be None or a subnet id"),
        ({"SERVER": "web01"}, ["--security-group-ids", "sg-1,web"], "is not a security group"),
        ({"SERVER": "web01", "REGION_MAP": {"us-west-2": ["subnet-1"]}}, [], "must map source"),
        ({"SERVER": "web01", "REGION_MAP": {"west": {}}}, [], "REGION_MAP: 'west' is not a region"),
        ({"SERVER": "web01", "ROLE_ARN": "restorer"}, [], "ROLE_ARN must be None or an IAM role"),
        ({"SERVER": "web01", "TENANCY": "shared"}, [], "TENANCY must be one of"),
        ({"SERVER": "web01", "HOST_ID": "host-1"}, [], "HOST_ID must be None (as recorded)"),
        ({"SERVER": "web01", "CPU_OPTIONS": {"CoreCount": 2}}, [], "CPU_OPTIONS must be None"),
        ({"SERVER": "web01", "CREDIT_SPECIFICATION": "burst"}, [], "CREDIT_SPECIFICATION must"),
        ({"SERVER": "web01", "METADATA_OPTIONS": {"HopLimit": 2}}, [], "unknown option 'HopLimit'"),
        (
            {"SERVER": "web01", "METADATA_OPTIONS": {"HttpPutResponseHopLimit": 65}},
            [],
            "METADATA_OPTIONS['HttpPutResponseHopLimit'] cannot be 65",
        ),
        (
            {
                "SERVER": "web01",
                "IMDSV2": "required",
                "METADATA_OPTIONS": {"HttpTokens": "optional"},
            },
            [],
            "METADATA_OPTIONS or IMDSV2, not both",
        ),
        (
            {"SERVER": "web01", "NETWORK_INTERFACES": [{"subnet": "subnet-1"}]},
            [],
            "NETWORK_INTERFACES[0] must be a dict with keys among",
        ),
        (
            {
                "SERVER": "web01",
                "NETWORK_INTERFACES": [
                    {"subnet_id": "subnet-12345678", "secondary_private_ips": -1}
                ],
            },
            [],
            "['secondary_private_ips'] must be a count",
        ),
        ({"SERVER": "web01", "PUBLIC_IP": "yes"}, [], "PUBLIC_IP must be None, True or False"),
        ({"SERVER": "web01", "TARGET_GROUPS": ["web-tg"]}, [], 'TARGET_GROUPS must be "same"'),
        ({"SERVER": "web01", "CLASSIC_LOAD_BALANCERS": "web"}, [], "CLASSIC_LOAD_BALANCERS must"),
        (
            {
                "SERVER": "web01",
                "DNS_RECORDS": [
                    {"zone_id": "Z1", "name": "a", "type": "CNAME", "value": "private"}
                ],
            },
            [],
            'type must be "A"',
        ),
        ({"SERVER": "web01", "SHUTDOWN_BEHAVIOR": "hibernate"}, [], "SHUTDOWN_BEHAVIOR must be"),
    ],
)
def test_bad_config_or_usage_exits_2_before_any_aws_call(
    endpoint, tmp_path, settings, args, message
):
    result = restore(tmp_path, *args, **settings)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert endpoint.count() == 0


def test_list_shows_restorable_backups(ec2, backed_up, tmp_path):
    result = restore(tmp_path, "--list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = ["SERVER", "IMAGE", "CREATED", "POOL", "SCHEDULE", "STATE", "TYPE", "SUBNET", "RECORD"]
    assert lines[0].split() == [*header, "VERIFIED"]
    assert [line.split()[0] for line in lines[1:]] == ["app01", "web01", "win01"]
    assert all(backed_up.subnet_id in line and "t3.small" in line for line in lines[1:])
    assert all(line.split()[-2:] == ["full", "-"] for line in lines[1:])  # records; no drill


def test_json_report(ec2, backed_up, tmp_path):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["app01"]])
    result = restore(tmp_path, "--json", SERVER="app01", WAIT="running")
    assert result.returncode == 0, result.stderr
    report = documented(result, "restore-result")
    [row] = report["instances"]
    assert row["state"] == "running" and row["name"] == "app01"
    assert row["private_ip"] and row["availability_zone"]
    assert report["image_id"] == managed(ec2, "app01")[0]["ImageId"]
    assert report["error"] is None


def test_windows_host_name_goes_in_as_ec2launch_v2_user_data(ec2, backed_up, tmp_path):
    result = restore(
        tmp_path,
        SERVER="win01",
        HOSTNAME="WIN01B",
        USER_DATA="<powershell>Write-Host hi</powershell>",
    )
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    user_data = user_data_of(ec2, new_id)
    assert user_data.startswith("version: 1.1\ntasks:\n- task: executeScript")
    assert "frequency: always" in user_data
    assert "      Write-Host hi\n" in user_data
    assert "$name = 'WIN01B'" in user_data and "Rename-Computer" in user_data
    assert "<powershell>" not in user_data


def test_linux_host_name_and_user_data_go_in_as_a_mime_archive(ec2, backed_up, tmp_path):
    script = tmp_path / "boot.sh"
    script.write_text("#!/bin/sh\necho hello\n", encoding="utf-8")
    result = restore(
        tmp_path, SERVER="app01", HOSTNAME="app01b.example.com", USER_DATA=f"@{script}"
    )
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    user_data = user_data_of(ec2, new_id)
    assert "Content-Type: multipart/mixed" in user_data
    assert "Content-Type: text/cloud-config" in user_data
    assert "Content-Type: text/x-shellscript" in user_data


def test_restore_exact_ami_of_any_kind(ec2, backed_up, tmp_path):
    SETTINGS.pending_seconds = 3600  # pending until finish_pending()
    hand_made = ec2.create_image(InstanceId=backed_up.instances["app01"], Name="hand-made")
    pending = restore(tmp_path, "--ami", hand_made["ImageId"])
    assert pending.returncode == 1
    assert f"image {hand_made['ImageId']} is pending, not available" in pending.stderr
    finish_pending()
    result = restore(
        tmp_path, "--ami", hand_made["ImageId"], SUBNET_ID=backed_up.subnet_id,
        INSTANCE_TYPE="t3.micro", WAIT="none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    [new_id] = launched_ids(result)
    assert instance(ec2, new_id)["ImageId"] == hand_made["ImageId"]


def test_hand_made_ami_without_a_recorded_subnet_needs_one(ec2, backed_up, tmp_path):
    hand_made = ec2.create_image(InstanceId=backed_up.instances["app01"], Name="hand-made")
    finish_pending()
    result = restore(tmp_path, "--ami", hand_made["ImageId"])
    assert result.returncode == 1
    assert "has no recorded INSTANCE_TYPE or SUBNET_ID; set it in the config" in result.stderr


def test_unknown_ami_fails_cleanly(ec2, backed_up, tmp_path):
    result = restore(tmp_path, "--ami", "ami-0123456789abcdef0", SUBNET_ID=backed_up.subnet_id)
    assert result.returncode == 1
    assert "image ami-0123456789abcdef0 does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_released_elastic_ip_fails_before_launch(ec2, backed_up, tmp_path):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    ec2.release_address(AllocationId=backed_up.eips["web01"])
    before = len(live_instances(ec2))
    result = restore(tmp_path, SERVER="web01")
    assert result.returncode == 1
    assert f"Elastic IP allocation {backed_up.eips['web01']} does not exist" in result.stderr
    assert "set ELASTIC_IP = None to restore without it" in result.stderr
    assert len(live_instances(ec2)) == before


def test_a_recorded_instance_profile_must_be_allowed(ec2, backed_up, tmp_path, endpoint):
    before, calls = len(live_instances(ec2)), len(endpoint.calls)
    result = restore(tmp_path, SERVER="app01", ALLOWED_INSTANCE_PROFILES=["ops-profile"])
    assert result.returncode == 1
    assert f"names instance profile {backed_up.profile_arn}" in result.stderr
    assert "which ALLOWED_INSTANCE_PROFILES does not list" in result.stderr
    assert "nothing launched" in result.stderr
    assert len(live_instances(ec2)) == before
    assert [c for c in endpoint.calls[calls:] if c.action == "RunInstances"] == []
    shown = restore(tmp_path, "--dry-run", SERVER="app01", ALLOWED_INSTANCE_PROFILES=None)
    assert "(from the image's tag; ALLOWED_INSTANCE_PROFILES is None: not checked)" in shown.stdout
    result = restore(tmp_path, SERVER="app01", ALLOWED_INSTANCE_PROFILES=["app-profile"])
    assert result.returncode == 0, result.stderr  # allowed by name
    [new_id] = launched_ids(result)
    assert instance(ec2, new_id)["IamInstanceProfile"]["Arn"] == backed_up.profile_arn
    chosen = restore(tmp_path, "--dry-run", "--replace", SERVER="app01",  # app01 runs now
                     ALLOWED_INSTANCE_PROFILES=[], IAM_INSTANCE_PROFILE="app-profile")  # fmt: skip
    assert chosen.returncode == 0 and "app-profile (IAM_INSTANCE_PROFILE)" in chosen.stdout


def test_a_disabled_backup_is_named_and_restored_only_when_asked(ec2, backed_up, tmp_path):
    [image] = managed(ec2, "web01")
    ec2.disable_image(ImageId=image["ImageId"])
    result = restore(tmp_path, SERVER="web01")
    assert result.returncode == 1 and "nothing launched" in result.stderr
    assert f"server 'web01' has only disabled backups ({image['ImageId']})" in result.stderr
    shown = restore(tmp_path, "--dry-run", AMI_ID=image["ImageId"])
    assert shown.returncode == 0 and f"Would enable {image['ImageId']} first" in shown.stdout
    assert managed(ec2, "web01")[0]["State"] == "disabled"  # the dry run changed nothing
    result = restore(tmp_path, AMI_ID=image["ImageId"])
    assert result.returncode == 0, result.stderr
    assert managed(ec2, "web01")[0]["State"] == "available"
    [new_id] = launched_ids(result)
    assert instance(ec2, new_id)["ImageId"] == image["ImageId"]


def test_a_backup_in_the_recycle_bin_is_listed_and_restored_with_its_snapshot(ec2, fleet, tmp_path):
    SETTINGS.recycle_bin_days = 7  # retention rules for images and for snapshots
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    [old] = managed(ec2, "web01")
    assert run("ec2_to_ami.py", config).returncode == 0  # KEEP=1: the old one goes to the bin
    assert old["ImageId"] not in {i["ImageId"] for i in managed(ec2, "web01")}
    listed = run("ec2_to_ami.py", config, "--list", "--recycle-bin").stdout
    assert "In the Recycle Bin" in listed and old["ImageId"] in listed and old["Name"] in listed
    listed = restore(tmp_path, "--list", "--recycle-bin", SERVER="web01").stdout
    assert old["ImageId"] in listed.split("In the Recycle Bin")[1]
    shown = restore(tmp_path, "--dry-run", AMI_ID=old["ImageId"])
    assert shown.returncode == 0 and f"Would restore {old['ImageId']}" in shown.stdout
    assert ec2.list_images_in_recycle_bin(ImageIds=[old["ImageId"]])["Images"]  # still there
    SETTINGS.instance_pending_seconds = 0.5
    result = restore(tmp_path, AMI_ID=old["ImageId"])
    assert result.returncode == 0, result.stderr
    assert "restored from the Recycle Bin" in result.stderr
    [new_id] = launched_ids(result)
    launched = instance(ec2, new_id)
    assert launched["ImageId"] == old["ImageId"] and launched["SubnetId"] == fleet.subnet_id
    snapshot_id = old["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]


def test_a_restore_sends_the_initialization_rate_for_each_volume(ec2, fleet, tmp_path, endpoint):
    disks = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1}},
             {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 2}}]  # fmt: skip
    launch(ec2, fleet, "db01", BlockDeviceMappings=disks)
    servers = [{"name": "db01", "instance_id": fleet.instances["db01"]}]
    backup = backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={})
    assert run("ec2_to_ami.py", backup).returncode == 0
    result = restore(tmp_path, SERVER="db01", VOLUME_INITIALIZATION_RATE=250, WAIT="running")
    assert result.returncode == 0, result.stderr
    [call] = [c for c in endpoint.calls if c.action == "RunInstances" and c.status == 200][-1:]
    sent = {k: v for k, v in call.params.items() if k.startswith("BlockDeviceMapping.")}
    assert sent == {
        "BlockDeviceMapping.1.DeviceName": "/dev/sda1",
        "BlockDeviceMapping.1.Ebs.VolumeInitializationRate": "250",
        "BlockDeviceMapping.2.DeviceName": "/dev/sdf",
        "BlockDeviceMapping.2.Ebs.VolumeInitializationRate": "250",
    }


@pytest.mark.parametrize("rate", [99, 301, 200.0, True])
def test_an_initialization_rate_outside_ebs_range_is_a_config_error(tmp_path, endpoint, rate):
    result = restore(tmp_path, SERVER="web01", VOLUME_INITIALIZATION_RATE=rate)
    assert result.returncode == 2
    assert "VOLUME_INITIALIZATION_RATE must be None or a whole number of MiB/s from 100" in (
        result.stderr
    )
    assert endpoint.count() == 0


def live_of(ec2, server: str) -> list[str]:
    """The live instances a restore launched for a server (drills aside)."""
    filters = [{"Name": "tag:ec2-to-ami:restored-server", "Values": [server]},
               {"Name": "instance-state-name", "Values": ["pending", "running"]}]  # fmt: skip
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def test_a_repeated_restore_never_launches_a_second_server(ec2, backed_up, tmp_path, endpoint):
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    first = restore(tmp_path, SERVER="web01")
    assert first.returncode == 0, first.stderr
    [earlier] = live_of(ec2, "web01")
    for args in ([], ["--dry-run"]):
        again = restore(tmp_path, *args, SERVER="web01")
        assert again.returncode == 1
        assert f"web01 was restored already and that instance still runs: {earlier}" in (
            again.stderr
        )
        assert "--replace" in again.stderr and "Traceback" not in again.stderr
    assert live_of(ec2, "web01") == [earlier]
    token = re.search(r"client token: (\S+)", first.stdout).group(1)
    assert f"If that restore was interrupted, finish it with --client-token {token}." in (
        again.stderr  # the message after an interruption says what to do
    )
    rerun = restore(tmp_path, "--client-token", token, SERVER="web01")
    assert rerun.returncode == 0, rerun.stderr  # the same token: the same instance
    assert live_of(ec2, "web01") == [earlier]
    replaced = restore(tmp_path, "--replace", SERVER="web01")
    assert replaced.returncode == 0 and len(live_of(ec2, "web01")) == 2


def test_a_fleet_rerun_skips_the_servers_already_restored(ec2, backed_up, tmp_path):
    ec2.terminate_instances(InstanceIds=list(backed_up.instances.values()))
    assert restore(tmp_path, "--server", "web01", SERVER=None).returncode == 0
    result = restore(tmp_path, "--server", "web01", "--server", "app01", "--json")
    assert result.returncode == 0, result.stderr
    document = documented(result, "restore-result")
    assert document["already_restored"] == ["web01"]
    assert len(live_of(ec2, "web01")) == 1 and len(live_of(ec2, "app01")) == 1


def test_ctrl_c_after_launch_says_what_was_launched_and_how_to_finish(
    ec2, backed_up, tmp_path, monkeypatch
):
    from ec2ami.restore import launch

    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    original = launch.advance
    monkeypatch.setattr(launch, "advance", interrupt)  # while it waits for the instance
    result = restore(tmp_path, SERVER="web01")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if "web01: launched i-" in x]
    new_id = line.split("launched ")[1].split(",")[0]
    token = result.stderr.split("--client-token ")[1].split()[0]
    assert f"to finish it, run: {sys.executable} {ROOT / 'ami_to_ec2.py'} --config" in result.stderr
    monkeypatch.setattr(launch, "advance", original)
    again = restore(tmp_path, "--client-token", token, SERVER="web01")  # the printed command
    assert again.returncode == 0, again.stderr
    assert new_id in again.stdout  # the same instance, finished, not a second one


def test_a_restore_that_waits_says_so_at_least_every_heartbeat(
    ec2, backed_up, tmp_path, monkeypatch
):
    from ec2ami import live

    monkeypatch.setattr(live, "HEARTBEAT_SECONDS", 0.2)
    SETTINGS.instance_pending_seconds = 1.0
    ec2.terminate_instances(InstanceIds=[backed_up.instances["web01"]])
    result = restore(tmp_path, SERVER="web01", WAIT="running")
    assert result.returncode == 0, result.stderr
    beats = [line for line in result.stderr.splitlines() if "still waiting" in line]
    assert beats and "web01 launched (i-" in beats[0]
