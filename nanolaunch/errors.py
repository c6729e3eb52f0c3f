"""The one exception type the CLI turns into a one-line error (exit 2)."""


class NanolaunchError(Exception):
    """A refusal or failure the user can act on; str() is one line that says what to do."""

    exit_code = 2


class NotLaunched(NanolaunchError):
    """SkyPilot got no machine (no cloud enabled, no capacity, no API server): nothing ran, nothing was billed."""
