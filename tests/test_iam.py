"""Each script does its whole job under its shipped IAM policy alone, and no more.

moto's server enforces IAM when asked (INITIAL_NO_AUTH_ACTION_COUNT); the
scripts run under the access key of an IAM user that holds only the policy.

What moto can check, and what it cannot:
- moto authorizes every EC2 action against the resource "*" and does not
  evaluate EC2's resource-level ARNs or conditions (aws:RequestTag,
  aws:ResourceTag, ec2:CreateAction, iam:PassedToService). So the tests give
  moto the policy with each statement's Resource widened to "*" and its
  Condition dropped, which checks the policy's actions: enough, and no more.
- The conditions themselves are checked statically below: every destructive
  action is limited to resources carrying the tool's marker tag.
"""

from __future__ import annotations

import dataclasses
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from parliament import analyze_policy_string
from parliament import config as parliament_config
from parliament.statement import get_privilege_info

from ec2ami.backup.config import load_config
from ec2ami.contract import IMAGE_REFERENCES_DESCRIBES, LAUNCH_DATA_DESCRIBES
from ec2ami.iam import backup as iam_backup
from ec2ami.iam import restore as iam_restore
from ec2ami.restore.config import DEFAULTS
from ec2ami.restore.config import validate_config as validate_restore_config
from localaws.endpoint import SETTINGS
from localaws.fleet import build_network, drill_network, kitchen_sink
from tests.conftest import REGION, ROOT, backup_config, managed, run, write_config
from tools.make_policies import SHIPPED

MARKER_CONDITION = {"StringEquals": {"aws:ResourceTag/ec2-to-ami:managed-by": "ec2-to-ami"}}


def policy(name: str) -> dict:
    return json.loads((ROOT / "docs" / "iam" / name).read_text())


def actions_of(document: dict) -> set[str]:
    """Every action a policy allows, such as "ec2:CreateImage"."""
    return {action for s in document["Statement"] for action in as_list(s["Action"])}


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def as_moto_sees_it(document: dict) -> str:
    """The policy with resources widened to "*" and conditions dropped (see the docstring)."""
    statements = [
        {"Effect": s["Effect"], "Action": s["Action"], "Resource": "*"}
        for s in document["Statement"]
    ]
    return json.dumps({"Version": document["Version"], "Statement": statements})


@pytest.fixture
def user_env(endpoint, iam):
    """Make an IAM user with a policy; return a function giving its credentials as env."""

    def make(name: str, document: dict) -> dict[str, str]:
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name, PolicyName=name, PolicyDocument=as_moto_sees_it(document)
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }

    yield make
    relax()


def enforce() -> None:
    """From now on, moto checks every call against the caller's IAM policies."""
    ActionAuthenticatorMixin.request_count = 0
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0


def relax() -> None:
    """Back to no IAM checks, so the test's own client can look at the outcome."""
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")


def refused(calls) -> list[str]:
    """Calls the endpoint refused, other than EC2's DryRunOperation answer."""
    return [c.action for c in calls if c.status >= 400 and c.params.get("DryRun") != "true"]


def client_for(endpoint, env: dict[str, str], service: str = "ec2"):
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint.url,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def actions_used(endpoint, env, script: str, config, runs: list[list[str]]) -> set[str]:
    """Run a script under enforcement; each run must succeed; return the actions it used."""
    enforce()
    start = len(endpoint.calls)
    for args in runs:
        result = run(script, config, *args, **env)
        assert result.returncode == 0, result.stderr
    relax()
    assert refused(endpoint.calls[start:]) == []
    prefix = {"monitoring": "cloudwatch"}  # CloudWatch's endpoint is monitoring.*
    return {f"{prefix.get(c.service, c.service)}:{c.action}" for c in endpoint.calls[start:]}


def assert_refused(calls) -> None:
    """Each call is refused for lack of permission."""
    for call in calls:
        with pytest.raises(ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] in {"UnauthorizedOperation", "AccessDenied"}


# GetLaunchTemplateData calls these on its caller's behalf, under the caller's policy, so
# the policies allow them; moto makes no such calls, so the tests never see them used.
ON_OUR_BEHALF = {"ec2:DescribeInstanceAttribute", *LAUNCH_DATA_DESCRIBES,
                 *IMAGE_REFERENCES_DESCRIBES}  # fmt: skip
# --cost calls DescribeVolumes itself too (the snapshot each first backup's volume came from).
ON_OUR_BEHALF_BUT_COST = ON_OUR_BEHALF - {"ec2:DescribeVolumes"}


