"""The harness's patches make moto behave like EC2, and its faults look like EC2's."""

from __future__ import annotations

import time
from datetime import timedelta

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localaws.endpoint import (
    LINUX_AMI,
    SETTINGS,
    TokenBuckets,
    bucket_of,
    finish_pending,
    resize_volume,
    write_blocks,
)
from tests.conftest import REGION, tags_of

IMAGE_TAGS = [{"Key": "who", "Value": "test"}]


def image_of(ec2, instance_id: str, name: str = "img-1", specs=None) -> str:
    specs = specs or [
        {"ResourceType": "image", "Tags": IMAGE_TAGS},
        {"ResourceType": "snapshot", "Tags": IMAGE_TAGS},
    ]
    return ec2.create_image(InstanceId=instance_id, Name=name, TagSpecifications=specs)["ImageId"]


def an_instance(ec2) -> str:
    return ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1)["Instances"][0][
        "InstanceId"
    ]


def snapshot_ids(ec2) -> set[str]:
    snaps = ec2.describe_snapshots(Filters=[{"Name": "owner-id", "Values": ["123456789012"]}])
    return {s["SnapshotId"] for s in snaps["Snapshots"]}


def test_p1_create_image_tags_snapshots_at_creation(ec2):
    image_id = image_of(ec2, an_instance(ec2))
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert tags_of(snapshot) == {"who": "test"}
    assert tags_of(image) == {"who": "test"}


def test_p2_duplicate_image_name_is_refused(ec2):
    instance_id = an_instance(ec2)
    first = image_of(ec2, instance_id, name="same-name")
    with pytest.raises(ClientError) as err:
        image_of(ec2, instance_id, name="same-name")
    assert err.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    assert first in err.value.response["Error"]["Message"]


def test_p3_new_image_is_pending_then_available(ec2):
    SETTINGS.pending_seconds = 1.0  # ample for the next request, which sees it pending
    image_id = image_of(ec2, an_instance(ec2))
    ready_by = time.monotonic() + 1.0
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "pending"
    time.sleep(max(0.0, ready_by - time.monotonic()) + 0.05)
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available"


def test_p3_image_of_a_marked_instance_ends_failed(ec2):
    instance_id = an_instance(ec2)
    SETTINGS.pending_seconds = 60
    SETTINGS.fail_images_of.add(instance_id)
    image_id = image_of(ec2, instance_id)
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "pending"
    finish_pending()
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "failed"


def test_p4_deregister_deletes_associated_snapshots_only_when_asked(ec2):
    instance_id = an_instance(ec2)
    kept, deleted = image_of(ec2, instance_id, "img-a"), image_of(ec2, instance_id, "img-b")
    before = snapshot_ids(ec2)
    ec2.deregister_image(ImageId=kept)
    assert snapshot_ids(ec2) == before  # EC2's default: snapshots stay

    response = ec2.deregister_image(ImageId=deleted, DeleteAssociatedSnapshots=True)
    [result] = response["DeleteSnapshotResults"]
    assert result["ReturnCode"] == "success"
    assert snapshot_ids(ec2) == before - {result["SnapshotId"]}


def test_p5_terminated_instance_cannot_be_imaged(ec2):
    instance_id = an_instance(ec2)
    ec2.terminate_instances(InstanceIds=[instance_id])
    with pytest.raises(ClientError) as err:
        image_of(ec2, instance_id)
    assert err.value.response["Error"]["Code"] == "IncorrectInstanceState"


@pytest.mark.parametrize(
    ("code", "status"), [("RequestLimitExceeded", 503), ("InternalError", 500)]
)
def test_injected_fault_reads_as_an_ec2_error_and_is_then_retried(endpoint, code, status):
    import boto3

    no_retry = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint.url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    endpoint.inject("DescribeImages", code, status, times=1)
    with pytest.raises(ClientError) as err:
        no_retry.describe_images(Owners=["self"])
    assert err.value.response["Error"]["Code"] == code
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    no_retry.describe_images(Owners=["self"])  # the fault was used up
    assert endpoint.count("DescribeImages", ok=False) == 1
    assert endpoint.count("DescribeImages", ok=True) == 1


def test_fault_matches_only_the_named_parameters(ec2, endpoint):
    first, second = an_instance(ec2), an_instance(ec2)
    endpoint.inject("CreateImage", "InvalidParameterValue", times=5, InstanceId=second)
    image_of(ec2, first, "img-ok")
    with pytest.raises(ClientError):
        image_of(ec2, second, "refused")


def launch_one(ec2, **extra) -> str:
    return ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, **extra)["Instances"][0][
        "InstanceId"
    ]


def state_of(ec2, instance_id: str) -> str:
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    return reservations[0]["Instances"][0]["State"]["Name"]


def test_p6_client_token_returns_the_same_reservation(ec2):
    first = launch_one(ec2, ClientToken="token-1")
    again = launch_one(ec2, ClientToken="token-1")
    assert first == again
    assert launch_one(ec2, ClientToken="token-2") != first
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=LINUX_AMI, MinCount=2, MaxCount=2, ClientToken="token-1")
    assert err.value.response["Error"]["Code"] == "IdempotentParameterMismatch"


def test_p7_termination_protection_is_honoured(ec2):
    instance_id = launch_one(ec2, DisableApiTermination=True)
    with pytest.raises(ClientError) as err:
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert err.value.response["Error"]["Code"] == "OperationNotPermitted"
    attribute = ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="disableApiTermination"
    )
    assert attribute["DisableApiTermination"]["Value"] is True


def test_p8_new_instance_is_pending_and_refuses_an_elastic_ip_until_running(ec2):
    SETTINGS.instance_pending_seconds = 3600
    instance_id = launch_one(ec2)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    assert state_of(ec2, instance_id) == "pending"
    with pytest.raises(ClientError) as err:
        ec2.associate_address(AllocationId=allocation, InstanceId=instance_id)
    assert err.value.response["Error"]["Code"] == "IncorrectInstanceState"
    finish_pending()
    assert state_of(ec2, instance_id) == "running"
    ec2.associate_address(AllocationId=allocation, InstanceId=instance_id)


