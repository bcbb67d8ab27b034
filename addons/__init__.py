"""mitmproxy glue for wiretrail: one thin module per addon. gateway.py builds the chain."""
