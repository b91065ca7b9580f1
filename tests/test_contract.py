"""The two standalone scripts agree on the tag contract, and the restore's pure parts behave."""

from __future__ import annotations

import email
import logging
import re
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ec2ami.backup import config as backup_config
from ec2ami.backup.config import ServerSpec
from ec2ami.backup.tags import backup_tags, contract_tags, instance_tags, launch_tags
from ec2ami.contract import (
    LAUNCH_TAGS_MAX,
    LAUNCH_VERSION,
    TAG_LAUNCH,
    joined_value,
    split_value,
)
from ec2ami.restore.config import DEFAULTS, RestoreError, validate_config
from ec2ami.restore.network import planned_elastic_ips
from ec2ami.restore.plan import plan_launch
from ec2ami.restore.recorded import Recorded, read_launch, read_recorded
from ec2ami.restore.userdata import build_user_data


@given(st.text(min_size=1, max_size=2000))
def test_a_long_value_split_by_the_backup_is_read_back_whole_by_the_restore(value):
    tags = dict(split_value("k", value))
    assert all(len(v) <= 256 for v in tags.values())
    assert joined_value(tags, "k") == value


def test_restore_reads_what_the_backup_wrote():
    spec = ServerSpec("web01", "i-0123456789abcdef0", 7)
    instance = {
        "InstanceType": "t3.small",
        "SubnetId": "subnet-1",
        "SecurityGroups": [{"GroupId": f"sg-{n:017x}"} for n in range(16)],
        "KeyName": "ops",
        "IamInstanceProfile": {"Arn": "arn:aws:iam::1:instance-profile/" + "p" * 300},
        "PrivateIpAddress": "10.0.0.5",
        "Platform": "windows",
        "MetadataOptions": {"HttpTokens": "required"},
        "Tags": [{"Key": "Name", "Value": "web01"}, {"Key": "Env", "Value": "prod"}],
    }
    config = backup_config.validate_config(
        {"SERVERS": [{"name": "web01", "instance_id": spec.instance_id}], "POOL": "prod"}
    )
    fixed = contract_tags(spec, config, datetime.now(timezone.utc), "run-1", instance, "eipalloc-1")
    tags, dropped = backup_tags(fixed, {"Env": "ignored"}, instance_tags(instance))
    assert dropped == []
    recorded = read_recorded({"ImageId": "ami-1", "Tags": tags})
    assert recorded.server == "web01" and recorded.platform == "windows"
    assert recorded.security_group_ids == [g["GroupId"] for g in instance["SecurityGroups"]]
    assert recorded.instance_profile == instance["IamInstanceProfile"]["Arn"]
    assert recorded.instance_tags == {"Name": "web01", "Env": "prod"}  # the instance's value wins
    assert (recorded.elastic_ip, recorded.http_tokens) == ("eipalloc-1", "required")


def plan_for(recorded: Recorded, **settings):
    config = validate_config({**DEFAULTS, "SERVER": "web01", **settings})
    image = {"ImageId": "ami-12345678", "BlockDeviceMappings": [
        {"DeviceName": "/dev/sda1", "Ebs": {"SnapshotId": "snap-1"}},
        {"DeviceName": "/dev/sdb", "Ebs": {"SnapshotId": "snap-2"}},
        {"DeviceName": "xvdc", "VirtualName": "ephemeral0"},
    ]}  # fmt: skip
    return plan_launch(config, image, recorded, False, "token")


RECORDED = Recorded(server="web01", instance_type="t3.small", subnet_id="subnet-1")


def test_imdsv2_is_required_when_nothing_was_recorded():
    assert plan_for(RECORDED).params["MetadataOptions"]["HttpTokens"] == "required"


def test_volume_settings_apply_to_every_ebs_volume():
    plan = plan_for(RECORDED, VOLUME_TYPE="gp3", KMS_KEY_ID="alias/backup")
    assert plan.params["BlockDeviceMappings"] == [
        {
            "DeviceName": d,
            "Ebs": {"VolumeType": "gp3", "Encrypted": True, "KmsKeyId": "alias/backup"},
        }
        for d in ("/dev/sda1", "/dev/sdb")
    ]


