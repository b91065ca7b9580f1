# Settings for ami_to_ec2.py: plain Python, UPPER_CASE names only.
# Run another file with:  python ami_to_ec2.py --config /path/to/restore.py
# A misspelt or mistyped setting stops the restore with exit 2 before any AWS call.
# --server, --all, --ami, --before and --count on the command line override this file.
#
# None for a launch setting means: as recorded from the original instance when
# the backup was made. A restore needs nothing but SERVER.

# AWS region and named profile; None: the standard AWS chain (AWS_REGION, ...).
REGION = None
PROFILE = None

# Restore the newest available backup of this server (the name ec2_to_ami.py used) ...
SERVER = None
# ... or this exact image (any image, not only this tool's) ...
AMI_ID = None
# ... or these servers, in one run (a fleet; --server a --server b and --all do the
# same). Each gets its own recorded configuration; they launch at EC2's RunInstances
# pace (5, then 2 a second) and are waited for together. One server's failure stops no
# other; the run exits 1 if any failed. NAME, HOSTNAME, DNS_RECORDS, a PRIVATE_IP or
# ELASTIC_IP address and COUNT > 1 fit one server only, and are errors here.
# Set one of SERVER, AMI_ID and SERVERS.
SERVERS = None

# Consider only backups of this schedule ("daily", "weekly"). None: any.
SCHEDULE = None
# Only backups of this backup config's pool (its POOL, by default the backup config's
# file name). None: any pool; a server name backed up by two configs must then choose.
POOL = None

# Point in time (ISO 8601, UTC if no zone): the newest backup at or before it.
BACKUP_BEFORE = None

# Instances to launch (>= 1), one RunInstances call each: the first is named as the
# server (NAME), the others <name>-2, <name>-3, ..., so no two share a name. Elastic
# IPs, target groups and DNS records go to the first.
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

# None: new private addresses. "same": the original's, on every interface, secondary
# addresses too (COUNT = 1 only; checked to be free first). Or an address in the subnet
# for the primary interface.
PRIVATE_IP = None

# "same": every Elastic IP the original had, each on its interface and address. An
# eipalloc- id: that one, on the primary address. None: none.
ELASTIC_IP = "same"

# An Elastic IP still attached to another instance is moved only when True;
# otherwise the restore warns, naming the holder, and leaves it there.
ALLOW_REASSOCIATION = False

# OS host name. Linux: cloud-init user data. Windows: EC2Launch v2 user data
# (needs EC2Launch v2 on the image; see docs/restore.md). None: as the image has it.
HOSTNAME = None

# Extra user data: text, or "@path" to read a file. Without HOSTNAME it is
# passed unchanged; with HOSTNAME it is combined as docs/restore.md describes.
# It may hold secrets: it is never printed or logged.
USER_DATA = None

# Name tag of the new instance. None: the original's, with "-restored" added
# while the original instance still exists.
NAME = None

# Tags added over the original's own tags.
TAGS = {}

# --- The twin: every attribute below is None for "as the original ran" ---
# The backup recorded each of these (docs/restore.md, "What a restore reproduces"); a restore
# reproduces it, reads the new instance back, prints a before/after table and warns
# about any difference. A backup made before launch records knew only the subnet,
# security groups, private IP, one Elastic IP and IMDS tokens: the rest is EC2's
# default then, and the restore says so.

# True or False: termination and stop protection, detailed monitoring, EBS-optimized.
TERMINATION_PROTECTION = None
STOP_PROTECTION = None
MONITORING = None
EBS_OPTIMIZED = None
SHUTDOWN_BEHAVIOR = None  # "stop" or "terminate"
AUTO_RECOVERY = None  # "default" or "disabled"

# "required" (IMDSv2 only) or "optional". None: as recorded; "required" if not recorded.
IMDSV2 = None
# Other instance metadata options over the recorded ones, for example
# {"HttpPutResponseHopLimit": 2, "InstanceMetadataTags": "enabled"}; also HttpEndpoint,
# HttpProtocolIpv6 (and HttpTokens, if IMDSV2 is None).
METADATA_OPTIONS = None
# {"HostnameType": "ip-name" | "resource-name", "EnableResourceNameDnsARecord": bool,
#  "EnableResourceNameDnsAAAARecord": bool} over the recorded ones.
PRIVATE_DNS_NAME_OPTIONS = None

# Placement. TENANCY: "default", "dedicated" or "host". PLACEMENT_GROUP: a name, or
# False for none. HOST_ID: a dedicated host (h-...), or False for none (BYOL on a
# Dedicated Host: set TENANCY = "host" and HOST_ID). A recorded group or host that no
# longer exists is left out, with a warning.
TENANCY = None
PLACEMENT_GROUP = None
HOST_ID = None

# {"CoreCount": n, "ThreadsPerCore": n}, or False for the instance type's default. The
# recorded options are used only with the recorded INSTANCE_TYPE.
CPU_OPTIONS = None
# "standard" or "unlimited", for T instance types.
CREDIT_SPECIFICATION = None

# The network interfaces, by device index, instead of the recorded ones (SUBNET_ID,
# SECURITY_GROUP_IDS and PRIVATE_IP then do not apply):
# [{"subnet_id": "subnet-...", "security_group_ids": ["sg-..."], "private_ip": None,
#   "secondary_private_ips": 0, "ipv6_addresses": 0, "source_dest_check": True,
#   "description": "", "delete_on_termination": True}, ...]
# A recorded source/dest check that is off is set off again after launch.
NETWORK_INTERFACES = None
# A public IP from EC2 at launch (only with one network interface). None: as recorded.
PUBLIC_IP = None

