# Every Python started with this folder on PYTHONPATH (tests/loopback_guard.py says why).
import os
import sys

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import loopback_guard  # noqa: E402

loopback_guard.install()
