# Example: restores in eu-west-1, giving back only the listed instance profiles.
# docs/iam/restore-policy.json is `ami_to_ec2.py --config this --print-iam-policy`.
REGION = "eu-west-1"
ALLOWED_INSTANCE_PROFILES = ["web-profile", "db-profile"]
# The backups' volumes are encrypted with this customer managed key.
BACKUP_KMS_KEYS = ["arn:aws:kms:eu-west-1:123456789012:key/0123abcd-12ab-34cd-56ef-1234567890ab"]