def test_p9_termination_frees_the_elastic_ip_and_private_ip(ec2):
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    instance_id = launch_one(ec2, SubnetId=subnet, PrivateIpAddress="10.9.1.50")
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=allocation, InstanceId=instance_id)
    ec2.terminate_instances(InstanceIds=[instance_id])
    [address] = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"]
    assert not address.get("InstanceId")
    ip_filter = [{"Name": "addresses.private-ip-address", "Values": ["10.9.1.50"]}]
    assert ec2.describe_network_interfaces(Filters=ip_filter)["NetworkInterfaces"] == []
    launch_one(ec2, SubnetId=subnet, PrivateIpAddress="10.9.1.50")  # the address is free again


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("category", "size", "rate"),
    [("CreateImage", 50, 5), ("DeregisterImage", 100, 5), ("CreateTags", 100, 10),
     ("CopyImage", 100, 1), ("RunInstances", 5, 2), ("DescribeImages", 100, 20),
     ("DescribeInstances unfiltered", 50, 10), ("RunInstances instances", 1000, 2)],
)  # fmt: skip
def test_token_bucket_has_ec2s_size_and_refill_rate(category, size, rate):
    clock = FakeClock()
    buckets = TokenBuckets(clock)
    assert all(buckets.take("us-east-1", category) for _ in range(size))
    assert not buckets.take("us-east-1", category)
    clock.now += 1.0
    assert sum(buckets.take("us-east-1", category) for _ in range(rate + 3)) == rate
    clock.now += 3600
    assert sum(buckets.take("us-east-1", category) for _ in range(size + 3)) == size  # capped


def test_token_buckets_are_per_region_and_per_api():
    buckets = TokenBuckets(FakeClock())
    for _ in range(50):
        buckets.take("us-east-1", "CreateImage")
    assert not buckets.take("us-east-1", "CreateImage")
    assert buckets.take("us-west-2", "CreateImage")
    assert buckets.take("us-east-1", "EnableImageDeprecation")  # mutating too, its own bucket


@pytest.mark.parametrize(
    ("action", "params", "bucket"),
    [
        ("CreateImage", {"InstanceId": "i-1"}, "CreateImage"),
        ("DeregisterImage", {}, "DeregisterImage"),
        ("DeleteSnapshot", {}, "DeleteSnapshot"),
        ("RunInstances", {}, "RunInstances"),
        ("DescribeImages", {"Filter.1.Name": "tag:x"}, "DescribeImages"),
        ("DescribeInstances", {"InstanceId.1": "i-1"}, "DescribeInstances"),
        ("DescribeInstances", {}, "DescribeInstances unfiltered"),
        ("DescribeAddresses", {}, "DescribeAddresses"),  # not among the page's seven
    ],
)
def test_calls_draw_from_their_buckets(action, params, bucket):
    assert bucket_of(action, params) == bucket


def test_throttled_endpoint_refuses_the_51st_mutating_call_with_request_limit_exceeded(endpoint):
    import boto3

    client = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=endpoint.url,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )
    endpoint.throttle()
    started, made = time.monotonic(), 0
    with pytest.raises(ClientError) as err:
        while made < 200:
            client.create_key_pair(KeyName=f"k{made}")
            made += 1
    elapsed = time.monotonic() - started
    assert err.value.response["Error"]["Code"] == "RequestLimitExceeded"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert 50 <= made <= 50 + 5 * elapsed + 1  # the burst, plus what refilled meanwhile
    client.describe_key_pairs(KeyNames=["k1"])  # another bucket still has tokens
    time.sleep(0.25)
    client.create_key_pair(KeyName="one-more")  # a token is back after 0.2 s


def ssm_client(endpoint):
    import boto3

    return boto3.client("ssm", region_name=REGION, endpoint_url=endpoint.url)


def test_s1_instances_are_managed_and_online_unless_told(ec2, endpoint):
    online, offline, unmanaged = an_instance(ec2), an_instance(ec2), an_instance(ec2)
    SETTINGS.ssm_offline, SETTINGS.ssm_unmanaged = {offline}, {unmanaged}
    filters = [{"Key": "InstanceIds", "Values": [online, offline, unmanaged]}]
    listed = ssm_client(endpoint).describe_instance_information(Filters=filters)
    pings = {i["InstanceId"]: i["PingStatus"] for i in listed["InstanceInformationList"]}
    assert pings == {online: "Online", offline: "ConnectionLost"}


@pytest.mark.parametrize(("result", "status"), [(None, "Success"), ("Failed", "Failed"),
                                               ("Hang", "InProgress")])  # fmt: skip
def test_s2_command_runs_on_its_instance_with_the_chosen_outcome(ec2, endpoint, result, status):
    target, _bystander = an_instance(ec2), an_instance(ec2)
    if result:
        SETTINGS.ssm_results = {"do-thing": result}
    ssm = ssm_client(endpoint)
    command = ssm.send_command(
        InstanceIds=[target], DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["do-thing"]},
    )["Command"]  # fmt: skip
    assert command["InstanceIds"] == [target]
    invocation = ssm.get_command_invocation(CommandId=command["CommandId"], InstanceId=target)
    assert invocation["Status"] == status


def test_s4_command_invocations_are_listed_by_command_with_their_exit_codes(ec2, endpoint):
    SETTINGS.ssm_results = {"bad-thing": "Failed"}
    ids = sorted(an_instance(ec2) for _ in range(3))
    ssm = ssm_client(endpoint)
    sent = {
        text: ssm.send_command(InstanceIds=ids, DocumentName="AWS-RunShellScript",
                               Parameters={"commands": [text]})["Command"]["CommandId"]
        for text in ("good-thing", "bad-thing")
    }  # fmt: skip
    pages = ssm.get_paginator("list_command_invocations").paginate(
        CommandId=sent["bad-thing"], Details=True, PaginationConfig={"PageSize": 2}
    )
    listed = [i for page in pages for i in page["CommandInvocations"]]
    assert sorted(i["InstanceId"] for i in listed) == ids
    assert {(i["Status"], i["CommandPlugins"][0]["ResponseCode"]) for i in listed} == {
        ("Failed", 1)
    }
    [good] = ssm.list_command_invocations(CommandId=sent["good-thing"], InstanceId=ids[0])[
        "CommandInvocations"
    ]
    assert good["Status"] == "Success" and "CommandPlugins" not in good


def test_s3_vss_document_makes_a_tagged_image_with_its_reserved_tags(ec2, endpoint):
    instance_id = an_instance(ec2)
    ssm_client(endpoint).send_command(
        InstanceIds=[instance_id], DocumentName="AWSEC2-CreateVssSnapshot",
        Parameters={"CreateAmi": ["True"], "AmiName": ["vss-image-1"],
                    "tags": ["Key=a,Value=1;Key=b,Value=2"]},
    )  # fmt: skip
    [image] = ec2.describe_images(Filters=[{"Name": "name", "Values": ["vss-image-1"]}])["Images"]
    tags = tags_of(image)
    assert (tags["a"], tags["b"], tags["AppConsistent"]) == ("1", "2", "true")
    assert "AwsVssConfig" in tags
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert tags_of(snapshot)["Device"] == "/dev/sda1"