def in_target_group(endpoint, fleet, server: str) -> None:
    """Register a server in a target group, so the backup reads its membership."""
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=endpoint.url)
    group = elbv2.create_target_group(Name="web", Protocol="HTTP", Port=80, VpcId=fleet.vpc_id)
    arn = group["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=arn, Targets=[{"Id": fleet.instances[server]}])


def generated(script: str, config, *args: str) -> dict:
    """What --print-iam-policy prints for a config."""
    result = run(script, config, *args, "--print-iam-policy")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_ssm_config_does_its_whole_job_under_its_generated_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    servers = [
        {"name": "web01", "instance_id": fleet.instances["web01"]},
        {"name": "app01", "instance_id": fleet.instances["app01"], "consistency": "scripts",
         "pre_script": "sync", "post_script": "true"},
        {"name": "win01", "instance_id": fleet.instances["win01"], "consistency": "vss"},
    ]  # fmt: skip
    config = backup_config(tmp_path, fleet, KEEP=1, SERVERS=servers, SELECT_TAGS={},
                           METRICS_NAMESPACE="EC2Backup",
                           DEREGISTRATION_PROTECTION=True)  # fmt: skip
    document = generated("ec2_to_ami.py", config)
    env = user_env("backup-bot", document)
    in_target_group(endpoint, fleet, "web01")
    # Two backups kept (--no-prune), so --cost lists one snapshot's blocks and the changes
    # to the next; then a run that prunes.
    runs = [[], ["--no-prune"], ["--cost"], [], ["--dry-run"], ["--list", "--recycle-bin"],
            ["--check"]]  # fmt: skip
    used = actions_used(endpoint, env, "ec2_to_ami.py", config, runs)
    # Tags at creation are checked inside CreateImage; DeleteSnapshot is the fallback
    # for a snapshot DeregisterImage could not delete.
    assert used == actions_of(document) - {"ec2:DeleteSnapshot"} - ON_OUR_BEHALF_BUT_COST
    assert len(managed(ec2, "web01")) == len(managed(ec2, "win01")) == 1


def test_a_plain_config_gets_no_ssm_and_no_dr_and_does_its_whole_job(
    ec2, fleet, tmp_path, endpoint, user_env
):
    config = backup_config(tmp_path, fleet, KEEP=1)  # web01, app01 by id; win01 by tag
    document = generated("ec2_to_ami.py", config)
    in_target_group(endpoint, fleet, "web01")
    assert not {a for a in actions_of(document) if a.startswith(("ssm:", "kms:", "cloudwatch:"))}
    assert not actions_of(document) & {"ec2:CopyImage", "ec2:ModifyImageAttribute",
                                       "ec2:EnableImageDeregistrationProtection"}  # fmt: skip
    env = user_env("plain-bot", document)
    runs = [[], [], ["--list", "--recycle-bin"], ["--cost"]]
    used = actions_used(endpoint, env, "ec2_to_ami.py", config, runs)
    # Tags at creation are checked inside CreateImage; only retention of an image someone
    # protected needs the protection lifted; with one backup kept, --cost has no change
    # between two snapshots to list.
    assert used == actions_of(document) - ON_OUR_BEHALF_BUT_COST - {
        "ec2:CreateTags",
        "ec2:DeleteSnapshot",
        "ec2:DisableImageDeregistrationProtection",
        "ebs:ListChangedBlocks",
    }


def test_i1_cloudwatch_calls_are_authorized_by_their_iam_name(endpoint, user_env):
    metric = {"Namespace": "EC2Backup", "MetricData": [{"MetricName": "m", "Value": 1.0}]}
    clients = {}
    for prefix in ("cloudwatch", "monitoring"):
        statement = {"Effect": "Allow", "Action": f"{prefix}:PutMetricData", "Resource": "*"}
        env = user_env(prefix, {"Version": "2012-10-17", "Statement": [statement]})
        clients[prefix] = client_for(endpoint, env, "cloudwatch")
    enforce()
    clients["cloudwatch"].put_metric_data(**metric)
    with pytest.raises(ClientError) as err:
        clients["monitoring"].put_metric_data(**metric)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_backup_policy_refuses_what_the_backup_does_not_need(fleet, endpoint, user_env):
    env = user_env("backup-bot", policy("backup-policy.json"))
    enforce()
    bot = client_for(endpoint, env)
    assert_refused(
        [
            lambda: bot.terminate_instances(InstanceIds=[fleet.instances["web01"]]),
            lambda: bot.run_instances(ImageId="ami-1e749f67", MinCount=1, MaxCount=1),
            lambda: bot.describe_subnets(),
        ]
    )


def test_restore_does_its_whole_job_under_the_restore_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    ec2.terminate_instances(InstanceIds=[fleet.instances["web01"]])
    SETTINGS.instance_pending_seconds = 0.5
    config = write_config(tmp_path / "restore.py", SERVER="web01", PRIVATE_IP="same")
    document = generated("ami_to_ec2.py", config)
    env = user_env("restore-bot", document)
    runs = [["--list", "--recycle-bin"], ["--dry-run"], []]
    used = actions_used(endpoint, env, "ami_to_ec2.py", config, runs)
    # CreateTags and iam:PassRole are checked inside RunInstances; EnableImage is only for
    # a disabled image, the Recycle Bin restores only for a deleted one (the next test);
    # the twin's own calls only for what web01 does not have (the kitchen-sink test).
    rare = {"ec2:EnableImage", "ec2:DescribeSnapshots", "kms:DescribeKey",  # encrypted only
            "ec2:ListSnapshotsInRecycleBin",
            "ec2:RestoreImageFromRecycleBin", "ec2:RestoreSnapshotFromRecycleBin"}  # fmt: skip
    assert used == actions_of(document) - {"ec2:CreateTags", "iam:PassRole"} - rare - TWIN_ONLY - (
        ON_OUR_BEHALF
    )
    addresses = ec2.describe_addresses(AllocationIds=[fleet.eips["web01"]])["Addresses"]
    assert addresses[0]["InstanceId"]


TWIN_ONLY = {
    "ec2:DescribePlacementGroups", "ec2:DescribeHosts", "ec2:ModifyNetworkInterfaceAttribute",
    "elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
}  # fmt: skip


def test_a_kitchen_sink_twin_is_restored_under_its_generated_policy(
    ec2, iam, tmp_path, endpoint, user_env
):
    """Every call a full twin needs (placement group, source/dest check, Elastic IPs on
    interfaces, target group and Classic ELB, DNS) is in the generated policy."""
    make = lambda service: boto3.client(service, region_name=REGION, endpoint_url=endpoint.url)  # noqa: E731
    fleet = build_network(ec2, iam)
    instance_id = kitchen_sink(ec2, make("elbv2"), make("elb"), fleet, "linux01")
    config = write_config(
        tmp_path / "b.py", SERVERS=[{"name": "linux01", "instance_id": instance_id}]
    )
    assert run("ec2_to_ami.py", config).returncode == 0
    for attribute in ("DisableApiTermination", "DisableApiStop"):
        ec2.modify_instance_attribute(InstanceId=instance_id, **{attribute: {"Value": False}})
    ec2.terminate_instances(InstanceIds=[instance_id])
    restore = write_config(tmp_path / "restore.py", SERVER="linux01")
    document = generated("ami_to_ec2.py", restore)
    used = actions_used(endpoint, user_env("twin-bot", document), "ami_to_ec2.py", restore, [[]])
    assert TWIN_ONLY - {"ec2:DescribeHosts"} <= used  # no dedicated host here
    assert used <= actions_of(document)


def test_dns_records_are_allowed_only_in_their_own_zones():
    """moto's signature check refuses Route 53's REST calls under enforcement, so the DNS
    statement is checked here, and DNS_RECORDS itself in tests/test_twin.py."""
    records = [{"zone_id": "/hostedzone/Z123", "name": "web.corp.internal", "type": "A",
                "value": "private"}]  # fmt: skip
    settings = {**DEFAULTS, "REGION": "eu-west-1", "DNS_RECORDS": records}
    document = iam_restore.iam_policy(validate_restore_config(settings, listing=True))
    [dns] = [s for s in document["Statement"] if "route53:ChangeResourceRecordSets" in s["Action"]]
    assert dns["Resource"] == ["arn:aws:route53:::hostedzone/Z123"]
    plain = iam_restore.iam_policy(
        validate_restore_config({**DEFAULTS, "REGION": "eu-west-1"}, listing=True)
    )
    assert not [a for a in actions_of(plain) if a.startswith("route53:")]


def test_restore_from_the_recycle_bin_under_the_restore_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    SETTINGS.recycle_bin_days = 7
    config = backup_config(tmp_path, fleet, KEEP=1)
    assert run("ec2_to_ami.py", config).returncode == 0
    [old] = managed(ec2, "web01")
    assert run("ec2_to_ami.py", config).returncode == 0  # the old backup goes to the bin
    SETTINGS.instance_pending_seconds = 0.5
    restore = write_config(tmp_path / "restore.py", AMI_ID=old["ImageId"])
    env = user_env("restore-bot", generated("ami_to_ec2.py", restore))
    used = actions_used(endpoint, env, "ami_to_ec2.py", restore, [[]])
    assert {"ec2:RestoreImageFromRecycleBin", "ec2:RestoreSnapshotFromRecycleBin"} <= used


def leave_drill_debris(ec2, subnet: str, image: dict) -> tuple[str, str]:
    """A detached volume and interface that an earlier drill left: the drill deletes them."""
    zone = ec2.describe_subnets(SubnetIds=[subnet])["Subnets"][0]["AvailabilityZone"]
    tags = [{"Key": "ec2-to-ami:drill", "Value": "web01"},
            {"Key": "ec2-to-ami:restored-from", "Value": image["ImageId"]}]  # fmt: skip
    volume = ec2.create_volume(
        AvailabilityZone=zone, SnapshotId=image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"],
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )["VolumeId"]  # fmt: skip
    interface = ec2.create_network_interface(
        SubnetId=subnet, TagSpecifications=[{"ResourceType": "network-interface", "Tags": tags}]
    )["NetworkInterface"]["NetworkInterfaceId"]
    return volume, interface


def test_a_drill_does_its_whole_job_under_the_drill_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    subnet, group = drill_network(ec2, fleet)
    SETTINGS.instance_pending_seconds = 0.2
    config = write_config(
        tmp_path / "drill.py", DRILL_SUBNET_ID=subnet, DRILL_SECURITY_GROUP_IDS=[group],
        DRILL_CHECK={"linux": "true", "windows": "exit 0"},
    )  # fmt: skip
    document = generated("ami_to_ec2.py", config, "--drill")
    env = user_env("drill-bot", document)
    debris = leave_drill_debris(ec2, subnet, managed(ec2, "web01")[0])
    used = actions_used(endpoint, env, "ami_to_ec2.py", config, [["--drill", "--all"]])
    assert not ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [debris[0]]}])[
        "Volumes"]  # fmt: skip
    assert not ec2.describe_network_interfaces(
        Filters=[{"Name": "network-interface-id", "Values": [debris[1]]}]
    )["NetworkInterfaces"]
    # PassRole is checked inside RunInstances; placement and source/dest check only for a
    # twin that has them.
    rare = {"iam:PassRole", "ec2:DescribePlacementGroups", "ec2:DescribeHosts",
            "ec2:ModifyNetworkInterfaceAttribute",
            "ec2:DescribeSnapshots", "kms:DescribeKey"}  # encrypted backups only  # fmt: skip
    assert used - {"ec2:DescribeVolumes"} == actions_of(document) - rare - ON_OUR_BEHALF
    verified = [t for i in managed(ec2) for t in i.get("Tags", [])
                if t["Key"] == "ec2-to-ami:verified"]  # fmt: skip
    assert len(verified) == 3


