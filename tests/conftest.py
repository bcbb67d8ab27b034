"""Shared fixtures. The end-to-end ones start real processes and servers:

- `test_ca` (session): a throwaway CA and the fake upstream's certificate (tests/support/tls.py)
- `upstream`: the fake LLM upstream on 127.0.0.1, real TLS (tests/support/upstream.py)
- `start_gateway(config=None, extra_toml="", script=GATEWAY_SCRIPT, upstream_url=None)`:
  starts a mitmdump process running addons/gateway.py (script=None: plain mitmdump),
  regular mode and reverse mode to the fake upstream (or `upstream_url`); returns a
  started tests.support.gateway.Gateway (tests/support/gateway.py)
- `gateway`: `start_gateway()` with the default test config
- `module_upstream`, `start_module_gateway` (module scope): the same, shared by the tests of
  one module, for a fixture that records a store once and lets read-only tests share it.
  A test that changes such a store works on its own copy (shutil.copytree into tmp_path).

A failing test shows the log of every gateway it (or its module's shared fixtures) started.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # `tests.support` imports from a checkout

from tests.support.gateway import GATEWAY_SCRIPT, Gateway  # noqa: E402
from tests.support.tls import make_test_ca  # noqa: E402
from tests.support.upstream import FakeUpstream  # noqa: E402

_GATEWAYS_ATTR = "_wiretrail_gateways"


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory):
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture
def upstream(test_ca):
    up = FakeUpstream(test_ca, sse_events=5, sse_delay=0.15).start()
    yield up
    up.stop()


def _gateway_starter(started: list[Gateway], workdir: Path, upstream: FakeUpstream, test_ca):
    def start(
        config: dict | None = None,
        extra_toml: str = "",
        script: Path | None = GATEWAY_SCRIPT,
        upstream_url: str | None = None,
        **kw,
    ) -> Gateway:
        gw = Gateway(
            workdir / f"gateway{len(started)}",
            upstream_url or upstream.base_url,
            test_ca.cert_path,
            config=config,
            extra_toml=extra_toml,
            script=script,
            **kw,
        )
        gw.upstream = upstream if upstream_url is None else None  # for tests.support.checks.finish
        started.append(gw)
        return gw.start()

    return start


def _stop_all(started: list[Gateway]) -> None:
    for gw in started:
        if gw.alive():
            try:
                gw.stop()
            except AssertionError:
                pass  # killed; the log is in the report


@pytest.fixture
def start_gateway(request, tmp_path, upstream, test_ca):
    started: list[Gateway] = []
    setattr(request.node, _GATEWAYS_ATTR, started)
    yield _gateway_starter(started, tmp_path, upstream, test_ca)
    _stop_all(started)


@pytest.fixture(scope="module")
def module_upstream(test_ca):
    up = FakeUpstream(test_ca, sse_events=5, sse_delay=0.15).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def start_module_gateway(request, tmp_path_factory, module_upstream, test_ca):
    """`start_gateway` for module-scoped fixtures: its gateways run behind `module_upstream`."""
    started: list[Gateway] = []
    setattr(request.node, _GATEWAYS_ATTR, started)  # the module's node: shown by its failing tests
    yield _gateway_starter(started, tmp_path_factory.mktemp("module-gateways"), module_upstream, test_ca)
    _stop_all(started)


@pytest.fixture
def gateway(start_gateway):
    return start_gateway()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        module = item.getparent(pytest.Module)
        shared = getattr(module, _GATEWAYS_ATTR, ()) if module is not None else ()
        for gw in [*shared, *getattr(item, _GATEWAYS_ATTR, ())]:
            report.sections.append((f"mitmdump log ({gw.log_path})", gw.log_text()[-20000:]))
