"""PostgreSQL sessions through the gateway: the wire protocol (protocol.py), the gateway's login
into the database (auth.py, upstream.py), the front end that answers clients (frontend.py), the
`pg.*` records (records.py, values.py), and reading them back (transcript.py, replay.py).
No mitmproxy here: addons/postgres.py starts the front end inside the gateway."""
