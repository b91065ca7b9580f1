# Example: disaster recovery: copies in another region encrypted with a customer key,
# shared with a recovery account, deprecated after 90 days.
# docs/iam/backup-dr-policy.json is `ec2_to_ami.py --config this --print-iam-policy`.
REGION = "eu-west-1"
SERVERS = [
    {"name": "web01", "instance_id": "i-0123456789abcdef0"},
    {"name": "db01", "instance_id": "i-0123456789abcdef1"},
]
KEEP = 7
COPY_TO_REGIONS = {
    "eu-central-1": {
        "keep": 7,
        "kms_key_id": (
            "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
        ),
    },
}
SHARE_WITH_ACCOUNTS = ["210987654321"]
DEPRECATE_AFTER_DAYS = 90
# The servers' volumes are encrypted with this customer managed key.
BACKUP_KMS_KEYS = ["arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"]
