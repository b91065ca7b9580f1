"""Before launch: can EC2 use the KMS keys of the image's encrypted snapshots (and
KMS_KEY_ID)? If not, EC2 launches the instance and then terminates it while pending,
with no clear error (Amazon EBS User Guide, "How Amazon EBS encryption works"), so the
restore refuses instead, naming the key and what is missing.

What can be checked without a launch: the key exists and is enabled (KMS DescribeKey),
and a customer managed key is listed in BACKUP_KMS_KEYS (or is KMS_KEY_ID), which is
what the restore's policy (--print-iam-policy) grants use of. A grant cannot be tried
ahead: EC2 asks for it through kms:ViaService, which a call of the restore's own never
has. An AWS managed key (aws/ebs) is usable by the account through EC2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from ec2ami.facts import KEY_ENABLED, KEY_MANAGER_AWS
from ec2ami.restore.config import RestoreError

if TYPE_CHECKING:
    from ec2ami.restore.model import Plan

ERR_ACCESS_DENIED = "AccessDeniedException"  # KMS's code when IAM or the key policy refuses


def encrypted_snapshots(image: dict) -> list[str]:
    """The snapshots of an image's encrypted EBS devices."""
    return [m["Ebs"]["SnapshotId"] for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("Encrypted") and m["Ebs"].get("SnapshotId")]  # fmt: skip


def describe_keys(kms: Any, keys: set[str]) -> dict[str, dict | str]:
    """Each key's KMS metadata, or the error code DescribeKey answered (once per key)."""
    found: dict[str, dict | str] = {}
    for key in sorted(keys):
        try:
            found[key] = kms.describe_key(KeyId=key)["KeyMetadata"]
        except ClientError as err:
            found[key] = err.response["Error"]["Code"]
    return found


def check_keys(plan: Plan, snapshot_keys: dict[str, str], keys: dict[str, dict | str],
               listed: set[str], kms_key_id: str | None) -> None:  # fmt: skip
    """Refuse the launch when a key its volumes need cannot be used through EC2."""
    wanted = [(f"snapshot {s} of image {plan.image['ImageId']} is encrypted with", snapshot_keys[s])
              for s in encrypted_snapshots(plan.image) if s in snapshot_keys]  # fmt: skip
    if kms_key_id:
        wanted.append(("KMS_KEY_ID is", kms_key_id))
    for what, key in wanted:
        problem = key_problem(key, keys.get(key, "NotFoundException"), {*listed, kms_key_id})
        if problem:
            raise RestoreError(f"{what} KMS key {key}, which {problem}")


def key_problem(key: str, metadata: dict | str, listed: set[str | None]) -> str | None:
    """Why EC2 could not use the key, in words, or None."""
    if metadata == ERR_ACCESS_DENIED:
        return ("the restore may not describe (kms:DescribeKey): its policy allows that on "
                "this account's keys and on BACKUP_KMS_KEYS; add the key's ARN there")  # fmt: skip
    if isinstance(metadata, str):
        return f"KMS cannot find ({metadata}): the volumes cannot be decrypted"
    if metadata.get("KeyState") != KEY_ENABLED:
        return (f"is {metadata.get('KeyState')}: EC2 would launch the instance and terminate "
                "it while pending; enable the key (or cancel its deletion) first")  # fmt: skip
    if metadata.get("KeyManager") != KEY_MANAGER_AWS and not {key, metadata.get("Arn")} & listed:
        return ("is a customer managed key that BACKUP_KMS_KEYS does not list: the restore's "
                "policy (--print-iam-policy) grants kms:CreateGrant, Decrypt, DescribeKey, "
                "GenerateDataKeyWithoutPlaintext and ReEncrypt* on the listed keys only, and "
                "without them EC2 terminates the instance while pending; add its ARN to "
                "BACKUP_KMS_KEYS and update the policy")  # fmt: skip
    return None