def regional(endpoint, service: str, region: str):
    import boto3

    return boto3.client(service, region_name=region, endpoint_url=endpoint.url)


def test_p10_copy_image_carries_tags_encrypts_and_honours_its_client_token(ec2, endpoint):
    dr = regional(endpoint, "ec2", "us-west-2")
    key = regional(endpoint, "kms", "us-west-2").create_key()["KeyMetadata"]["Arn"]
    source = image_of(ec2, an_instance(ec2))
    finish_pending()
    specs = [{"ResourceType": "image", "Tags": [{"Key": "from", "Value": REGION}]},
             {"ResourceType": "snapshot", "Tags": [{"Key": "snap", "Value": "yes"}]}]  # fmt: skip
    params = {"SourceImageId": source, "SourceRegion": REGION, "Name": "img-1",
              "CopyImageTags": True, "TagSpecifications": specs, "ClientToken": "t-1",
              "Encrypted": True, "KmsKeyId": key}  # fmt: skip
    copy = dr.copy_image(**params)["ImageId"]
    assert dr.copy_image(**params)["ImageId"] == copy  # the same token: the same copy
    image = dr.describe_images(ImageIds=[copy])["Images"][0]
    assert tags_of(image) == {"who": "test", "from": REGION}
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    snapshot = dr.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert tags_of(snapshot) == {"snap": "yes"}
    assert snapshot["Encrypted"] and snapshot["KmsKeyId"] == key
    plain = dr.copy_image(SourceImageId=source, SourceRegion=REGION, Name="img-2")["ImageId"]
    assert tags_of(dr.describe_images(ImageIds=[plain])["Images"][0]) == {}  # no CopyImageTags


def test_p10_a_copy_pends_then_ends_available_or_failed_per_region(ec2, endpoint):
    source = image_of(ec2, an_instance(ec2))
    finish_pending()
    SETTINGS.copy_pending_seconds, SETTINGS.fail_copies_to = 3600, {"eu-west-1"}
    states = {}
    for region in ("us-west-2", "eu-west-1"):
        dr = regional(endpoint, "ec2", region)
        copy = dr.copy_image(SourceImageId=source, SourceRegion=REGION, Name="copy-1")["ImageId"]
        assert dr.describe_images(ImageIds=[copy])["Images"][0]["State"] == "pending"
        states[region] = (dr, copy)
    finish_pending()
    finals = {
        r: d.describe_images(ImageIds=[c])["Images"][0]["State"] for r, (d, c) in states.items()
    }
    assert finals == {"us-west-2": "available", "eu-west-1": "failed"}


def test_p11_image_deprecation_is_recorded_to_the_minute(ec2):
    image_id = image_of(ec2, an_instance(ec2))
    ec2.enable_image_deprecation(ImageId=image_id, DeprecateAt="2030-01-02T03:04:35Z")
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["DeprecationTime"] == "2030-01-02T03:05:00.000Z"
    ec2.disable_image_deprecation(ImageId=image_id)
    assert "DeprecationTime" not in ec2.describe_images(ImageIds=[image_id])["Images"][0]


