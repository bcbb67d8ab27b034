"""The session store: writing, ledgers, signing, recovery, retention, object storage."""
