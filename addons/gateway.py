"""The wiretrail gateway: `mitmdump -s addons/gateway.py --set wiretrail_config=gateway.toml`.

`parts` lists the addons in order; mitmproxy sees them as one addon, `AddonChain`
(addons/chain.py), which dispatches each event once and fails a flow closed when a part
raises. The start-up gate comes first: flows that arrive before wiretrail is running wait
there. Config is next: every other part reads it.
Identity, policy and credentials decide in `requestheaders` (and `http_connect`),
before capture records the request and before anything goes upstream.
"""
import os
import sys

# mitmdump loads this file as a script; make the repository importable when wiretrail
# is run from a checkout without `pip install`.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from addons.capture import Capture  # noqa: E402
from addons.chain import AddonChain  # noqa: E402
from addons.config import WiretrailConfig  # noqa: E402
from addons.credentials import Credentials  # noqa: E402
from addons.heap import FreezeStartupHeap  # noqa: E402
from addons import hook_dispatch  # noqa: E402
from addons.identity import Identity  # noqa: E402
from addons.masking import Masking  # noqa: E402
from addons.object_storage import ObjectStorage  # noqa: E402
from addons.policy import Policy  # noqa: E402
from addons.postgres import Postgres  # noqa: E402
from addons.raw_tcp import RawTcp  # noqa: E402
from addons.rpc import RpcStreams  # noqa: E402
from addons.startup import StartupGate, StoreOpened  # noqa: E402
from addons.timeouts import Timeouts  # noqa: E402
from addons.trailers import Trailers  # noqa: E402
from addons.websocket import WebSocketCapture  # noqa: E402

hook_dispatch.install()  # mitmproxy's addon walk once per hook, not per event (hook_dispatch.py)
_gate = StartupGate()  # mitmproxy listens before `running`: flows wait for it
_config = WiretrailConfig()
_identity = Identity(_config)
_credentials = Credentials(_config, _identity)
_masking = Masking(_config, known_secrets=_credentials.known_secrets)
_credentials.on_reload = _masking.refresh  # a rotated credential is masked from then on
_capture = Capture(_config, _masking)
_policy = Policy(_config, _identity, on_tunnel=_capture.record_tunnel)

parts = [
    _gate,
    _config,
    _identity,
    _policy,
    _credentials,
    RpcStreams(_config),  # before masking: an RPC it cannot record is refused first
    _masking,
    Trailers(_config, _identity, _masking),  # request trailers stripped of credentials before capture records them
    RawTcp(_config, _identity, _policy, _capture, _masking),  # before capture: a refused 101 is killed first
    WebSocketCapture(_config, _capture, _masking),  # before capture: its `done` closes open WebSockets first
    _capture,
    StoreOpened(_capture),  # a ledger the writer cannot open stops the gateway at start-up
    Timeouts(_config, _identity, _capture),  # header, idle and upstream-response timeouts
    Postgres(_config, _identity, _masking, _credentials, _capture),  # database front ends; after capture (its sessions)
    ObjectStorage(_config),  # after capture: its `done` uploads what the writer sealed at shutdown
    FreezeStartupHeap(),  # after every part has built what it keeps
    _gate.opener(),  # last: opens the gate once every part above has run `running`
]

addons = [AddonChain(parts)]
