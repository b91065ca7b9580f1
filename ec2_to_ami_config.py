# Settings for ec2_to_ami.py: plain Python, UPPER_CASE names only.
# Run another file with:  python ec2_to_ami.py --config /path/to/weekly.py
# A misspelt or mistyped setting stops the run with exit 2 before any AWS call.

# AWS region. None: AWS_REGION / AWS_DEFAULT_REGION, or the profile's region.
REGION = None

# Named profile from ~/.aws/config. None: the default credential chain
# (environment, profile, or the admin host's instance role).
PROFILE = None

# Servers to back up. name is the server's identity: it names its images and
# its retention pool, and the restore finds backups by it.
# Optional per server: keep (overrides KEEP), no_reboot (overrides NO_REBOOT),
# tags (extra tags on this server's images and snapshots), consistency,
# pre_script and post_script (override the settings below), and platform
# ("windows" or "linux", so that a wrong consistency is caught up front).
SERVERS = [
    # {"name": "web01", "instance_id": "i-0123456789abcdef0"},
    # {"name": "dc01", "instance_id": "i-0fedcba9876543210", "consistency": "vss",
    #  "platform": "windows", "keep": 14},
    # {"name": "pg01", "instance_id": "i-0aaaabbbbccccdddd", "consistency": "scripts",
    #  "pre_script": "sudo -u postgres psql -c CHECKPOINT && fsfreeze -f /var/lib/postgresql",
    #  "post_script": "fsfreeze -u /var/lib/postgresql"},
]

# Also back up every non-terminated instance carrying all of these tags,
# named by its Name tag (or its instance id). Instances in SERVERS are not
# picked up twice. Example: {"Backup": "daily"}
SELECT_TAGS = {}

# Label of this schedule. Retention is counted per server per schedule, so a
# daily and a weekly config keep separate pools of images.
SCHEDULE = "daily"

# The retention pool (1-64 letters, digits, '.', '_', '-'): a run counts and prunes
# only its own pool's images. None: this file's name ("daily" for daily.py), so two
# configs that each back up a server of the same name never prune each other.
POOL = None

# A pool counts and prunes only images that EC2 says were made from the server's own
# instance (SourceInstanceId), whatever their tags say: anyone who may tag an image can
# write these tags. Backups of an instance the server used to be, other than the one a
# restore launched it from, are kept and named until adopted here.
# Example: {"web01": ["i-0123456789abcdef0"]}
ADOPT_INSTANCES = {}

# Keep (and name) an image retention would remove while something still uses it: an
# instance launched from it, or a launch template (an Auto Scaling group's too); one call
# of DescribeImageReferences per 10 images pruned. False: KEEP alone decides.
CHECK_IMAGE_REFERENCES = True

# Images that EC2 made before this time and that carry no SourceInstanceId are trusted
# by their tags, as before ownership was checked. None: no image is. CreationDate is
# EC2's, so no image made later can use this. Example: "2026-12-01T00:00Z"
TRUST_TAGS_BEFORE = None

# Newest available backups kept per server (>= 1). Pending images never count
# and are never deleted.
KEEP = 7

# Also delete backups older than this many days. The newest available backup
# of a server is never deleted by age. None: no age limit.
MAX_AGE_DAYS = None

# True: image without rebooting (crash-consistent, no downtime).
# False: EC2 reboots the instance for a file-system-consistent image.
NO_REBOOT = True

# How consistent each image is. None: from NO_REBOOT ("crash" or "reboot").
#   "crash":   no reboot; as if the power was pulled (journals and databases recover).
#   "reboot":  EC2 reboots the instance for a file-system-consistent image.
#   "vss":     Windows only: SSM runs AWSEC2-CreateVssSnapshot with CreateAmi=True,
#              so VSS writers (SQL Server, AD) flush and freeze. Needs SSM Agent, the
#              AwsVssComponents package and an instance role with
#              AmazonSSMManagedInstanceCore and AWSEC2VssSnapshotPolicy.
#   "scripts": SSM runs PRE_SCRIPT (shell on Linux, PowerShell on Windows), the
#              image is made without reboot, then POST_SCRIPT runs, always, as soon
#              as CreateImage returns (even if it failed). Needs SSM Agent and
#              AmazonSSMManagedInstanceCore.
CONSISTENCY = None
PRE_SCRIPT = None
POST_SCRIPT = None
# Each script (and the VSS document) must finish within this many seconds (>= 30).
SCRIPT_TIMEOUT_SECONDS = 300
# A failed pre-script or VSS command: "fail" fails that server's backup (exit 1,
# nothing pruned for it); "crash" makes a crash-consistent image instead, with a warning.
ON_SCRIPT_FAILURE = "fail"
# The name of this config's own SSM Command document for PRE_SCRIPT and POST_SCRIPT,
# which then run through it instead of AWS-RunShellScript / AWS-RunPowerShellScript (which
# run any command as root): the backup role may then run these scripts and nothing else.
# `--print-ssm-document` prints it; create it once, and again after changing a script.
SSM_DOCUMENT = None

