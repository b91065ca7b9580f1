"""Encrypted backups (issue 27, KMS): the policies name the keys by ARN and use them
through EC2 only, and a restore (or drill) whose image's key EC2 could not use is refused
before launch, naming the key and what is missing, where EC2 would terminate the
instance while pending."""

from __future__ import annotations

import json

import boto3
import pytest

from localaws.endpoint import SETTINGS
from tests.conftest import REGION, backup_config, drill_config, run, write_config


@pytest.fixture
def kms(endpoint):
    return boto3.client("kms", region_name=REGION, endpoint_url=endpoint.url)


@pytest.fixture
def encrypted(ec2, fleet, kms, tmp_path):
    """web01's volumes under a customer managed key, app01's under aws/ebs, backed up."""
    key = kms.create_key(Description="web01 volumes")["KeyMetadata"]["Arn"]
    SETTINGS.encrypt_images_of[fleet.instances["web01"]] = key
    SETTINGS.encrypt_images_of[fleet.instances["app01"]] = None  # aws/ebs
    servers = [{"name": n, "instance_id": fleet.instances[n]} for n in ("web01", "app01")]
    config = backup_config(tmp_path, fleet, SERVERS=servers, SELECT_TAGS={})
    assert run("ec2_to_ami.py", config).returncode == 0
    SETTINGS.instance_pending_seconds = 0.1
    fleet.key = key
    return fleet


def restore(tmp_path, *args: str, **settings):
    config = write_config(tmp_path / "r.py", WAIT="running", **settings)
    return run("ami_to_ec2.py", config, "--dry-run", *args), run("ami_to_ec2.py", config, *args)


def test_a_customer_key_the_config_does_not_list_is_refused_before_launch(
    encrypted, tmp_path, endpoint
):
    launches = endpoint.count("RunInstances")
    for result in restore(tmp_path, SERVER="web01", NAME="web01-r"):
        assert result.returncode == 1
        assert f"is encrypted with KMS key {encrypted.key}" in result.stderr
        assert "BACKUP_KMS_KEYS does not list" in result.stderr
        assert "nothing launched" in result.stderr
    assert endpoint.count("RunInstances") == launches
    dry, real = restore(tmp_path, SERVER="web01", NAME="web01-r", BACKUP_KMS_KEYS=[encrypted.key])
    assert (dry.returncode, real.returncode) == (0, 0), real.stderr


def test_a_disabled_key_or_one_pending_deletion_is_refused_and_aws_ebs_needs_nothing(
    encrypted, kms, tmp_path, endpoint
):
    key_id = encrypted.key.rsplit("/", 1)[1]  # moto's DisableKey takes no ARN
    kms.disable_key(KeyId=key_id)
    dry, real = restore(tmp_path, SERVER="web01", BACKUP_KMS_KEYS=[encrypted.key])
    assert real.returncode == dry.returncode == 1
    assert f"KMS key {encrypted.key}, which is Disabled" in real.stderr
    kms.enable_key(KeyId=key_id)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    _, real = restore(tmp_path, SERVER="web01", BACKUP_KMS_KEYS=[encrypted.key])
    assert "which is PendingDeletion" in real.stderr and real.returncode == 1
    _, real = restore(tmp_path, SERVER="app01", NAME="app01-r")
    assert real.returncode == 0, real.stderr


def test_a_drill_checks_the_keys_too(ec2, encrypted, tmp_path, endpoint):
    from localaws.fleet import drill_network

    encrypted.drill_subnet, encrypted.drill_group = drill_network(ec2, encrypted)
    result = run("ami_to_ec2.py", drill_config(tmp_path, encrypted), "--drill", "--server", "web01")
    assert result.returncode == 1 and "BACKUP_KMS_KEYS does not list" in result.stderr
    config = drill_config(tmp_path, encrypted, BACKUP_KMS_KEYS=[encrypted.key])
    result = run("ami_to_ec2.py", config, "--drill", "--server", "web01")
    assert result.returncode == 0, result.stderr


def test_policies_name_keys_by_arn_and_refuse_an_alias(tmp_path):
    key = "arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"
    config = write_config(tmp_path / "r.py", REGION="eu-west-1", KMS_KEY_ID="alias/restores")
    result = run("ami_to_ec2.py", config, "--print-iam-policy")
    assert result.returncode == 2 and result.stdout == ""
    assert "KMS_KEY_ID: alias/restores is an alias, and IAM names keys by ARN" in result.stderr
    assert "aws kms describe-key --region eu-west-1 --key-id alias/restores" in result.stderr
    role = "arn:aws:iam::123456789012:role/r"
    config = write_config(tmp_path / "r.py", REGION="eu-west-1", KMS_KEY_ID="0123abcd-12ab",
                          BACKUP_KMS_KEYS=[key], ROLE_ARN=role)  # fmt: skip
    result = run("ami_to_ec2.py", config, "--print-iam-policy")
    statements = json.loads(result.stdout)["Statement"]
    [grant] = [s for s in statements if s["Action"] == "kms:CreateGrant"]
    assert grant["Resource"] == sorted(
        [key, "arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab"]
    )
    assert grant["Condition"]["StringEquals"] == {"kms:ViaService": ["ec2.eu-west-1.amazonaws.com"]}
    assert all(s["Resource"] != "*" for s in statements if str(s["Action"]).startswith("kms"))
    bad = write_config(tmp_path / "r.py", SERVER="web01", BACKUP_KMS_KEYS=["alias/x"])
    result = run("ami_to_ec2.py", bad, "--dry-run")
    assert result.returncode == 2 and "BACKUP_KMS_KEYS must be a list of KMS key ARNs" in (
        result.stderr
    )


def test_cost_reads_encrypted_blocks_only_through_ebs(tmp_path, fleet):
    key = "arn:aws:kms:us-east-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"
    config = backup_config(tmp_path, fleet, BACKUP_KMS_KEYS=[key])
    result = run("ec2_to_ami.py", config, "--print-iam-policy")
    [read] = [s for s in json.loads(result.stdout)["Statement"]
              if s["Sid"] == "CountBlocksOfEncryptedSnapshotsThroughEbsOnly"]  # fmt: skip
    assert (read["Action"], read["Resource"]) == ("kms:Decrypt", [key])
    assert read["Condition"] == {"StringEquals": {"kms:ViaService": "ebs.us-east-1.amazonaws.com"}}
