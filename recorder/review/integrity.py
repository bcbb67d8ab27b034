"""A session file's verdict (recorder.forensics.verify) as the review page shows it: a badge and a sentence."""
from __future__ import annotations

from dataclasses import dataclass

from recorder.store.live import unsealed_state
from recorder.forensics.verify import FileVerdict

# Badge states, in the order the list's integrity filter offers them.
STATES = {
    "verified": "sealed · verified",
    "sealed": "sealed · signatures not checked",
    "closed": "closed · unsigned",
    "open": "open",
    "crashed": "unsealed after a crash",
    "unsealed": "unsealed",
    "damaged": "damaged · storage failed",  # `wiretrail verify` exit 3: the gateway's own failure, not tampering
    "tampered": "tampered",
}


@dataclass(frozen=True)
class Integrity:
    state: str  # a key of STATES
    detail: str  # one sentence for the session header
    problems: tuple[str, ...] = ()
    key: str | None = None  # the signing key id the file names
    checkpoints: int = 0
    signatures: int = 0  # signatures verified with a configured key

    @property
    def label(self) -> str:
        return STATES[self.state]

    @property
    def live(self) -> bool:
        return self.state in ("open", "unsealed")


def _problem_text(p) -> str:
    seq = getattr(p, "seq", None)
    return p.message if seq is None else f"record {seq}: {p.message}"


def integrity_of(v: FileVerdict, keys_checked: bool) -> Integrity:
    """The badge of one verified file. `keys_checked`: verify ran with a public key."""
    r = v.read
    opened = r.open_record or {}
    key = opened.get("key") if isinstance(opened.get("key"), str) else None
    checkpoints = sum(1 for rec in r.records if rec.get("t") == "checkpoint")
    common = {"key": key, "checkpoints": checkpoints, "signatures": v.signatures}
    if not v.ok:
        problems = tuple(_problem_text(p) for p in v.problems)
        first = v.problems[0]
        seq = getattr(first, "seq", None)
        head = f"chain broken at record {seq}: " if seq is not None else "damaged or tampered with: "
        return Integrity("tampered", head + first.message, problems, **common)
    notes = "".join(f"; {n}" for n in v.notes)
    signed = (f"signed by key {key}, {checkpoints} checkpoint(s)" if key else "no signing key")
    if v.damage:
        # The ledger (or the file) says the gateway could not write part of it: not tampering,
        # and not whole either. What did reach the disk checked intact.
        checked = "; signatures verified" if keys_checked and key else ""
        return Integrity("damaged", f"damaged, not tampered with: the gateway recorded that it could not write all "
                                    f"of this session (below); the {len(r.records)} records that reached the disk "
                                    f"are intact ({signed}{checked}){notes}",
                         tuple(v.damage), **common)
    if r.state == "sealed":
        if keys_checked:
            return Integrity("verified", f"{signed} and the seal verified with the configured public key{notes}",
                             **common)
        return Integrity("sealed", f"{signed}, sealed; signatures NOT checked: no public key is configured "
                                   "(review.verify_keys){notes}", **common)
    if r.state == "closed":
        return Integrity("closed", f"closed cleanly without a signing key: nothing proves who wrote it{notes}",
                         **common)
    # unsealed: still being written, or the gateway stopped without closing it
    upto = f"; signatures verified up to record {v.signed_upto}" if keys_checked and v.signed_upto is not None else ""
    if v.ledger_state in ("recovered", "failed"):
        return Integrity("crashed", f"unsealed after a crash ({v.ledger_state} at the gateway's next start); "
                                    f"{len(r.records)} records readable{upto}{notes}", **common)
    if v.ledger_state == "open":
        word = unsealed_state(v.ledger_state, v.store)  # the words verify, ls and show use
        if word.startswith("open"):
            return Integrity("open", f"{word}: the gateway is still writing it; "
                                     f"{len(r.records)} records so far{upto}{notes}", **common)
        return Integrity("unsealed", f"{word}: the gateway stopped without closing it; "
                                     f"{len(r.records)} records{upto}{notes}", **common)
    return Integrity("unsealed", f"not closed: still being written, or the gateway stopped (no ledger says "
                                 f"which); {len(r.records)} records{upto}{notes}", **common)
