"""KMS in the generated policies: the customer managed keys a config's volumes, copies and
restores are encrypted with, named by ARN and used through EC2 (or EBS) only.

EBS encryption with a customer managed key needs, for the caller, kms:CreateGrant (with
kms:GrantIsForAWSResource), kms:Decrypt, kms:DescribeKey,
kms:GenerateDataKeyWithoutPlaintext and kms:ReEncrypt* (Amazon EBS User Guide, "How
Amazon EBS encryption works" and its IAM policy example; without them EC2 launches the
instance and then terminates it while pending). An AWS managed key (aws/ebs) needs
none: its key policy lets the account use it through EC2.

Keys are named by ARN. A key id becomes an ARN in its region and account; an alias names
no key until KMS is asked, so it is refused here (never turned into Resource "*"), with
the command that gives its ARN.
"""

from __future__ import annotations

from collections.abc import Iterable

from ec2ami.errors import ConfigError
from ec2ami.iam import allow

THROUGH_EC2 = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
               "kms:ReEncryptFrom", "kms:ReEncryptTo"]  # fmt: skip
ALIAS = "alias/"


def key_arn(setting: str, key: str, region: str, account: str) -> str:
    """The ARN of a key given by ARN or id; an alias (or an alias ARN) is refused."""
    if key.startswith(ALIAS) or ":alias/" in key:
        raise ConfigError(
            f"{setting}: {key} is an alias, and IAM names keys by ARN; set the key's ARN "
            f"(aws kms describe-key --region {region} --key-id {key} --query KeyMetadata.Arn)"
        )
    return key if key.startswith("arn:") else f"arn:aws:kms:{region}:{account}:key/{key}"


def blocks_statements(keys: Iterable[str], region: str) -> list[dict]:
    """--cost lists encrypted snapshots' blocks with the EBS direct APIs: kms:Decrypt on
    their keys, through EBS only. Unconfirmed: the EBS User Guide's "Control access to EBS
    direct APIs using IAM" covers the ebs: actions, and no page found here says whether
    ListSnapshotBlocks and ListChangedBlocks (which read no data) need a key permission;
    the grant is kept narrow in case they do."""
    arns = sorted(set(keys))
    via = {"StringEquals": {"kms:ViaService": f"ebs.{region}.amazonaws.com"}}
    return [allow("CountBlocksOfEncryptedSnapshotsThroughEbsOnly", "kms:Decrypt", arns, via)
            ] if arns else []  # fmt: skip


def kms_statements(keys: Iterable[str], via: Iterable[str]) -> list[dict]:
    """Use of the keys (ARNs) only through EC2 in the regions via, as EBS encryption
    needs it; grants only for AWS resources (EC2's own)."""
    arns = sorted(set(keys))
    if not arns:
        return []
    through = {"StringEquals": {"kms:ViaService": [f"ec2.{r}.amazonaws.com"
                                                   for r in sorted(set(via))]}}  # fmt: skip
    return [
        allow("UseTheConfigsKeysThroughEc2Only", THROUGH_EC2, arns, through),
        allow("GrantOnTheConfigsKeysOnlyToAwsResources", "kms:CreateGrant", arns,
              {**through, "Bool": {"kms:GrantIsForAWSResource": "true"}}),
    ]  # fmt: skip
