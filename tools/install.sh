#!/bin/sh
# Install ec2-ami-backup on an admin host, as the README's "Install on an admin host" does
# by hand: the ec2backup user, the directories, the tool with its run-time requirements
# only (boto3) in a venv of its own, and the daily and weekly configs to fill in.
#
#   sudo tools/install.sh              install under /
#   tools/install.sh --root DIR        install under DIR: a scratch root, no user, no chown
#                                      (tests/test_install.py installs so)
#
# It never overwrites a config. Running it again updates the tool in place.
set -eu

root=""
if [ "${1:-}" = "--root" ] && [ -n "${2:-}" ]; then
    root=$(mkdir -p "$2" && cd "$2" && pwd)
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--root DIR]" >&2
    exit 2
fi
src=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
opt=$root/opt/ec2-backup
etc=$root/etc/ec2-backup
logs=$root/var/log/ec2-backup
state=$root/var/lib/ec2-backup

say() { echo "install: $*"; }

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    { echo "install: $python is older than Python 3.10, which the tool needs" >&2; exit 1; }
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install: run it as root (sudo), or with --root DIR for a scratch root" >&2
    exit 1
fi

if [ -z "$root" ] && ! id ec2backup >/dev/null 2>&1; then
    say "user ec2backup (system user, home $state, no login shell)"
    useradd --system --home-dir /var/lib/ec2-backup --shell /usr/sbin/nologin ec2backup
fi

say "directories $opt $etc $logs $state"
mkdir -p "$opt" "$etc" "$logs" "$state"

say "the tool in $opt"
rm -rf "$opt/ec2ami"
cp -R "$src/ec2ami" "$src/ec2_to_ami.py" "$src/ami_to_ec2.py" "$src/requirements.txt" \
    "$src/crontab.example" "$opt/"
cp -R "$src/docs/systemd" "$opt/"
find "$opt/ec2ami" -name __pycache__ -prune -exec rm -rf {} +
[ -e "$opt/ami_to_ec2_config.py" ] || cp "$src/ami_to_ec2_config.py" "$opt/"

say "a venv with the run-time requirements only (pip: a minute, quiet)"
"$python" -m venv "$opt/.venv"
"$opt/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$opt/requirements.txt"

for pool in daily weekly; do
    config=$etc/$pool.py
    if [ -e "$config" ]; then
        say "$config is there already: kept"
        continue
    fi
    keep=7
    [ "$pool" = weekly ] && keep=4
    say "$config (SCHEDULE \"$pool\", KEEP $keep, LOG_FILE in /var/log/ec2-backup): set REGION and the servers"
    sed -e "s|^SCHEDULE = .*|SCHEDULE = \"$pool\"|" \
        -e "s|^KEEP = .*|KEEP = $keep|" \
        -e "s|^LOG_FILE = None|LOG_FILE = \"/var/log/ec2-backup/$pool.log\"|" \
        "$src/ec2_to_ami_config.py" > "$config"
done

if [ -z "$root" ]; then
    chown -R root:ec2backup "$etc" && chmod 750 "$etc" && chmod 640 "$etc"/*.py
    chown ec2backup:ec2backup "$logs" "$state"
fi

"$opt/.venv/bin/python" "$opt/ec2_to_ami.py" --version >/dev/null
cat <<NEXT
install: done. Next (README, "Install on an admin host", steps 3 to 7):
  1. edit $etc/daily.py (and weekly.py): REGION, SERVERS or SELECT_TAGS
  2. the IAM policy: $opt/.venv/bin/python $opt/ec2_to_ami.py --config $etc/daily.py --print-iam-policy
  3. a dry run as the job's user: sudo -u ec2backup $opt/.venv/bin/python $opt/ec2_to_ami.py --config $etc/daily.py --dry-run
  4. schedule it: the units in $opt/systemd, or crontab.example's lines
  5. watch it: --check -q hourly; --last-run says how the last run went
NEXT