# ELBv2 target groups to register the first instance in. "same": the recorded ones,
# each on its recorded port; [] none; or a list of ARNs, or {"arn": ..., "port": ...}.
# A target group where the original is still registered and healthy is skipped, with a
# warning, unless ALLOW_REASSOCIATION = True.
TARGET_GROUPS = "same"
# Classic Load Balancers: "same", [] or a list of names.
CLASSIC_LOAD_BALANCERS = "same"
# Route 53 A records to point at the first instance once it runs, keeping each
# record's TTL: [{"zone_id": "Z...", "name": "web.example.com", "type": "A",
#                 "value": "private" | "public"}]
DNS_RECORDS = []

# Applied to every EBS volume of the image at launch. None: as the image has it.
VOLUME_TYPE = None  # gp3, gp2, io1, io2, st1, sc1, standard
ENCRYPTED = None
KMS_KEY_ID = None  # implies ENCRYPTED = True
# The customer managed KMS keys (by ARN) that encrypt the backups this config restores:
# the policy (--print-iam-policy) grants their use through EC2, and a restore checks
# before launch that each encrypted snapshot's key is listed and enabled (docs/iam.md).
BACKUP_KMS_KEYS = []
# EC2 throttles each API with a token bucket (the EC2 Developer Guide's "Request throttling
# for the Amazon EC2 API"); the tool paces each call to the documented bucket. If AWS has
# raised a limit for your account, give it here: {"RunInstances": (10, 4)} is a bucket of 10
# requests refilled at 4 a second.
EC2_API_LIMITS = {}
DELETE_ON_TERMINATION = None
# Fetch each volume's blocks from its snapshot at this many MiB/s (100-300), so the
# volume is fully fast after size / rate seconds (100 GiB at 300 MiB/s: under 6 minutes)
# instead of at EBS's default, unpredictable rate. Its price is on the EBS pricing page;
# it takes the place of Fast Snapshot Restore for that volume. None: EBS's default.
VOLUME_INITIALIZATION_RATE = None

# Wait for "none", "running" or "status-ok" (both status checks passed), each instance
# at most WAIT_TIMEOUT_MINUTES after RunInstances accepted it.
WAIT = "status-ok"
WAIT_TIMEOUT_MINUTES = 30

# --- Restore drills: ami_to_ec2.py --drill (docs/restore.md, "Restore drills") ---
# A drill restores each chosen server (--server, --all or SERVERS) into an isolated
# subnet, waits for status-ok, runs DRILL_CHECK, then terminates it, always. It tags
# the image ec2-to-ami:verified (ok or failed, with the seconds taken) and never takes
# an Elastic IP, a fixed private IP, a public IP, a target group or a DNS record.
# Required for a drill: a subnet and security groups that keep it from production.
DRILL_SUBNET_ID = None
DRILL_SECURITY_GROUP_IDS = None
# A smaller instance type for drills, to save cost. None: as recorded.
DRILL_INSTANCE_TYPE = None
# A command run through SSM Run Command once the instance passes its status checks,
# which must exit 0: one for all ("systemctl is-active nginx"), or one per platform:
# {"linux": "systemctl is-active nginx", "windows": "Get-Service MSSQLSERVER"}. It needs
# SSM Agent and an instance profile with AmazonSSMManagedInstanceCore on the image's
# recorded profile. None: status-ok is the check.
DRILL_CHECK = None
# Each drill instance lives at most this long after its launch: status-ok and the
# check must both pass within it. Each is tagged with a deadline (twice this after its
# drill began); a later drill ends instances a killed drill left behind only past
# their own deadline, so drills with other timeouts never end each other's.
DRILL_TIMEOUT_MINUTES = 15
# "newest": each server's newest backup. "random": any available one it keeps, so the
# older restore points are tested too.
DRILL_PICK = "newest"
# Append one JSON line per server and drill to this file: the result, the backup's age
# and the seconds to each step (docs/restore.md, "Reading the drill log"). None: no log.
DRILL_LOG = None
# False: a drill leaves out the recorded placement group, partition, dedicated host,
# host resource group and affinity, and uses no capacity reservation, so it never
# takes production's slots. True: it launches with them, as the twin would.
DRILL_PLACEMENT = False

# --- Restore in place: ami_to_ec2.py --in-place (docs/restore.md, "Restore in place") ---
# True: put the server's disks back from the backup on its live instance, which keeps its
# id, interfaces, addresses and everything attached to it, instead of launching a new one.
IN_PLACE = False
# The live instance to restore in place (and that --in-place --print-iam-policy is scoped
# to). None: the instance the backup was made from, or the one restored from it.
INSTANCE_ID = None

# --- Disaster recovery (docs/dr.md) ---
# Restoring a copy in another region (REGION or --region): the recorded subnet,
# security groups and Elastic IP belong to the source region. Set SUBNET_ID and
# SECURITY_GROUP_IDS, or map the recorded ids here, per destination region:
# {"us-west-2": {"subnet-0aaa...": "subnet-0bbb...", "sg-0aaa...": "sg-0bbb...",
#                "eipalloc-0aaa...": "eipalloc-0bbb...", "ops-key": "ops-key-dr"}}
REGION_MAP = {}
# Assume this role before any AWS call, to restore in another account.
ROLE_ARN = None