def test_a_drill_reaches_nothing_in_production_and_removes_only_drill_instances():
    document = policy("drill-policy.json")
    production = {"ec2:AssociateAddress", "ec2:EnableImage", "ec2:RestoreImageFromRecycleBin",
                  "elasticloadbalancing:RegisterTargets", "route53:ChangeResourceRecordSets",
                  "ec2:DeregisterImage", "ec2:CreateImage"}  # fmt: skip
    assert not actions_of(document) & production
    launches = {s["Sid"]: s for s in statements_with(document, "ec2:RunInstances")}
    launch = launches["LaunchOnlyIntoTheDrillSubnet"]
    subnet = "arn:aws:ec2:eu-west-1:*:subnet/subnet-0d1e2f3a4b5c6d7e8"
    subnets = [r for r in launch["Resource"] if ":subnet/" in r]
    groups = [r for r in launch["Resource"] if ":security-group/" in r]
    assert subnets == [subnet]
    assert groups == ["arn:aws:ec2:eu-west-1:*:security-group/sg-0a1b2c3d4e5f60718"]
    assert not [r for r in launch["Resource"] if ":placement-group/" in r]
    assert launches["LaunchOnlyMarkedImages"]["Condition"] == {
        "StringEquals": {"aws:ResourceTag/ec2-to-ami:managed-by": "ec2-to-ami"}
    }
    assert launches["InterfacesOnlyInTheDrillSubnet"]["Condition"] == {
        "ArnEquals": {"ec2:Subnet": subnet}
    }
    [terminate] = statements_with(document, "ec2:TerminateInstances")
    assert terminate["Condition"] == {"Null": {"aws:ResourceTag/ec2-to-ami:drill": "false"}}
    tagging = {s["Sid"]: s for s in statements_with(document, "ec2:CreateTags")}
    assert tagging["TagAtLaunchOnly"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "RunInstances"}
    }
    on_images = tagging["RecordTheResultOnMarkedImagesOnly"]
    assert on_images["Resource"] == "arn:aws:ec2:eu-west-1::image/*"
    assert on_images["Condition"] == {
        **MARKER_CONDITION,
        "ForAllValues:StringEquals": {"aws:TagKeys": ["ec2-to-ami:verified"]},
    }
    commands = statements_with(document, "ssm:SendCommand")
    on_instances = [s for s in commands if "instance/" in str(s["Resource"])]
    assert [s["Condition"] for s in on_instances] == [
        {"Null": {"ssm:resourceTag/ec2-to-ami:drill": "false"}}
    ]