def test_p12_encrypted_instance_gives_an_encrypted_image_under_the_aws_managed_key(ec2, endpoint):
    encrypted, plain = an_instance(ec2), an_instance(ec2)
    SETTINGS.encrypt_images_of[encrypted] = None
    images = ec2.describe_images(ImageIds=[image_of(ec2, encrypted), image_of(ec2, plain, "img-2")])
    flags = {i["Name"]: i["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] for i in images["Images"]}
    assert flags == {"img-1": True, "img-2": False}
    [image] = [i for i in images["Images"] if i["Name"] == "img-1"]
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    key = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["KmsKeyId"]
    metadata = regional(endpoint, "kms", REGION).describe_key(KeyId=key)["KeyMetadata"]
    assert metadata["KeyManager"] == "AWS"


def test_a_fault_can_match_one_region(ec2, endpoint):
    endpoint.inject("DescribeVpcs", "UnauthorizedOperation", status=403, Region="us-west-2")
    ec2.describe_vpcs()  # us-east-1: untouched
    with pytest.raises(ClientError):
        regional(endpoint, "ec2", "us-west-2").describe_vpcs()


def test_p13_images_can_be_found_by_the_snapshot_they_use(ec2):
    image_id = image_of(ec2, an_instance(ec2))
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    found = ec2.describe_images(
        Owners=["self"],
        Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": [snapshot_id]}],
    )["Images"]
    assert [i["ImageId"] for i in found] == [image_id]
    other = [{"Name": "block-device-mapping.snapshot-id", "Values": ["snap-0123456789abcdef0"]}]
    assert ec2.describe_images(Owners=["self"], Filters=other)["Images"] == []


def test_p14_a_deregistration_can_keep_its_snapshot_and_say_so(ec2):
    image_id = image_of(ec2, an_instance(ec2))
    before = snapshot_ids(ec2)
    SETTINGS.deregister_snapshot_code = "internal-error"
    result = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    assert [r["ReturnCode"] for r in result["DeleteSnapshotResults"]] == ["internal-error"]
    assert snapshot_ids(ec2) == before
    assert ec2.describe_images(Owners=["self"])["Images"] == []


def test_a_lost_answer_still_takes_effect_and_botocore_retries_into_it(ec2, endpoint):
    instance_id = an_instance(ec2)
    endpoint.inject("CreateImage", "InternalError", 500, lost=True)
    with pytest.raises(ClientError) as err:
        image_of(ec2, instance_id, name="lost-once")  # the retry meets the image the first made
    assert err.value.response["Error"]["Code"] == "InvalidAMIName.Duplicate"
    assert len(ec2.describe_images(Owners=["self"])["Images"]) == 1


def test_s1_instance_information_comes_in_pages_as_ssm_sends_it(ec2, endpoint):
    ec2.run_instances(ImageId=LINUX_AMI, MinCount=12, MaxCount=12)
    ssm = ssm_client(endpoint)
    first = ssm.describe_instance_information()
    assert len(first["InstanceInformationList"]) == 10 and first["NextToken"]
    rest = ssm.describe_instance_information(NextToken=first["NextToken"])
    assert len(rest["InstanceInformationList"]) == 2 and "NextToken" not in rest
    assert len(ssm.describe_instance_information(MaxResults=50)["InstanceInformationList"]) == 12


def test_p15_snapshots_are_listed_by_owner(ec2):
    image_of(ec2, an_instance(ec2))
    mine = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert {s["OwnerId"] for s in mine} == {"123456789012"}
    assert {s["SnapshotId"] for s in mine} == snapshot_ids(ec2)
    everyone = ec2.describe_snapshots()["Snapshots"]
    assert len(everyone) > len(mine)  # the snapshots behind moto's public AMIs
    assert ec2.describe_snapshots(OwnerIds=["111122223333"])["Snapshots"] == []


def test_p16_a_disabled_image_is_hidden_unless_asked_for_and_can_be_deregistered(ec2, fleet):
    image_id = ec2.create_image(InstanceId=fleet.instances["web01"], Name="p16")["ImageId"]
    ec2.disable_image(ImageId=image_id)
    assert ec2.describe_images(ImageIds=[image_id])["Images"] == []
    [image] = ec2.describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"]
    assert image["State"] == "disabled"
    ec2.enable_image(ImageId=image_id)
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] != "disabled"
    ec2.disable_image(ImageId=image_id)
    ec2.deregister_image(ImageId=image_id)
    assert ec2.describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"] == []


def test_p17_an_image_description_is_at_most_255_characters(ec2, fleet):
    instance_id = fleet.instances["web01"]
    ec2.create_image(InstanceId=instance_id, Name="p17-a", Description="d" * 255)
    with pytest.raises(ClientError) as err:
        ec2.create_image(InstanceId=instance_id, Name="p17-b", Description="d" * 256)
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_p18_a_protected_image_is_refused_deregistration_until_released(ec2, fleet):
    image_id = ec2.create_image(InstanceId=fleet.instances["web01"], Name="p18")["ImageId"]
    ec2.enable_image_deregistration_protection(ImageId=image_id, WithCooldown=False)
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert image["DeregistrationProtection"] == "enabled-without-cooldown"
    with pytest.raises(ClientError) as err:
        ec2.deregister_image(ImageId=image_id)
    assert err.value.response["Error"]["Code"] == "OperationNotPermitted"
    ec2.enable_image_deregistration_protection(ImageId=image_id, WithCooldown=True)
    ec2.disable_image_deregistration_protection(ImageId=image_id)
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    assert image["DeregistrationProtection"].startswith("disabled-until ")
    with pytest.raises(ClientError):
        ec2.deregister_image(ImageId=image_id)  # the cooldown holds it a day more
    ec2.enable_image_deregistration_protection(ImageId=image_id, WithCooldown=False)
    ec2.disable_image_deregistration_protection(ImageId=image_id)
    ec2.deregister_image(ImageId=image_id)


def test_p19_the_recycle_bin_keeps_deregistered_images_and_deleted_snapshots(ec2, fleet):
    SETTINGS.recycle_bin_days = 7
    image_id = ec2.create_image(InstanceId=fleet.instances["web01"], Name="p19")["ImageId"]
    [image] = ec2.describe_images(ImageIds=[image_id])["Images"]
    snapshot_id = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    [binned] = ec2.list_images_in_recycle_bin(ImageIds=[image_id])["Images"]
    assert binned["Name"] == "p19" and "Tags" not in binned
    assert binned["RecycleBinExitTime"] - binned["RecycleBinEnterTime"] == timedelta(days=7)
    [snapshot] = ec2.list_snapshots_in_recycle_bin(SnapshotIds=[snapshot_id])["Snapshots"]
    assert snapshot["SnapshotId"] == snapshot_id
    ec2.restore_image_from_recycle_bin(ImageId=image_id)
    ec2.restore_snapshot_from_recycle_bin(SnapshotId=snapshot_id)
    assert ec2.describe_images(ImageIds=[image_id])["Images"][0]["State"] == "available"
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    assert ec2.list_images_in_recycle_bin()["Images"] == []


def launched(ec2, **params) -> dict:
    """RunInstances, then the instance as DescribeInstances reports it."""
    instance_id = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, **params)[
        "Instances"][0]["InstanceId"]  # fmt: skip
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def test_p20_launch_attributes_round_trip_and_default_as_on_ec2(ec2, fleet):
    ec2.create_placement_group(GroupName="spread", Strategy="partition", PartitionCount=3)
    asked = {
        "Placement": {"Tenancy": "dedicated", "GroupName": "spread", "PartitionNumber": 2},
        "CpuOptions": {"CoreCount": 2, "ThreadsPerCore": 1},
        "PrivateDnsNameOptions": {"HostnameType": "resource-name",
                                  "EnableResourceNameDnsARecord": True,
                                  "EnableResourceNameDnsAAAARecord": False},
        "MaintenanceOptions": {"AutoRecovery": "disabled"},
        "EnclaveOptions": {"Enabled": True},
        "CapacityReservationSpecification": {"CapacityReservationPreference": "none"},
    }  # fmt: skip
    nics = [
        {"DeviceIndex": 0, "SubnetId": fleet.subnet_id, "Groups": fleet.group_ids,
         "SecondaryPrivateIpAddressCount": 2, "Description": "front"},
        {"DeviceIndex": 1, "SubnetId": fleet.subnet_id, "Groups": fleet.group_ids[:1],
         "DeleteOnTermination": False, "PrivateIpAddresses": [
             {"PrivateIpAddress": "10.20.1.200", "Primary": True},
             {"PrivateIpAddress": "10.20.1.201", "Primary": False}]},
    ]  # fmt: skip
    found = launched(ec2, InstanceType="m5.xlarge", NetworkInterfaces=nics, **asked)
    placement = {k: v for k, v in found["Placement"].items() if k != "AvailabilityZone"}
    assert placement == {"Tenancy": "dedicated", "GroupName": "spread", "PartitionNumber": 2}
    assert all(found[k] == v for k, v in asked.items() if k != "Placement")
    front, back = sorted(found["NetworkInterfaces"], key=lambda n: n["Attachment"]["DeviceIndex"])
    assert (front["Description"], len(front["PrivateIpAddresses"])) == ("front", 3)
    assert front["Attachment"]["DeleteOnTermination"] is True
    addresses = [a["PrivateIpAddress"] for a in back["PrivateIpAddresses"]]
    assert addresses == ["10.20.1.200", "10.20.1.201"]
    assert [g["GroupId"] for g in back["Groups"]] == fleet.group_ids[:1]  # its own, only
    assert back["Attachment"]["DeleteOnTermination"] is False
    assert sorted(g["GroupId"] for g in found["SecurityGroups"]) == sorted(fleet.group_ids)
    plain = launched(ec2, InstanceType="m5.xlarge", SubnetId=fleet.subnet_id)
    assert plain["CpuOptions"] == {"CoreCount": 2, "ThreadsPerCore": 2}  # the type's default
    assert plain["MaintenanceOptions"] == {"AutoRecovery": "default"}
    assert plain["PrivateDnsNameOptions"]["HostnameType"] == "ip-name"
    [nic] = plain["NetworkInterfaces"]
    assert (nic["Description"], nic["Attachment"]["DeleteOnTermination"]) == ("", True)


