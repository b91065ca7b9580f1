"""Exit codes, which are part of the interface, and the error every config check raises."""

from __future__ import annotations

# 0 done; 1 an AWS failure or a failed server (the others were still done);
# 2 usage or config error (nothing done, no AWS call); 3 another run holds the lock.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3


class ConfigError(Exception):
    """A config or usage problem; the message names the setting."""