def test_restore_policy_refuses_what_the_restore_does_not_need(fleet, endpoint, user_env):
    env = user_env("restore-bot", policy("restore-policy.json"))
    enforce()
    bot = client_for(endpoint, env)
    assert_refused(
        [
            lambda: bot.terminate_instances(InstanceIds=[fleet.instances["web01"]]),
            lambda: bot.deregister_image(ImageId="ami-1e749f67"),
            lambda: bot.create_image(InstanceId=fleet.instances["web01"], Name="nope-image"),
        ]
    )


def statements_with(document: dict, action: str) -> list[dict]:
    return [s for s in document["Statement"] if action in as_list(s["Action"])]


@pytest.mark.parametrize(
    ("document", "action"),
    [
        ("backup-policy.json", "ec2:DeregisterImage"),
        ("backup-policy.json", "ec2:DeleteSnapshot"),
        ("backup-policy.json", "ec2:EnableImageDeregistrationProtection"),
        ("backup-policy.json", "ec2:DisableImageDeregistrationProtection"),
        ("backup-dr-policy.json", "ec2:ModifyImageAttribute"),
        ("backup-dr-policy.json", "ec2:ModifySnapshotAttribute"),
        ("backup-dr-policy.json", "ec2:EnableImageDeprecation"),
        ("restore-policy.json", "ec2:EnableImage"),
        ("backup-policy.json", "ebs:ListSnapshotBlocks"),
    ],
)
def test_deleting_sharing_and_deprecating_need_the_marker_tag(document, action):
    assert unmarked(policy(document), action) == []