def test_p21_placement_groups_exist_or_are_refused(ec2, fleet):
    ec2.create_placement_group(GroupName="close", Strategy="cluster")
    [group] = ec2.describe_placement_groups(GroupNames=["close"])["PlacementGroups"]
    assert (group["GroupName"], group["Strategy"], group["State"]) == ("close", "cluster",
                                                                       "available")  # fmt: skip
    ec2.delete_placement_group(GroupName="close")
    with pytest.raises(ClientError) as err:
        ec2.describe_placement_groups(GroupNames=["close"])
    assert err.value.response["Error"]["Code"] == "InvalidPlacementGroup.Unknown"
    before = len(ec2.describe_instances()["Reservations"])
    with pytest.raises(ClientError) as err:
        launched(ec2, SubnetId=fleet.subnet_id, Placement={"GroupName": "close"})
    assert err.value.response["Error"]["Code"] == "InvalidPlacementGroup.Unknown"
    assert len(ec2.describe_instances()["Reservations"]) == before  # nothing launched


def test_p22_cpu_credits_are_kept_else_the_types_default(ec2, fleet):
    unlimited = launched(ec2, InstanceType="t2.micro", SubnetId=fleet.subnet_id,
                         CreditSpecification={"CpuCredits": "unlimited"})  # fmt: skip
    t2 = launched(ec2, InstanceType="t2.micro", SubnetId=fleet.subnet_id)
    t3 = launched(ec2, InstanceType="t3.micro", SubnetId=fleet.subnet_id)
    ids = [i["InstanceId"] for i in (unlimited, t2, t3)]
    answer = ec2.describe_instance_credit_specifications(InstanceIds=ids)
    found = {c["InstanceId"]: c["CpuCredits"] for c in answer["InstanceCreditSpecifications"]}
    assert [found[i] for i in ids] == ["unlimited", "standard", "unlimited"]
    data = [ec2.get_launch_template_data(InstanceId=i)["LaunchTemplateData"] for i in ids]
    assert [d["CreditSpecification"]["CpuCredits"] for d in data] == [
        "unlimited", "standard", "unlimited"]  # fmt: skip


def test_p23_an_elastic_ip_sits_on_the_address_it_was_given(ec2, fleet):
    nics = [{"DeviceIndex": 0, "SubnetId": fleet.subnet_id, "SecondaryPrivateIpAddressCount": 1}]
    found = launched(ec2, NetworkInterfaces=nics)
    [nic] = found["NetworkInterfaces"]
    primary = next(a for a in nic["PrivateIpAddresses"] if a["Primary"])["PrivateIpAddress"]
    secondary = next(a for a in nic["PrivateIpAddresses"] if not a["Primary"])["PrivateIpAddress"]
    first = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=first, InstanceId=found["InstanceId"])
    second = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(AllocationId=second, NetworkInterfaceId=nic["NetworkInterfaceId"],
                          PrivateIpAddress=secondary)  # fmt: skip
    addresses = ec2.describe_addresses(AllocationIds=[first, second])["Addresses"]
    by_id = {a["AllocationId"]: a for a in addresses}
    assert by_id[first]["PrivateIpAddress"] == primary
    assert by_id[second]["PrivateIpAddress"] == secondary
    assert by_id[second]["InstanceId"] == found["InstanceId"]
    again = ec2.describe_instances(InstanceIds=[found["InstanceId"]])["Reservations"][0]
    assert again["Instances"][0]["PublicIpAddress"] == by_id[first]["PublicIp"]
    ec2.terminate_instances(InstanceIds=[found["InstanceId"]])
    freed = ec2.describe_addresses(AllocationIds=[first, second])["Addresses"]
    assert not any(a.get("InstanceId") or a.get("NetworkInterfaceId") for a in freed)


def test_a_describe_of_one_named_resource_is_not_an_unfiltered_one():
    assert bucket_of("GetLaunchTemplateData", {"InstanceId": "i-1"}) == "GetLaunchTemplateData"
    assert bucket_of("DescribeVolumes", {}) == "DescribeVolumes unfiltered"


# The rows of "Request throttling for the Amazon EC2 API" (EC2 Developer Guide) for the
# calls this tool makes, typed from the page, December 2026: (size, refill per second).
DOCUMENTED = {
    "CreateImage": (50, 5), "EnableImageDeprecation": (50, 5), "AssociateAddress": (50, 5),
    "StopInstances": (50, 5), "DeregisterImage": (100, 5), "DeleteSnapshot": (100, 5),
    "CreateTags": (100, 10), "DeleteTags": (100, 10), "CopyImage": (100, 1),
    "ModifyImageAttribute": (100, 5), "ModifySnapshotAttribute": (100, 5),
    "TerminateInstances": (100, 5), "CreateVolume": (100, 5), "DeleteVolume": (100, 5),
    "RunInstances": (5, 2), "StartInstances": (5, 2), "DescribeImages": (100, 20),
    "GetLaunchTemplateData": (100, 20),
}  # fmt: skip


def test_the_limits_table_is_the_documented_one():
    from ec2ami.facts import RESOURCE_BUCKETS, UNFILTERED_BUCKET, request_bucket

    assert {a: request_bucket(a) for a in DOCUMENTED} == DOCUMENTED
    assert UNFILTERED_BUCKET == (50, 10)
    assert RESOURCE_BUCKETS == {
        "RunInstances": (1000, 2),
        "TerminateInstances": (1000, 20),
        "StartInstances": (1000, 2),
        "StopInstances": (1000, 20),
    }


