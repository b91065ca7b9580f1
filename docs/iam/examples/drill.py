# Example: weekly restore drills in eu-west-1, into an isolated subnet, with a check.
# docs/iam/drill-policy.json is `ami_to_ec2.py --config this --drill --print-iam-policy`.
REGION = "eu-west-1"
ALLOWED_INSTANCE_PROFILES = ["web-profile", "db-profile"]
DRILL_SUBNET_ID = "subnet-0d1e2f3a4b5c6d7e8"
DRILL_SECURITY_GROUP_IDS = ["sg-0a1b2c3d4e5f60718"]
DRILL_CHECK = {"linux": "systemctl is-active nginx", "windows": "Get-Service W3SVC"}
