# Example: application-consistent backups through SSM (a database with scripts, a
# Windows server with VSS), deregistration protection and CloudWatch metrics.
# docs/iam/backup-policy.json is `ec2_to_ami.py --config this --print-iam-policy`.
REGION = "eu-west-1"
SERVERS = [
    {"name": "web01", "instance_id": "i-0123456789abcdef0"},
    {
        "name": "db01",
        "instance_id": "i-0123456789abcdef1",
        "consistency": "scripts",
        "pre_script": "/usr/local/bin/db-freeze",
        "post_script": "/usr/local/bin/db-thaw",
    },
    {
        "name": "dc01",
        "instance_id": "i-0123456789abcdef2",
        "consistency": "vss",
        "platform": "windows",
    },
]
KEEP = 7
DEREGISTRATION_PROTECTION = True
METRICS_NAMESPACE = "EC2Backup"
# db01's scripts run through this config's own document (--print-ssm-document), so the
# role never gets AWS-RunShellScript.
SSM_DOCUMENT = "ec2-backup-db-scripts"
