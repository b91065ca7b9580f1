# Example: a plain daily backup of two listed servers and a tagged group, no SSM, no DR.
# docs/iam/backup-plain-policy.json is `ec2_to_ami.py --config this --print-iam-policy`.
REGION = "eu-west-1"
SERVERS = [
    {"name": "web01", "instance_id": "i-0123456789abcdef0"},
    {"name": "web02", "instance_id": "i-0123456789abcdef1"},
]
SELECT_TAGS = {"Backup": "daily"}
KEEP = 7
