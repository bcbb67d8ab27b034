"""MCP (Model Context Protocol), first class (docs/clients.md, docs/forensics.md):

- wire.py: the JSON-RPC messages one recorded exchange (or stdio line) carried, with when and on
  which stream they crossed;
- session.py: one MCP session across the flows that carried it, paired and ordered into a
  tool-call log;
- render.py: that log as text (`wiretrail show`) and JSON (`show --json`);
- replay.py: a recorded MCP session re-run against another server, answers compared by id;
- stdio.py: the relay of `wiretrail mcp-stdio`, which records a local server's stdio session.
"""
