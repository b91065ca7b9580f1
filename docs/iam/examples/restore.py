# Example: restores in eu-west-1, giving back only the listed instance profiles.
# docs/iam/restore-policy.json is `ami_to_ec2.py --config this --print-iam-policy`.
REGION = "eu-west-1"
ALLOWED_INSTANCE_PROFILES = ["web-profile", "db-profile"]