def test_only_listing_changed_blocks_reaches_unmarked_snapshots():
    """--cost compares a first backup with the snapshot its volume was made from (a golden
    image's, a restored backup's), which carries no marker: block indexes only, in the
    config's regions."""
    document, sid = (
        policy("backup-policy.json"),
        "CompareFirstBackupsWithTheSnapshotsTheirVolumesCameFrom",
    )
    assert unmarked(document, "ebs:ListChangedBlocks") == [sid]
    statement = next(s for s in document["Statement"] if s.get("Sid") == sid)
    assert statement["Action"] == "ebs:ListChangedBlocks"
    assert all(r.startswith("arn:aws:ec2:") and r.endswith("::snapshot/*")
               for r in as_list(statement["Resource"]))  # fmt: skip


def unmarked(document: dict, action: str) -> list[str]:
    """The statements that allow action without the marker condition, or on "*"."""
    return [
        statement.get("Sid", "?")
        for statement in statements_with(document, action)
        if statement.get("Condition", {}).get("StringEquals") != MARKER_CONDITION["StringEquals"]
        or "*" in as_list(statement["Resource"])
    ]


def test_metrics_go_only_to_the_namespace_the_iam_page_names():
    [statement] = statements_with(policy("backup-policy.json"), "cloudwatch:PutMetricData")
    assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": "EC2Backup"}}
    assert "cloudwatch:namespace" in (ROOT / "docs" / "iam.md").read_text()


def test_created_images_must_carry_the_marker_and_tags_come_only_at_creation():
    document = policy("backup-policy.json")
    conditioned = [s for s in statements_with(document, "ec2:CreateImage") if "Condition" in s]
    [create] = conditioned
    assert create["Condition"] == {
        "StringEquals": {"aws:RequestTag/ec2-to-ami:managed-by": "ec2-to-ami"}
    }
    conditions = [s["Condition"] for s in statements_with(document, "ec2:CreateTags")]
    assert conditions == [
        {"StringEquals": {"ec2:CreateAction": "CreateImage"}},  # tags at creation
        MARKER_CONDITION,  # the rest of the tags on an image VSS made with the marker
    ]


