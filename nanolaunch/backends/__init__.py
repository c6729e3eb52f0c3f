"""Where a run executes: this machine (local) or SkyPilot (skypilot)."""
