"""Plain mitmdump with wiretrail's hook dispatch (addons/hook_dispatch.py) and nothing else.

`scripts/bench.py --plain-hook-cache` runs its plain path with this script, so that the ratios
show the gateway's own cost without the dispatch saving the gateway process also has.
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons import hook_dispatch  # noqa: E402

hook_dispatch.install()
addons: list = []