def test_ssm_commands_are_limited_to_the_consistency_documents():
    statements = statements_with(policy("backup-policy.json"), "ssm:SendCommand")
    resources = [r for s in statements for r in as_list(s["Resource"])]
    documents = [r.rsplit("/", 1)[1] for r in resources if ":document/" in r]
    assert documents == ["ec2-backup-db-scripts", "AWSEC2-CreateVssSnapshot"]  # SSM_DOCUMENT
    example = load_config(str(ROOT / "docs" / "iam" / "examples" / "backup-ssm.py"))
    plain = iam_backup.iam_policy(dataclasses.replace(example, ssm_document=None))
    shared = [r.rsplit("/", 1)[1] for s in statements_with(plain, "ssm:SendCommand")
              for r in as_list(s["Resource"]) if ":document/" in r]  # fmt: skip
    assert shared == ["AWS-RunShellScript", "AWS-RunPowerShellScript", "AWSEC2-CreateVssSnapshot"]


def test_restore_passes_roles_to_ec2_only():
    [statement] = statements_with(policy("restore-policy.json"), "iam:PassRole")
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}


def test_a_policy_missing_an_action_fails_the_run(fleet, tmp_path, user_env):
    """The enforcement is real: without DeregisterImage, pruning fails and says why."""
    document = policy("backup-policy.json")
    for statement in document["Statement"]:
        statement["Action"] = [
            a for a in as_list(statement["Action"]) if a != "ec2:DeregisterImage"
        ]
    document["Statement"] = [s for s in document["Statement"] if s["Action"]]
    env = user_env("weak-bot", document)
    config = backup_config(tmp_path, fleet, KEEP=1)
    enforce()
    assert run("ec2_to_ami.py", config, **env).returncode == 0
    result = run("ec2_to_ami.py", config, **env)
    assert result.returncode == 1
    assert "could not deregister" in result.stderr
    assert "AccessDenied" in result.stderr or "UnauthorizedOperation" in result.stderr


def test_cost_needs_its_own_statement_and_says_so_once_without_it(
    ec2, fleet, tmp_path, endpoint, user_env
):
    """I2 makes the EBS direct APIs' GETs checkable: without the statement --cost is
    refused, exits 1 and says why, once."""
    config = backup_config(tmp_path, fleet, SELECT_TAGS={})
    assert run("ec2_to_ami.py", config, "-q").returncode == 0
    document = generated("ec2_to_ami.py", config)
    document["Statement"] = [
        s for s in document["Statement"] if s["Sid"] != "CountBlocksOnlyOfMarkedSnapshots"
    ]
    env = user_env("no-blocks-bot", document)
    enforce()
    result = run("ec2_to_ami.py", config, "--cost", **env)
    relax()
    assert result.returncode == 1
    assert result.stderr.count("AWS error: AccessDenied") == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_a_dr_config_does_its_whole_job_under_its_generated_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    """Copies, sharing and deprecation work under the DR config's policy, and a config
    without them gets a policy that refuses them."""
    SETTINGS.encrypt_images_of[fleet.instances["web01"]] = None  # DescribeSnapshots, DescribeKey
    settings = {"KEEP": 1, "COPY_TO_REGIONS": {"us-west-2": {"keep": 1}},
                "SHARE_WITH_ACCOUNTS": ["111122223333"], "DEPRECATE_AFTER_DAYS": 30}  # fmt: skip
    config = backup_config(tmp_path, fleet, **settings)
    document = generated("ec2_to_ami.py", config)
    in_target_group(endpoint, fleet, "web01")
    runs = [[], [], ["--list", "--recycle-bin"], ["--cost"]]  # --cost: in both regions
    used = actions_used(endpoint, user_env("dr-bot", document), "ec2_to_ami.py", config, runs)
    assert used == actions_of(document) - ON_OUR_BEHALF_BUT_COST - {
        "ec2:DeleteSnapshot",
        "ec2:DisableImageDeregistrationProtection",
        "ebs:ListChangedBlocks",  # one backup kept in each region
    }
    assert (
        len(managed(boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint.url))) == 3
    )
    plain = generated("ec2_to_ami.py", backup_config(tmp_path, fleet, name="plain.py", KEEP=1))
    without = user_env("no-dr-bot", plain)
    enforce()
    result = run("ec2_to_ami.py", config, **without)
    relax()
    assert result.returncode == 1
    assert "copy FAILED" in result.stderr
    assert "AccessDenied" in result.stderr or "UnauthorizedOperation" in result.stderr