def test_an_initialization_rate_goes_to_every_volume_made_from_a_snapshot():
    plan = plan_for(RECORDED, VOLUME_INITIALIZATION_RATE=300, DELETE_ON_TERMINATION=True)
    assert plan.params["BlockDeviceMappings"] == [
        {"DeviceName": d, "Ebs": {"DeleteOnTermination": True, "VolumeInitializationRate": 300}}
        for d in ("/dev/sda1", "/dev/sdb")
    ]
    assert "BlockDeviceMappings" not in plan_for(RECORDED).params


def test_instance_profile_by_name_or_arn():
    assert plan_for(RECORDED, IAM_INSTANCE_PROFILE="app").params["IamInstanceProfile"] == {
        "Name": "app"
    }
    arn = "arn:aws:iam::1:instance-profile/app"
    assert plan_for(RECORDED, IAM_INSTANCE_PROFILE=arn).params["IamInstanceProfile"] == {"Arn": arn}


def test_linux_host_name_alone_is_cloud_config():
    data = build_user_data("linux", "db01.corp.example", None)
    assert data.startswith("#cloud-config\n")
    assert "hostname: db01\n" in data and "fqdn: db01.corp.example\n" in data


def test_linux_host_name_with_a_cloud_config_keeps_both_parts():
    data = build_user_data("linux", "db01", "#cloud-config\npackages: [htop]\n")
    parts = [p for p in email.message_from_string(data).walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/cloud-config"]
    assert "packages: [htop]" in parts[1].get_payload(decode=True).decode()


def test_user_data_without_host_name_passes_unchanged():
    assert (
        build_user_data("windows", None, "<powershell>x</powershell>")
        == "<powershell>x</powershell>"
    )


def test_windows_host_name_longer_than_netbios_allows_is_refused():
    with pytest.raises(RestoreError, match="15 characters"):
        build_user_data("windows", "a-very-long-hostname", None)


def test_ec2launch_document_cannot_be_merged_with_a_host_name():
    with pytest.raises(RestoreError, match="setHostName"):
        build_user_data("windows", "web01", "version: 1.1\ntasks: []\n")


COPY = Recorded(server="web01", instance_type="t3.small", subnet_id="subnet-1",
                security_group_ids=["sg-1", "sg-2"], private_ip="10.0.0.5",
                elastic_ip="eipalloc-1", key_name="ops", source_region="us-east-1")  # fmt: skip


def test_a_copy_restored_in_its_source_region_uses_what_was_recorded():
    plan = plan_launch(validate_config({**DEFAULTS, "SERVER": "web01"}),
                       {"ImageId": "ami-1"}, COPY, False, "t", "us-east-1")  # fmt: skip
    [nic] = plan.params["NetworkInterfaces"]
    assert nic["SubnetId"] == "subnet-1" and plan.elastic_ip == "eipalloc-1"


def test_a_copy_in_another_region_never_uses_the_source_regions_ids():
    region_map = {"us-west-2": {"subnet-1": "subnet-9", "sg-1": "sg-8", "sg-2": "sg-9"}}
    config = validate_config({**DEFAULTS, "SERVER": "web01", "REGION_MAP": region_map})
    plan = plan_launch(config, {"ImageId": "ami-1"}, COPY, False, "t", "us-west-2")
    [nic] = plan.params["NetworkInterfaces"]
    assert nic["SubnetId"] == "subnet-9" and nic["Groups"] == ["sg-8", "sg-9"]
    assert plan.elastic_ip is None and "PrivateIpAddress" not in nic
    assert any("Elastic IP eipalloc-1 is in us-east-1" in w for w in plan.warnings)


def test_a_partly_mapped_copy_fails_naming_both_settings():
    region_map = {"us-west-2": {"subnet-1": "subnet-9", "sg-1": "sg-8"}}  # sg-2 unmapped
    config = validate_config({**DEFAULTS, "SERVER": "web01", "REGION_MAP": region_map})
    with pytest.raises(RestoreError, match="Set SUBNET_ID and SECURITY_GROUP_IDS"):
        plan_launch(config, {"ImageId": "ami-1"}, COPY, False, "t", "us-west-2")


def test_a_launch_record_too_long_for_its_tags_keeps_the_secondary_ips_by_count(caplog):
    nics = [{"index": i, "subnet": "subnet-0123456789abcdef0", "groups": ["sg-0123456789abcdef0"],
             "ip": f"10.0.{i}.4", "secondary": [f"10.0.{i}.{n}" for n in range(10, 50)],
             "description": f"interface {i}"} for i in range(4)]  # fmt: skip
    record = {"v": LAUNCH_VERSION, "interfaces": nics}
    spec = ServerSpec("db01", "i-0123456789abcdef0", 7)
    with caplog.at_level(logging.WARNING, logger="ec2_to_ami"):
        tags = dict(launch_tags(spec, record))
    assert 1 < len(tags) <= LAUNCH_TAGS_MAX
    assert "secondary private IPs recorded by count only" in caplog.text
    read = read_launch(joined_value(tags, TAG_LAUNCH), Recorded())
    launch, note, completeness = read
    assert (note, completeness) == (None, "full")
    assert [len(n["secondary"]) for n in launch["interfaces"]] == [40, 40, 40, 40]
    assert [n["description"] for n in launch["interfaces"]] == [f"interface {i}" for i in range(4)]


def test_count_with_a_host_name_gives_each_instance_its_own_as_its_name():
    config = validate_config({**DEFAULTS, "SERVER": "web01", "COUNT": 3, "HOSTNAME": "web"})
    plan = plan_launch(config, {"ImageId": "ami-1"}, COPY, False, "t", "us-east-1")
    names = [re.findall(r"^hostname: (\S+)$", p["UserData"], re.M)
             for p in [plan.params, *plan.others]]  # fmt: skip
    assert names == [["web"], ["web-2"], ["web-3"]]


def test_a_record_that_gives_way_keeps_each_elastic_ips_exact_secondary_address():
    nics = [{"index": i, "subnet": "subnet-0123456789abcdef0", "groups": ["sg-0123456789abcdef0"],
             "ip": f"10.0.{i}.4", "secondary": [f"10.0.{i}.{n}" for n in range(10, 50)],
             "description": f"interface {i}"} for i in range(4)]  # fmt: skip
    eip = {"allocation": "eipalloc-0123456789abcdef0", "index": 1, "ip": "10.0.1.25"}
    record = {"v": LAUNCH_VERSION, "interfaces": nics, "elastic_ips": [eip]}
    tags = dict(launch_tags(ServerSpec("db01", "i-0123456789abcdef0", 7), record))
    launch = read_launch(joined_value(tags, TAG_LAUNCH), Recorded())[0]
    assert launch["interfaces"][1]["secondary"] == nics[1]["secondary"]  # kept exact
    assert launch["interfaces"][0]["secondary"] == [None] * 40  # the others by count
    config = validate_config({**DEFAULTS, "SERVER": "db01", "ELASTIC_IP": "same"})
    warnings: list[str] = []
    [planned] = planned_elastic_ips(config, launch, launch["interfaces"], warnings)
    assert (planned["index"], planned["slot"], warnings) == (1, 1 + 15, [])
    # An older record, by count only: the Elastic IP still goes on a secondary address.
    counted = {**launch, "interfaces": [{**n, "secondary": [None] * 40}
                                        for n in launch["interfaces"]]}  # fmt: skip
    [planned] = planned_elastic_ips(config, counted, counted["interfaces"], warnings)
    assert (planned["index"], planned["slot"]) == (1, 1)
    assert "sat on secondary address 10.0.1.25" in warnings[0]


def test_the_tags_a_backup_selects_by_come_first_and_a_restore_without_them_warns():
    own = [{"Key": f"team-{n:02}", "Value": "x"} for n in range(60)]
    instance = {"Tags": [*own, {"Key": "zz-backup", "Value": "yes"}, {"Key": "Name", "Value": "a"}]}
    copied = instance_tags(instance, {"zz-backup": "yes"})
    tags, dropped = backup_tags([("ec2-to-ami:managed-by", "ec2-to-ami")], {}, copied)
    kept = {t["Key"] for t in tags}
    assert {"Name", "zz-backup"} <= kept and dropped and "zz-backup" not in dropped
    recorded = Recorded(server="a", instance_type="t3.small", subnet_id="subnet-1",
                        select_tag_keys=["zz-backup"])  # fmt: skip
    config = validate_config({**DEFAULTS, "SERVER": "a"})
    plan = plan_launch(config, {"ImageId": "ami-1"}, recorded, False, "t", "us-east-1")
    assert any("no zz-backup tag, which the backup that made this image selects" in w
               for w in plan.warnings)  # fmt: skip
    tagged = replace(recorded, instance_tags={"zz-backup": "yes"})
    plan = plan_launch(config, {"ImageId": "ami-1"}, tagged, False, "t", "us-east-1")
    assert not any("selects servers by" in w for w in plan.warnings)
