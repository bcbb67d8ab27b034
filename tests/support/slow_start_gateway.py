"""The gateway with a start-up that takes SLOW_START_SECONDS: a mitmdump script for tests.

mitmproxy listens before the script's addons run `running`. This widens that window so a
test can put flows in it on purpose rather than by luck.
"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from addons import gateway  # noqa: E402
from addons.chain import AddonChain  # noqa: E402

SECONDS = float(os.environ.get("SLOW_START_SECONDS", "1.5"))


class SlowStart:
    async def running(self):
        await asyncio.sleep(SECONDS)


# Right after the start-up gate: config, identity and capture all start late.
addons = [AddonChain([gateway.parts[0], SlowStart(), *gateway.parts[1:]])]