def test_copies_are_tagged_only_as_they_are_created_and_kms_only_through_ec2():
    document = policy("backup-dr-policy.json")
    conditions = [s["Condition"] for s in statements_with(document, "ec2:CreateTags")]
    assert {"StringEquals": {"ec2:CreateAction": "CopyImage"}} in conditions
    assert {  # after creation, only whom an image is shared with
        **MARKER_CONDITION,
        "ForAllValues:StringEquals": {"aws:TagKeys": ["ec2-to-ami:shared-with"]},
    } in conditions
    [grants] = statements_with(document, "kms:CreateGrant")
    via = {"kms:ViaService": ["ec2.eu-central-1.amazonaws.com", "ec2.eu-west-1.amazonaws.com"]}
    assert grants["Condition"] == {"StringEquals": via,
                                   "Bool": {"kms:GrantIsForAWSResource": "true"}}  # fmt: skip
    assert [k.split(":")[3] for k in grants["Resource"]] == ["eu-central-1", "eu-west-1"]
    [use] = statements_with(document, "kms:ReEncryptFrom")  # the source key and the copy's
    assert use["Resource"] == grants["Resource"] and use["Condition"] == {"StringEquals": via}
    [snapshots] = statements_with(document, "ec2:ModifySnapshotAttribute")
    assert snapshots["Condition"]["ForAllValues:StringEquals"] == {
        "ec2:Add/userId": ["210987654321"]
    }


def test_commands_run_only_on_the_consistency_servers_or_instances_that_opt_in(tmp_path):
    statements = statements_with(policy("backup-policy.json"), "ssm:SendCommand")
    on_instances = [r for s in statements for r in as_list(s["Resource"]) if "instance/" in r]
    assert on_instances == [  # db01 (scripts) and dc01 (vss), not web01
        "arn:aws:ec2:eu-west-1:*:instance/i-0123456789abcdef1",
        "arn:aws:ec2:eu-west-1:*:instance/i-0123456789abcdef2",
    ]
    tagged = write_config(tmp_path / "tagged.py", REGION="eu-west-1",
                          SELECT_TAGS={"Backup": "db"}, CONSISTENCY="scripts",
                          PRE_SCRIPT="sync")  # fmt: skip
    document = iam_backup.iam_policy(load_config(str(tagged)))
    [opt_in] = [s for s in statements_with(document, "ssm:SendCommand") if "Condition" in s]
    assert opt_in["Resource"] == "arn:aws:ec2:eu-west-1:*:instance/*"
    assert opt_in["Condition"] == {
        "StringEquals": {  # opted in, and selected by SELECT_TAGS
            "ssm:resourceTag/ec2-to-ami-commands": "allow",
            "ssm:resourceTag/Backup": "db",
        }
    }


def test_the_restore_passes_only_restorable_roles_and_moves_only_opted_in_addresses():
    document = policy("restore-policy.json")
    [pass_role] = statements_with(document, "iam:PassRole")
    assert pass_role["Resource"] == "arn:aws:iam::*:role/ec2-to-ami-restorable/*"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    for statement in statements_with(document, "ec2:AssociateAddress"):
        resources = as_list(statement["Resource"])
        assert "*" not in resources
        if any(":elastic-ip/" in r for r in resources):
            assert statement["Condition"] == {
                "StringEquals": {"aws:ResourceTag/ec2-to-ami-restore": "allow"}
            }


def parliament_findings(name: str) -> list[tuple[str, str, str]]:
    """(severity, issue, actions) for each parliament finding on a shipped policy."""
    text = (ROOT / "docs" / "iam" / name).read_text()
    findings = []
    for finding in analyze_policy_string(text, name).findings:
        detail = finding.detail if isinstance(finding.detail, list) else [finding.detail]
        actions = sorted(
            {d["action"] if isinstance(d, dict) else str(d) for d in detail}
        )  # RESOURCE_MISMATCH gives dicts, RESOURCE_STAR action names
        severity = parliament_config.get(finding.issue, {}).get("severity", "UNKNOWN")
        findings.append((severity, finding.issue, ", ".join(actions)))
    return findings


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_shipped_policies_are_what_their_example_configs_generate(name):
    script, example, *args = SHIPPED[name]
    printed = generated(script, ROOT / "docs" / "iam" / "examples" / example, *args)
    assert printed == policy(name), f"run: python tools/make_policies.py ({name})"


