"""wiretrail's recording library. It never imports mitmproxy, so the CLI,
the replay tool and the tests can use it on their own."""

__version__ = "0.1.0"
