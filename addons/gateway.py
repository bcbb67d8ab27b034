"""The wiretrail gateway: `mitmdump -s addons/gateway.py --set wiretrail_config=gateway.toml`.

`addons` lists the chain in order: config first (every other addon reads it), then
identity, credentials and capture. Identity and credentials are decided in
`requestheaders`, before capture records the request.
"""
import os
import sys

# mitmdump loads this file as a script; make the repository importable when wiretrail
# is run from a checkout without `pip install`.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons.capture import Capture  # noqa: E402
from addons.config import WiretrailConfig  # noqa: E402
from addons.credentials import Credentials  # noqa: E402
from addons.identity import Identity  # noqa: E402

_config = WiretrailConfig()

addons = [
    _config,
    Identity(),
    Credentials(),
    Capture(_config),
]
