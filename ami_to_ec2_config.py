# Settings for ami_to_ec2.py: plain Python, UPPER_CASE names only.
# Run another file with:  python ami_to_ec2.py --config /path/to/restore.py
# A misspelt or mistyped setting stops the restore with exit 2 before any AWS call.
# --server, --ami, --before and --count on the command line override this file.
#
# None for a launch setting means: as recorded from the original instance when
# the backup was made. A restore needs nothing but SERVER.

# AWS region and named profile; None: the standard AWS chain (AWS_REGION, ...).
REGION = None
PROFILE = None

# Restore the newest available backup of this server (the name ec2_to_ami.py used) ...
SERVER = None
# ... or this exact image (any image, not only this tool's). Set one of the two.
AMI_ID = None

# Consider only backups of this schedule ("daily", "weekly"). None: any.
SCHEDULE = None
# Only backups of this backup config's pool (its POOL, by default the backup config's
# file name). None: any pool; a server name backed up by two configs must then choose.
POOL = None

# Point in time (ISO 8601, UTC if no zone): the newest backup at or before it.
BACKUP_BEFORE = None

# Instances to launch (>= 1), all with one RunInstances call.
COUNT = 1

# Launch configuration. None: as recorded from the original.
INSTANCE_TYPE = None
SUBNET_ID = None  # fixes the availability zone
SECURITY_GROUP_IDS = None  # a list of sg- ids
KEY_NAME = None
IAM_INSTANCE_PROFILE = None  # name or ARN
# The instance profiles a restore may take from the image's tag, by name or ARN.
# A profile hands its role to the new instance, and a tag is only as trusted as
# whoever may tag images: a recorded profile not listed stops the restore before
# launch. None: any recorded profile (the dry run says it came from a tag).
# IAM_INSTANCE_PROFILE, when set, is used as it is.
ALLOWED_INSTANCE_PROFILES = None

# None: a new private address. "same": the original's (COUNT = 1 only; checked
# to be free first). Or an address in the subnet.
PRIVATE_IP = None

# "same": the Elastic IP the original had. An eipalloc- id: that one. None: none.
# With COUNT > 1 it goes to the first instance.
ELASTIC_IP = "same"

# An Elastic IP still attached to another instance is moved only when True;
# otherwise the restore warns, naming the holder, and leaves it there.
ALLOW_REASSOCIATION = False

# OS host name. Linux: cloud-init user data. Windows: EC2Launch v2 user data
# (needs EC2Launch v2 on the image; see the README). None: as the image has it.
HOSTNAME = None

# Extra user data: text, or "@path" to read a file. Without HOSTNAME it is
# passed unchanged; with HOSTNAME it is combined as the README describes.
# It may hold secrets: it is never printed or logged.
USER_DATA = None

# Name tag of the new instance. None: the original's, with "-restored" added
# while the original instance still exists.
NAME = None

# Tags added over the original's own tags.
TAGS = {}

TERMINATION_PROTECTION = False

# "required" (IMDSv2 only) or "optional". None: as recorded; "required" if not recorded.
IMDSV2 = None

# Applied to every EBS volume of the image at launch. None: as the image has it.
VOLUME_TYPE = None  # gp3, gp2, io1, io2, st1, sc1, standard
ENCRYPTED = None
KMS_KEY_ID = None  # implies ENCRYPTED = True
DELETE_ON_TERMINATION = None

# Wait for "none", "running" or "status-ok" (both status checks passed).
WAIT = "status-ok"
WAIT_TIMEOUT_MINUTES = 30

# --- Disaster recovery (README, "Disaster recovery") ---
# Restoring a copy in another region (REGION or --region): the recorded subnet,
# security groups and Elastic IP belong to the source region. Set SUBNET_ID and
# SECURITY_GROUP_IDS, or map the recorded ids here, per destination region:
# {"us-west-2": {"subnet-0aaa...": "subnet-0bbb...", "sg-0aaa...": "sg-0bbb...",
#                "eipalloc-0aaa...": "eipalloc-0bbb...", "ops-key": "ops-key-dr"}}
REGION_MAP = {}
# Assume this role before any AWS call, to restore in another account.
ROLE_ARN = None
