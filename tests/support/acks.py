"""An ack callback for the record writers, and what a test waits on."""
from __future__ import annotations

import threading


def wait_ack():
    """(ack, done, box): `done` is set once the writer called `ack`; box["err"] holds its error."""
    done = threading.Event()
    box = {}

    def ack(err):
        box["err"] = err
        done.set()

    return ack, done, box