# Actions newer than parliament's bundled reference, and why "*" is their only resource.
NEWER_THAN_PARLIAMENT = {
    "ec2:DescribeImageReferences": "a list action: AWS's AmazonEC2ImageReferencesAccessPolicy "
    "(August 2025) grants it on *",
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_resource_star_where_iam_can_name_the_resource(name):
    for statement in policy(name)["Statement"]:
        if statement["Resource"] != "*":
            continue
        for action in as_list(statement["Action"]):
            if action in NEWER_THAN_PARLIAMENT:
                continue
            service, verb = action.split(":")
            types = get_privilege_info(service, verb)["resource_types"]
            named = [t["resource_type"] for t in types if t["resource_type"]]
            # kms:DescribeKey: the key that encrypts a shared image is not known beforehand.
            assert not named or action == "kms:DescribeKey", (name, action, named)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_parliament_finds_nothing_that_docs_iam_readme_does_not_explain(name):
    listed = (ROOT / "docs" / "iam" / "README.md").read_text()
    for severity, issue, actions in parliament_findings(name):
        row = f"| {name} | {severity} {issue} | {actions} |"
        assert row in listed, f"parliament: {severity} {issue} on {actions} in {name}"
        assert (
            severity in ("LOW", "INFO") or "false positive" in listed.split(row)[1].split("\n")[0]
        )


def test_the_condition_check_catches_a_policy_without_the_marker():
    document = policy("backup-policy.json")
    [statement] = statements_with(document, "ec2:DeregisterImage")
    del statement["Condition"]  # moto would still allow every call: only this check bites
    assert unmarked(document, "ec2:DeregisterImage") == ["DeleteOnlyMarkedImagesAndSnapshots"]


BACKUP_ROLE = "arn:aws:iam::123456789012:role/ec2-backup"
RESTORE_ROLE = "arn:aws:iam::123456789012:role/ec2-restore"


def test_the_tag_guard_denies_the_tools_tags_to_everyone_but_its_roles(fleet, tmp_path):
    config = backup_config(tmp_path, fleet, TAG_WRITERS=[BACKUP_ROLE, RESTORE_ROLE])
    result = run("ec2_to_ami.py", config, "--print-iam-policy", "--guard")
    assert result.returncode == 0, result.stderr
    [deny] = json.loads(result.stdout)["Statement"]
    assert deny["Effect"] == "Deny"
    assert set(deny["Action"]) == {"ec2:CreateTags", "ec2:DeleteTags"}  # tag-on-create too
    condition = deny["Condition"]
    assert set(condition["ForAnyValue:StringLike"]["aws:TagKeys"]) == {
        "ec2-to-ami:*", "ec2-to-ami-commands", "ec2-to-ami-restore"
    }  # fmt: skip
    assert condition["ArnNotLike"]["aws:PrincipalArn"] == [BACKUP_ROLE, RESTORE_ROLE]
    findings = analyze_policy_string(result.stdout).findings
    assert not [f for f in findings if parliament_config.get(f.issue, {}).get("severity")
                in ("HIGH", "CRITICAL")]  # fmt: skip


def test_the_tag_guard_needs_its_writers_named(fleet, tmp_path):
    result = run("ec2_to_ami.py", backup_config(tmp_path, fleet), "--print-iam-policy", "--guard")
    assert result.returncode == 2 and "TAG_WRITERS" in result.stderr
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet), "--guard").returncode == 2


def test_an_in_place_restore_and_its_rollback_do_their_job_under_the_in_place_policy(
    ec2, fleet, tmp_path, endpoint, user_env
):
    web = fleet.instances["web01"]
    zone = ec2.describe_instances(InstanceIds=[web])["Reservations"][0]["Instances"][0][
        "Placement"]["AvailabilityZone"]  # fmt: skip
    data = ec2.create_volume(AvailabilityZone=zone, Size=10)["VolumeId"]
    ec2.attach_volume(VolumeId=data, InstanceId=web, Device="/dev/sdf")
    assert run("ec2_to_ami.py", backup_config(tmp_path, fleet)).returncode == 0
    SETTINGS.instance_pending_seconds = 0.1
    config = write_config(tmp_path / "r.py", SERVER="web01", INSTANCE_ID=web, WAIT="running")
    document = generated("ami_to_ec2.py", config, "--in-place")
    env = user_env("in-place-bot", document)
    used = actions_used(endpoint, env, "ami_to_ec2.py", config, [["--in-place", "--yes"]])
    run_id = next(t["Value"] for t in ec2.describe_volumes(VolumeIds=[data])["Volumes"][0]["Tags"]
                  if t["Key"] == "ec2-to-ami:replaced-by-restore").split()[0]  # fmt: skip
    used |= actions_used(endpoint, env, "ami_to_ec2.py", config, [["--rollback", run_id, "--yes"]])
    rare = {"ec2:DeleteVolume", "ec2:DescribeInstanceStatus"}  # --discard-replaced; status-ok
    assert used == actions_of(document) - rare