# Extra tags on every image and snapshot, e.g. {"CostCenter": "ops"}.
TAGS = {}

# Copy the instance's own tags (not aws:*) onto its images, so a restore can
# give them back. With False a restore only gets the recorded configuration.
COPY_INSTANCE_TAGS = True

# Record each instance's Elastic Load Balancing membership (ELBv2 target groups and
# ports, Classic Load Balancers), so a restore can register the new instance where the
# original was. Costs one DescribeTargetHealth per target group in the servers' VPCs,
# plus two calls, per run. A run that may not read them says so and records them as
# unknown; the restore then warns. False: not recorded.
RECORD_LOAD_BALANCERS = True

# AMI name. Fields: {server}, {schedule}, {time} (required, a UTC datetime),
# {instance_id}. Characters EC2 does not allow become "-".
NAME_FORMAT = "{server}-{schedule}-{time:%Y%m%d-%H%M%S}"

# Wait until the new images are available, which verifies the backup.
# A server whose image is not available in time is reported failed and not pruned.
WAIT = True
WAIT_TIMEOUT_MINUTES = 120

# Also append log lines to this file. None: stderr only.
LOG_FILE = None

# --- Disaster recovery (docs/dr.md; IAM: --print-iam-policy) ---
# Copy each new backup to these regions, keeping "keep" copies per server there
# (None: the server's keep), encrypted with "kms_key_id" if given. Needs WAIT = True.
# Example: {"us-west-2": {"keep": 7, "kms_key_id": "alias/dr-backups"}}
COPY_TO_REGIONS = {}
# The customer managed KMS keys (by ARN) that encrypt the servers' volumes, so their
# backups: the policy (--print-iam-policy) grants their use through EC2 for the copies,
# and through EBS for --cost (docs/iam.md). AWS managed keys (aws/ebs) need nothing here.
BACKUP_KMS_KEYS = []
# EC2 throttles each API with a token bucket (the EC2 Developer Guide's "Request throttling
# for the Amazon EC2 API"); the tool paces each call to the documented bucket. If AWS has
# raised a limit for your account, give it here: {"RunInstances": (10, 4)} is a bucket of 10
# requests refilled at 4 a second.
EC2_API_LIMITS = {}
# Share every new image and copy with these accounts (12-digit strings, at most 15).
# An image encrypted with the AWS-managed key aws/ebs cannot be shared (a warning says so).
SHARE_WITH_ACCOUNTS = []
# Deprecate every new image and copy this many days after the backup. None: never.
DEPRECATE_AFTER_DAYS = None
# Protect every new image and copy from deregistration (no cooldown); retention lifts
# the protection just before it deregisters. Guards against accidents, not against
# whoever holds the backup role.
DEREGISTRATION_PROTECTION = False
# The roles that may write this tool's tags (the backup's, the restore's and the drill's,
# and whoever opts resources in): --print-iam-policy --guard prints the deny policy, an SCP
# or permission boundary, that keeps everyone else from writing them (docs/iam.md).
TAG_WRITERS = []
# Assume this role before any AWS call, to back up a fleet in another account.
# Example: "arn:aws:iam::210987654321:role/ec2-to-ami-backup"
ROLE_ARN = None

# --- Monitoring (docs/monitoring.md) -----------------------------------------------------
# --check reports a server whose newest available backup is older than this many
# hours. None: 26 for SCHEDULE "daily", 192 for "weekly"; other schedules must set it.
RPO_HOURS = None
# Put BackupAgeHours per server, and ServersBackedUp, ServersFailed, ImagesPruned and
# RunSeconds per run, into this CloudWatch namespace, on each run and each --check.
# None: no metrics. Example: "EC2Backup" (IAM: cloudwatch:PutMetricData for it).
METRICS_NAMESPACE = None
# Each run records its time, exit code and counts here, for --check. None:
# $XDG_STATE_HOME/ec2-to-ami/<config name>-<hash>.json (~/.local/state/...).
STATE_FILE = None

# --- Cost (docs/cost.md) ------------------------------------------------------------------
# --cost prices the blocks the kept snapshots store at these USD per GiB-month: EBS
# snapshots in the standard tier and in the archive tier, us-east-1 list prices
# (https://aws.amazon.com/ebs/pricing/). Set your region's prices.
SNAPSHOT_PRICE_GB_MONTH = 0.05
ARCHIVE_PRICE_GB_MONTH = 0.0125