def two_volume_instance(ec2) -> tuple[str, dict[str, str]]:
    """An instance with a 1 GiB root and a 2 GiB data volume, and its volumes by device."""
    disks = [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 1}},
             {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 2}}]  # fmt: skip
    instance = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1,
                                 BlockDeviceMappings=disks)["Instances"][0]  # fmt: skip
    described = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
    mappings = described["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]
    return instance["InstanceId"], {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in mappings}


def test_p24_the_direct_apis_list_what_each_snapshot_holds_page_by_page(ec2, endpoint):
    instance_id, volumes = two_volume_instance(ec2)
    write_blocks(volumes["/dev/sda1"], range(250))
    first = image_of(ec2, instance_id, "img-1")
    write_blocks(volumes["/dev/sda1"], [*range(240, 260), 2047])  # 10 rewritten, 11 new
    resize_volume(volumes["/dev/sda1"], 2)
    second = image_of(ec2, instance_id, "img-2")
    roots = [ec2.describe_images(ImageIds=[i])["Images"][0]["BlockDeviceMappings"][0]["Ebs"]
             for i in (first, second)]  # fmt: skip
    assert [r["VolumeSize"] for r in roots] == [1, 2]  # each snapshot keeps its volume's size
    ebs = boto3.client("ebs", region_name=REGION, endpoint_url=endpoint.url)
    page = ebs.list_snapshot_blocks(SnapshotId=roots[0]["SnapshotId"], MaxResults=100)
    rest = ebs.list_snapshot_blocks(SnapshotId=roots[0]["SnapshotId"], MaxResults=100,
                                    NextToken=page["NextToken"])  # fmt: skip
    assert [b["BlockIndex"] for b in page["Blocks"] + rest["Blocks"]] == list(range(200))
    assert (page["BlockSize"], page["VolumeSize"]) == (512 * 1024, 1)
    first_id, second_id = roots[0]["SnapshotId"], roots[1]["SnapshotId"]
    changed = ebs.list_changed_blocks(FirstSnapshotId=first_id, SecondSnapshotId=second_id)
    changed = changed["ChangedBlocks"]
    assert [b["BlockIndex"] for b in changed] == [*range(240, 260), 2047]
    assert [("FirstBlockToken" in b) for b in changed] == [True] * 10 + [False] * 11
    data = ec2.describe_images(ImageIds=[first])["Images"][0]["BlockDeviceMappings"][1]["Ebs"]
    with pytest.raises(ebs.exceptions.ValidationException):  # another volume's lineage
        ebs.list_changed_blocks(FirstSnapshotId=roots[0]["SnapshotId"],
                                SecondSnapshotId=data["SnapshotId"])  # fmt: skip


def test_p25_an_image_holds_every_volume_and_takes_them_all_away(ec2):
    instance_id, _ = two_volume_instance(ec2)
    image_id = image_of(ec2, instance_id)
    mappings = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"]
    assert [(m["DeviceName"], m["Ebs"]["VolumeSize"]) for m in mappings] == [
        ("/dev/sda1", 1), ("/dev/sdf", 2)
    ]  # fmt: skip
    snapshots = {m["Ebs"]["SnapshotId"] for m in mappings}
    described = ec2.describe_snapshots(SnapshotIds=sorted(snapshots))["Snapshots"]
    assert all(tags_of(s) == {"who": "test"} for s in described)  # P1 tags them all
    found = ec2.describe_images(
        Filters=[{"Name": "block-device-mapping.snapshot-id", "Values": sorted(snapshots)[-1:]}]
    )["Images"]
    assert [i["ImageId"] for i in found] == [image_id]
    result = ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
    assert {r["SnapshotId"] for r in result["DeleteSnapshotResults"]} == snapshots
    assert not snapshots & snapshot_ids(ec2)


def test_p26_an_archived_snapshot_reports_its_tier_and_full_size(ec2, endpoint):
    instance_id, volumes = two_volume_instance(ec2)
    write_blocks(volumes["/dev/sda1"], range(300))
    image_id = image_of(ec2, instance_id)
    root = ec2.describe_images(ImageIds=[image_id])["Images"][0]["BlockDeviceMappings"][0]
    snapshot_id = root["Ebs"]["SnapshotId"]
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["StorageTier"] == (
        "standard"
    )
    ec2.modify_snapshot_tier(SnapshotId=snapshot_id, StorageTier="archive")
    snapshot = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert (snapshot["StorageTier"], snapshot["FullSnapshotSizeInBytes"]) == (
        "archive", 300 * 512 * 1024
    )  # fmt: skip
    ebs = boto3.client("ebs", region_name=REGION, endpoint_url=endpoint.url)
    with pytest.raises(ebs.exceptions.ValidationException):
        ebs.list_snapshot_blocks(SnapshotId=snapshot_id)


def test_p27_a_launch_mapping_takes_the_images_snapshot_and_size(ec2):
    instance_id, _ = two_volume_instance(ec2)
    image_id = image_of(ec2, instance_id)
    changed = [{"DeviceName": "/dev/sdf", "Ebs": {"VolumeType": "gp3"}}]
    launched = ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                                 BlockDeviceMappings=changed)["Instances"][0]  # fmt: skip
    described = ec2.describe_instances(InstanceIds=[launched["InstanceId"]])
    volume_id = {
        m["DeviceName"]: m["Ebs"]["VolumeId"]
        for m in described["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]
    }["/dev/sdf"]
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert (volume["Size"], volume["VolumeType"], volume["SnapshotId"]) == (
        2, "gp3", image["BlockDeviceMappings"][1]["Ebs"]["SnapshotId"]
    )  # fmt: skip


def test_h1_a_resources_tags_are_the_ones_moto_would_find_by_scanning(ec2, endpoint):
    from moto.ec2.models import ec2_backends

    first, second = an_instance(ec2), an_instance(ec2)
    ec2.create_tags(
        Resources=[first], Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}]
    )
    ec2.create_tags(Resources=[second], Tags=[{"Key": "c", "Value": "3"}])
    backend = ec2_backends["123456789012"][REGION]
    for instance_id in (first, second):
        scanned = backend.describe_tags(filters={"resource-id": [instance_id]})
        assert backend.get_instance(instance_id).get_tags() == scanned
    described = ec2.describe_instances(Filters=[{"Name": "tag:a", "Values": ["1"]}])
    [instance] = [i for r in described["Reservations"] for i in r["Instances"]]
    assert instance["InstanceId"] == first
    assert {t["Key"]: t["Value"] for t in instance["Tags"]} == {"a": "1", "b": "2"}


def test_h2_h3_moto_reads_its_modules_and_a_response_classes_methods_as_it_would(endpoint):
    import moto.backends
    import moto.core.responses
    from moto.ec2.responses import EC2Response

    from localaws import endpoint as harness

    assert list(moto.backends.list_of_moto_modules()) == list(harness._original_moto_modules())
    assert {"ec2", "ssm", "iam", "ebs"} <= set(moto.backends.list_of_moto_modules())
    names = moto.core.responses.method_names_from_class(EC2Response)
    assert names == harness._original_method_names(EC2Response)
    assert "run_instances" in names


