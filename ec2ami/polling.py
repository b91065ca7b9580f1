"""How often a run asks EC2 while it waits: one describe for everything waited on, backing off.

Callers read these through the module (polling.POLL_FIRST_SECONDS), so a test can shorten them."""

from __future__ import annotations

POLL_FIRST_SECONDS, POLL_MAX_SECONDS, POLL_FACTOR = 1.0, 15.0, 1.5
# In a long (paced) run the first poll comes this soon, so pruning starts while EC2's
# delete bucket still refills; later polls come every POLL_MAX_SECONDS, so they stay few.
POLL_WHILE_CREATING_FIRST_SECONDS = 10.0
# A new image never seen, and missing from this many polls in a row over at least this
# long, is gone, not late: EC2 is eventually consistent, and a copy's tags come with it
# (CopyImageTags), so the first polls may miss it. An image seen once and then missing
# is gone at once.
MISSED_POLLS_MAX, MISSED_GRACE_SECONDS = 3, 60.0
