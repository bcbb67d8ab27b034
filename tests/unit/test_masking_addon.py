"""The masking addon's options at hook level: what is forwarded is masked, or not forwarded."""
import asyncio

from mitmproxy.test import taddons, tflow, tutils

from addons.config import WiretrailConfig
from addons.masking import Masking
from addons.flow_state import REFUSAL

TOKEN = "ghp_" + "x7Kq2mZpR4tVw9yB3nLc8dFh6jGs1aEoUiT5"


def masking_addon(tmp_path, tctx, **options):
    cfg_path = tmp_path / "gateway.toml"
    opts = "\n".join(f"{k} = {'true' if v else 'false'}" for k, v in options.items())
    cfg_path.write_text(f'[storage]\ndir = "store"\n[identity]\nmode = "none"\n[masking]\n{opts}\n')
    config = WiretrailConfig()
    masking = Masking(config)
    tctx.master.addons.add(config, masking)
    tctx.configure(config, wiretrail_config=str(cfg_path))
    masking.running()
    return masking


def run(coro):
    return asyncio.run(coro)


def test_mask_requests_masks_a_buffered_body_and_refuses_one_it_cannot_decode(tmp_path):
    async def main():
        with taddons.context() as tctx:
            masking = masking_addon(tmp_path, tctx, mask_requests=True)
            flow = tflow.tflow()
            flow.request.headers["content-type"] = "application/json"
            flow.request.content = f'{{"text": "token {TOKEN}"}}'.encode()
            masking.request(flow)
            assert TOKEN.encode() not in flow.request.content and b"[MASKED:github-pat" in flow.request.content
            odd = tflow.tflow()
            odd.request.headers["content-encoding"] = "x-unknown"
            odd.request.raw_content = f"token {TOKEN}".encode()
            masking.request(odd)
            assert odd.response.status_code == 415 and odd.metadata[REFUSAL]["reason"] == "cannot_mask"

    run(main())


def test_mask_responses_closes_a_reply_it_cannot_decode(tmp_path):
    async def main():
        with taddons.context() as tctx:
            masking = masking_addon(tmp_path, tctx, mask_responses=True)
            flow = tflow.tflow()
            masking.requestheaders(flow)
            assert flow.request.headers["accept-encoding"] == "identity"
            flow.response = tutils.tresp(content=b"")
            flow.response.headers["content-encoding"] = "x-unknown"
            flow.response.raw_content = f"token {TOKEN}".encode()
            masking.response(flow)
            assert flow.error is not None  # killed: nothing unmasked goes to the client
            plain = tflow.tflow(resp=tutils.tresp(content=f'{{"t": "{TOKEN}"}}'.encode()))
            plain.response.headers["content-type"] = "application/json"
            masking.response(plain)
            assert TOKEN.encode() not in plain.response.content

    run(main())


def test_a_held_back_piece_is_never_an_empty_chunk(tmp_path):
    async def main():
        with taddons.context() as tctx:
            masking = masking_addon(tmp_path, tctx, mask_responses=True)
            flow = tflow.tflow(resp=tutils.tresp(content=b""))
            flow.response.headers["content-type"] = "text/plain"
            del flow.response.headers["content-length"]
            masking.responseheaders(flow)
            assert flow.response.headers["transfer-encoding"] == "chunked"
            out = [flow.response.stream(piece) for piece in (b"here: gh", b"p_", TOKEN[4:].encode(), b" ok")]
            out.append(flow.response.stream(b""))
            assert all(isinstance(o, list) for o in out) and [] in out  # held back: no chunk, not b""
            sent = b"".join(b"".join(o) for o in out)
            assert sent.startswith(b"here: [MASKED:github-pat") and sent.endswith(b" ok") and TOKEN.encode() not in sent

    run(main())