def test_h4_key_pairs_share_one_key_but_keep_their_own_names_and_ids(ec2, endpoint):
    first, second = ec2.create_key_pair(KeyName="a"), ec2.create_key_pair(KeyName="b")
    assert first["KeyPairId"] != second["KeyPairId"]
    assert first["KeyMaterial"] == second["KeyMaterial"]
    assert first["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    listed = ec2.describe_key_pairs(KeyNames=["a", "b"])["KeyPairs"]
    assert sorted(k["KeyName"] for k in listed) == ["a", "b"]


def test_p28_images_report_the_source_facts_ec2_records(ec2, endpoint):
    """SourceInstanceId (CreateImage), SourceImageId and SourceImageRegion (both), and
    CreationDate: what no user can set, and what ownership is built on."""
    instance = an_instance(ec2)
    made = image_of(ec2, instance)
    finish_pending()
    image = ec2.describe_images(ImageIds=[made])["Images"][0]
    assert image["SourceInstanceId"] == instance
    assert (image["SourceImageId"], image["SourceImageRegion"]) == (LINUX_AMI, REGION)
    assert image["CreationDate"] and image["OwnerId"] == "123456789012"
    dr = regional(endpoint, "ec2", "us-west-2")
    copy = dr.copy_image(SourceImageId=made, SourceRegion=REGION, Name="img-c")["ImageId"]
    copied = dr.describe_images(ImageIds=[copy])["Images"][0]
    assert (copied["SourceImageId"], copied["SourceImageRegion"]) == (made, REGION)
    assert "SourceInstanceId" not in copied


def test_p30_a_copied_snapshot_reports_ec2s_arbitrary_volume(ec2):
    image = ec2.describe_images(ImageIds=[image_of(ec2, an_instance(ec2))])["Images"][0]
    source = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    copied = ec2.copy_snapshot(SourceSnapshotId=source, SourceRegion=REGION)["SnapshotId"]
    [snapshot] = ec2.describe_snapshots(SnapshotIds=[copied])["Snapshots"]
    assert snapshot["VolumeId"] == "vol-ffffffff"


def test_p29_creation_dates_keep_their_milliseconds(ec2):
    instance = an_instance(ec2)
    first, second = image_of(ec2, instance, name="img-a"), image_of(ec2, instance, name="img-b")
    dates = {i["ImageId"]: i["CreationDate"] for i in ec2.describe_images(
        ImageIds=[first, second])["Images"]}  # fmt: skip
    assert dates[first] < dates[second] and dates[first].endswith("Z")


def test_p31_image_references_name_instances_templates_and_parameters(ec2, endpoint):
    image = image_of(ec2, an_instance(ec2))
    finish_pending()
    ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)
    ec2.create_launch_template(LaunchTemplateName="base", LaunchTemplateData={"ImageId": image})
    regional(endpoint, "ssm", REGION).put_parameter(Name="/golden/web", Value=image, Type="String")
    answer = ec2.describe_image_references(
        ImageIds=[image], ResourceTypes=[{"ResourceType": t} for t in
                                         ("ec2:Instance", "ec2:LaunchTemplate", "ssm:Parameter")]
    )["ImageReferences"]  # fmt: skip
    assert {r["ResourceType"] for r in answer} == {"ec2:Instance", "ec2:LaunchTemplate",
                                                   "ssm:Parameter"}  # fmt: skip
    with pytest.raises(ClientError):
        ec2.describe_image_references(ImageIds=[image] * 11, IncludeAllResourceTypes=True)


def test_p19_a_rule_for_images_only_bins_no_snapshot(ec2):
    SETTINGS.recycle_bin_days, SETTINGS.recycle_bin_images_only = 7, True
    image = ec2.describe_images(ImageIds=[image_of(ec2, an_instance(ec2))])["Images"][0]
    finish_pending()
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    ec2.deregister_image(ImageId=image["ImageId"])
    ec2.delete_snapshot(SnapshotId=snapshot)
    assert [i["ImageId"] for i in ec2.list_images_in_recycle_bin()["Images"]] == [image["ImageId"]]
    assert ec2.list_snapshots_in_recycle_bin()["Snapshots"] == []


def test_p32_register_image_uses_the_snapshots_it_is_given(ec2):
    made = ec2.describe_images(ImageIds=[image_of(ec2, an_instance(ec2))])["Images"][0]
    finish_pending()
    registered = ec2.register_image(
        Name="by-hand", RootDeviceName="/dev/sda1", BlockDeviceMappings=made["BlockDeviceMappings"]
    )["ImageId"]
    image = ec2.describe_images(ImageIds=[registered])["Images"][0]
    snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"]]
    assert snapshots == [m["Ebs"]["SnapshotId"] for m in made["BlockDeviceMappings"]]
    assert "SourceInstanceId" not in image


def test_p33_instances_are_found_by_the_client_token_they_were_launched_with(ec2):
    launched = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, ClientToken="tok-1")
    filters = [{"Name": "client-token", "Values": ["tok-1"]}]
    [reservation] = ec2.describe_instances(Filters=filters)["Reservations"]
    assert reservation["Instances"][0]["InstanceId"] == launched["Instances"][0]["InstanceId"]


def test_p34_termination_deletes_what_says_delete_on_termination_and_nothing_else(ec2, fleet):
    nic = {"SubnetId": fleet.subnet_id}
    two = [{**nic, "DeviceIndex": 0, "DeleteOnTermination": True},
           {**nic, "DeviceIndex": 1, "DeleteOnTermination": False}]  # fmt: skip
    instance = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1,
                                 NetworkInterfaces=two)["Instances"][0]  # fmt: skip
    zone = instance["Placement"]["AvailabilityZone"]
    data = ec2.create_volume(AvailabilityZone=zone, Size=5)["VolumeId"]
    ec2.attach_volume(VolumeId=data, InstanceId=instance["InstanceId"], Device="/dev/sdf")
    image = image_of(ec2, instance["InstanceId"])
    mapped = ec2.describe_images(ImageIds=[image])["Images"][0]["BlockDeviceMappings"]
    assert {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"] for m in mapped}["/dev/sdf"] is False
    twin = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    described = ec2.describe_instances(InstanceIds=[twin])["Reservations"][0]["Instances"][0]
    assert len(described["BlockDeviceMappings"]) == len(mapped)  # every device of the image
    ec2.terminate_instances(InstanceIds=[instance["InstanceId"], twin])
    back = next(n for n in instance["NetworkInterfaces"] if n["Attachment"]["DeviceIndex"] == 1)
    [left] = ec2.describe_network_interfaces(NetworkInterfaceIds=[back["NetworkInterfaceId"]])[
        "NetworkInterfaces"]  # fmt: skip
    assert left["Status"] == "available" and "Attachment" not in left
    volumes = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes()["Volumes"]}
    assert volumes[data] == "available"  # attached later: kept
    assert len([v for v in volumes.values() if v == "available"]) == 2  # and the twin's copy


