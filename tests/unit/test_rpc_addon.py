"""addons/rpc.py at hook level: only Connect/gRPC traffic the recorder can read goes through."""

import pytest
from mitmproxy.test import taddons, tflow, tutils

from addons.config import WiretrailConfig
from addons.refusal import REFUSAL
from addons.rpc import RpcStreams


def rpc_addon(tmp_path, tctx, masking: str = ""):
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(f'[storage]\ndir = "store"\n[identity]\nmode = "none"\n[masking]\n{masking}\n')
    config = WiretrailConfig()
    addon = RpcStreams(config)
    tctx.master.addons.add(config, addon)
    tctx.configure(config, wiretrail_config=str(cfg_path))
    return addon


def connect_flow(**headers):
    flow = tflow.tflow()
    flow.request.headers["content-type"] = "application/connect+proto"
    for k, v in headers.items():
        flow.request.headers[k.replace("_", "-")] = v
    return flow


def test_reply_encodings_are_narrowed_to_those_the_recorder_reads(tmp_path):
    with taddons.context() as tctx:
        addon = rpc_addon(tmp_path, tctx)
        flow = connect_flow(connect_content_encoding="gzip", connect_accept_encoding="snappy, gzip,br ,lz4")
        addon.requestheaders(flow)
        assert flow.response is None and flow.request.headers["connect-accept-encoding"] == "gzip,br"
        only_unknown = connect_flow(connect_accept_encoding="snappy")
        addon.requestheaders(only_unknown)
        assert "connect-accept-encoding" not in only_unknown.request.headers  # the server answers uncompressed
        grpc = tflow.tflow()
        grpc.request.headers.update({"content-type": "application/grpc", "grpc-accept-encoding": "identity,snappy"})
        addon.requestheaders(grpc)
        assert grpc.request.headers["grpc-accept-encoding"] == "identity"


@pytest.mark.parametrize("masking", ["mask_requests = true", "mask_responses = true"])
def test_masking_what_is_forwarded_refuses_rpc_rather_than_break_it(tmp_path, masking):
    with taddons.context() as tctx:
        addon = rpc_addon(tmp_path, tctx, masking)
        flow = connect_flow()
        addon.requestheaders(flow)
        assert flow.response.status_code == 415 and flow.metadata[REFUSAL]["reason"] == "cannot_mask"
        plain = tflow.tflow()
        plain.request.headers["content-type"] = "application/json"
        addon.requestheaders(plain)
        assert plain.response is None  # only RPC bodies


def test_a_request_or_reply_in_an_unknown_message_encoding_does_not_pass(tmp_path):
    with taddons.context() as tctx:
        addon = rpc_addon(tmp_path, tctx)
        flow = connect_flow(connect_content_encoding="snappy")
        addon.requestheaders(flow)
        assert flow.response.status_code == 415 and flow.metadata[REFUSAL]["reason"] == "cannot_record"
        reply = tflow.tflow(resp=tutils.tresp(content=b""))
        reply.response.headers.update({"content-type": "application/grpc", "grpc-encoding": "snappy"})
        addon.responseheaders(reply)
        assert reply.error is not None  # killed before any of it is forwarded
        ok = tflow.tflow(resp=tutils.tresp(content=b""))
        ok.response.headers.update({"content-type": "application/grpc", "grpc-encoding": "gzip"})
        addon.responseheaders(ok)
        assert ok.error is None
