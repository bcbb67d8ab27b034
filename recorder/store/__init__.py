"""The store: sessions, their files, the ledger (issue 16 moves the flat store modules here)."""