def test_p35_a_subnet_that_maps_public_ips_gives_one_to_a_lone_interface_only(ec2, fleet):
    ec2.modify_subnet_attribute(SubnetId=fleet.subnet_id, MapPublicIpOnLaunch={"Value": True})
    nic = {"DeviceIndex": 0, "SubnetId": fleet.subnet_id}

    def public(**kwargs) -> str | None:
        made = ec2.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, **kwargs)
        return made["Instances"][0].get("PublicIpAddress")

    assert public(SubnetId=fleet.subnet_id)
    assert public(NetworkInterfaces=[{**nic, "AssociatePublicIpAddress": False}]) is None
    assert public(NetworkInterfaces=[nic, {**nic, "DeviceIndex": 1}]) is None
    with pytest.raises(ClientError, match="InvalidParameterCombination"):
        public(NetworkInterfaces=[{**nic, "AssociatePublicIpAddress": False},
                                  {**nic, "DeviceIndex": 1}])  # fmt: skip


def test_p36_no_capacity_for_a_type_or_zone_is_a_server_error(ec2, fleet, endpoint):
    once = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint.url,
                        config=Config(retries={"total_max_attempts": 1}))  # fmt: skip
    zone = ec2.describe_subnets(SubnetIds=[fleet.subnet_id])["Subnets"][0]["AvailabilityZone"]
    for lacking in ("m5.large", zone):
        SETTINGS.no_capacity = {lacking}
        with pytest.raises(ClientError) as refused:
            once.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, InstanceType="m5.large",
                               SubnetId=fleet.subnet_id)  # fmt: skip
        assert refused.value.response["Error"]["Code"] == "InsufficientInstanceCapacity"
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    SETTINGS.no_capacity = {"m5.large"}
    assert once.run_instances(ImageId=LINUX_AMI, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              SubnetId=fleet.subnet_id)["Instances"]  # fmt: skip


def test_p37_block_public_access_states_answer_the_settings(ec2):
    assert ec2.get_image_block_public_access_state()["ImageBlockPublicAccessState"] == (
        "block-new-sharing"
    )
    SETTINGS.block_public_access["snapshot"] = "unblocked"
    assert ec2.get_snapshot_block_public_access_state()["State"] == "unblocked"


# --- P40-P42: volumes and the root volume replacement task ---------------------------------


def code_of(call, **kwargs) -> str:
    with pytest.raises(ClientError) as err:
        call(**kwargs)
    return str(err.value.response["Error"]["Code"])


def test_p40_attach_and_detach_refuse_what_ec2_refuses(ec2, fleet):
    found = launched(ec2, SubnetId=fleet.subnet_id)
    instance_id, zone = found["InstanceId"], found["Placement"]["AvailabilityZone"]
    other = next(f"{REGION}{z}" for z in "abc" if f"{REGION}{z}" != zone)
    elsewhere = ec2.create_volume(AvailabilityZone=other, Size=1)["VolumeId"]
    assert code_of(ec2.attach_volume, VolumeId=elsewhere, InstanceId=instance_id,
                   Device="/dev/sdf") == "InvalidVolume.ZoneMismatch"  # fmt: skip
    here = ec2.create_volume(AvailabilityZone=zone, Size=1)["VolumeId"]
    root = found["RootDeviceName"]
    assert code_of(ec2.attach_volume, VolumeId=here, InstanceId=instance_id,
                   Device=root) == "InvalidParameterValue"  # fmt: skip
    ec2.attach_volume(VolumeId=here, InstanceId=instance_id, Device="/dev/sdf")
    assert code_of(ec2.attach_volume, VolumeId=here, InstanceId=instance_id,
                   Device="/dev/sdg") == "VolumeInUse"  # fmt: skip
    root_volume = found["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    assert code_of(ec2.detach_volume, VolumeId=root_volume) == "IncorrectState"
    ec2.stop_instances(InstanceIds=[instance_id])
    ec2.detach_volume(VolumeId=root_volume)  # stopped: the root may go
    again = ec2.create_volume(AvailabilityZone=zone, Size=1, ClientToken="t-1")["VolumeId"]
    assert ec2.create_volume(AvailabilityZone=zone, Size=1, ClientToken="t-1")["VolumeId"] == again


def test_p41_a_root_volume_task_replaces_the_root_and_keeps_the_instance(ec2, fleet):
    from localaws.volumes import VOLUMES

    VOLUMES.root_task_seconds = 0.6  # each state lasts long enough for the polls below to see
    found = launched(ec2, SubnetId=fleet.subnet_id)
    instance_id, root = found["InstanceId"], found["RootDeviceName"]
    old = found["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    snapshot = ec2.create_snapshot(VolumeId=old)["SnapshotId"]
    task = ec2.create_replace_root_volume_task(
        InstanceId=instance_id, SnapshotId=snapshot, ClientToken="c-1"
    )["ReplaceRootVolumeTask"]
    assert task["TaskState"] == "pending"
    states = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "succeeded" not in states:
        [seen] = ec2.describe_replace_root_volume_tasks(
            Filters=[{"Name": "instance-id", "Values": [instance_id]}]
        )["ReplaceRootVolumeTasks"]
        states.add(seen["TaskState"])
        time.sleep(0.05)
    assert {"in-progress", "succeeded"} <= states
    after = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    [mapping] = [m for m in after["BlockDeviceMappings"] if m["DeviceName"] == root]
    assert mapping["Ebs"]["VolumeId"] != old
    assert ec2.describe_volumes(VolumeIds=[old])["Volumes"][0]["State"] == "available"
    again = ec2.create_replace_root_volume_task(
        InstanceId=instance_id, SnapshotId=snapshot, ClientToken="c-1"
    )["ReplaceRootVolumeTask"]
    assert again["ReplaceRootVolumeTaskId"] == task["ReplaceRootVolumeTaskId"]
    ec2.stop_instances(InstanceIds=[instance_id])
    assert code_of(ec2.create_replace_root_volume_task, InstanceId=instance_id,
                   SnapshotId=snapshot) == "IncorrectInstanceState"  # fmt: skip
