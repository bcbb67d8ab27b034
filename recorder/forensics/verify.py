"""Verification of a store: session files, their signatures, and the storage-wide ledger.

Three layers, each catching what the one before cannot (docs/integrity.md):
1. the hash chain of each file (recorder.forensics.reader): an edited, removed, inserted or moved
   line breaks it;
2. the checkpoint and seal signatures (with a trusted public key, `--key`): a chain
   rewritten from some point on no longer matches what the key signed;
3. the ledger (`<storage.dir>/ledger.jsonl`): a deleted, swapped, planted or cut file
   no longer matches the ledger's entry for its session;
4. anchors (recorder/store/anchors.py), ledger heads kept outside the store: a ledger cut back
   or replaced no longer holds what was anchored.

Damage the gateway suffered and signed in its ledger (a session whose storage failed) is
reported as damage, not tampering: exit code DAMAGED, not TAMPERED.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from recorder.store import format_v1
from recorder.store.anchors import Anchor
from recorder.store.live import unsealed_state
from recorder.store.ledger import LEDGER_NAME, LedgerRead, SessionEntry, ledger_id, read_ledger
from recorder.forensics.reader import SessionRead, iter_session_files, read_session
from recorder.store.recovery import SIGNING_TYPES
from recorder.store.signing import Verifier
from recorder.store import fleet

MAX_PROBLEMS_SHOWN = 20

# Exit codes of `wiretrail verify` (DESIGN.md fixes 0, 1 and 2; DAMAGED is an addition).
INTACT, TAMPERED, USAGE, DAMAGED = 0, 1, 2, 3

CHAINS_ONLY_NOTE = (
    "only the hash chains were checked: signatures are not checked (without --key nothing proves "
    "who wrote these files)"
)


@dataclass
class Issue:
    seq: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.seq is None else f"seq {self.seq}: {self.message}"


@dataclass
class FileVerdict:
    """One session file: what the reader found, plus signature and ledger checks."""

    path: Path
    read: SessionRead
    issues: list[Issue] = field(default_factory=list)  # signature and ledger problems
    notes: list[str] = field(default_factory=list)  # facts worth saying (unsigned tail, ledger state)
    ledger_state: str | None = None  # the ledger's word on this session: open/closed/recovered/...
    store: Path | None = None  # the store whose ledger holds it (its gateway.live says if a gateway runs)
    signed_upto: int | None = None  # seq of the last checkpoint or seal whose signature was checked
    signatures: int = 0
    damage: list[str] = field(default_factory=list)  # what the ledger says the gateway suffered

    @property
    def problems(self) -> list:
        return list(self.read.problems) + self.issues

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def state(self) -> str:
        if self.issues:
            return "broken"
        return "damaged" if self.ok and self.damage else self.read.state

    def describe(self) -> list[str]:
        """One headline, then one line per problem (broken files)."""
        r = self.read
        n = len(r.records)
        last = r.last_seq
        extra = "".join(f"; {x}" for x in self.notes)
        if self.ok and self.damage:
            return [f"DAMAGED {self.path}: {'; '.join(self.damage)}: {n} records readable, last seq {last}{extra}"]
        if self.ok and r.state == "sealed":
            return [f"OK      {self.path}: sealed, {n} records, last seq {last}{extra}"]
        if self.ok and r.state == "closed":
            return [f"OK      {self.path}: closed cleanly, {n} records, last seq {last}{extra}"]
        if self.ok:  # unsealed
            why = []
            if not r.frame_ended:
                why.append("zstd frame not ended")
            if not r.records or r.records[-1].get("t") != "session.close":
                why.append("no session.close")
            if r.truncated_tail:
                why.append("a partial last write was dropped")
            crash = unsealed_state(self.ledger_state, self.store)
            return [
                f"OK      {self.path}: {crash}: {n} records readable, last seq {last}"
                + (f" ({'; '.join(why)})" if why else "") + extra
            ]
        problems = self.problems
        out = [f"FAILED  {self.path}: {len(problems)} problem(s), {n} records read"]
        for p in problems[:MAX_PROBLEMS_SHOWN]:
            out.append(f"        {self.path}: {p}")
        if len(problems) > MAX_PROBLEMS_SHOWN:
            out.append(f"        ... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
        return out


# -- signatures -----------------------------------------------------------------------------


def check_signatures(v: FileVerdict, verifiers: list[Verifier] | None) -> None:
    """Checkpoints and seals of one file. Without verifiers only says what is there."""
    r = v.read
    sid = r.session_id
    opened = r.open_record or {}
    key = opened.get("key")
    by_id = {x.key_id: x for x in verifiers or []}
    upto = r.intact
    last_sig = None
    for rec in r.records[:upto]:
        if rec.get("t") not in SIGNING_TYPES:
            continue
        seq = rec.get("seq")
        if not verifiers:
            last_sig = seq
            continue
        kid = rec.get("key")
        ver = by_id.get(kid)
        if ver is None:
            v.issues.append(Issue(seq, f"{rec['t']} signed by key {kid}, not by the --key given"))
            continue
        if kid != key:
            v.issues.append(Issue(seq, f"{rec['t']} key {kid} differs from session.open's key {key}"))
        data = format_v1.signed_bytes(sid or "", seq, rec.get("prev", ""))
        if not ver.verify(data, rec.get("sig", "")):
            v.issues.append(Issue(seq, f"{rec['t']} signature does not verify: the records before it were "
                                       "altered, or the chain was rewritten"))
            continue
        last_sig = seq
        v.signatures += 1
    v.signed_upto = last_sig
    last_seq = r.last_seq
    if verifiers and v.signatures:
        v.notes.append(f"{v.signatures} signature(s) verified")
    if verifiers and r.records:
        if key is None:
            v.issues.append(Issue(0, "session.open names no signing key: nothing in this file is signed "
                                     "(written without storage.signing_key, or forged)"))
            return
        if key not in by_id:
            v.issues.append(Issue(0, f"the file says it was signed with key {key}, not the --key given"))
            return
        if r.records and r.records[-1].get("t") == "session.close" and r.intact == len(r.lines):
            v.issues.append(Issue(last_seq, "session.close without the seal that must follow it: the seal was "
                                            "removed, or the session was cut and forged"))
    if key is not None and r.state == "unsealed" and r.records:
        if last_sig is None:
            v.notes.append("no signed checkpoint yet" + (" (signatures not checked)" if not verifiers else ""))
        else:
            after = (last_seq or 0) - last_sig
            v.notes.append(f"last signed checkpoint seq {last_sig}"
                           + (f", {after} record(s) after it not covered by a signature" if after else "")
                           + ("" if verifiers else " (signatures not checked)"))


# -- the ledger -----------------------------------------------------------------------------


def find_ledger(path: Path) -> Path | None:
    """The ledger of the store `path` lies in: the dir itself or up to 4 levels above."""
    p = path if path.is_dir() else path.parent
    for candidate in [p, *list(p.parents)[:4]]:
        if (candidate / LEDGER_NAME).is_file():
            return candidate / LEDGER_NAME
    return None


def unsealed_word(path: str | Path, session_id: str | None) -> str:
    """What `show` and `ls` call an unsealed session, in the words `verify` uses: "open" while
    the gateway that writes it runs, else why it is not closed (recorder/store/live.py)."""
    ledger = find_ledger(Path(path))
    entry = read_ledger(ledger).state.sessions.get(session_id) if ledger is not None and session_id else None
    return unsealed_state(entry.state if entry is not None else None, ledger.parent if ledger is not None else None)


def when(ts) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if isinstance(ts, (int, float)) else "?"


def storage_failure(end: dict) -> str:
    """What a session.failed entry says happened, in words."""
    error = f": {end['error']}" if end.get("error") else ""
    return f"storage failed ({end.get('cause')}) at {when(end.get('failed_at', end.get('ts')))}{error}"


def _excuse_empty(v: FileVerdict, why: str) -> bool:
    """A 0-byte file the ledger explains is not damage done by someone: drop the reader's
    "empty" problem and say why instead. False if the file is not simply empty."""
    r = v.read
    if [p.kind for p in r.problems] != ["empty"]:
        return False
    r.problems.clear()
    v.notes.append(why)
    return True


def check_against_ledger(v: FileVerdict, entry: SessionEntry | None, ledger: Path) -> None:
    r = v.read
    if entry is None:
        v.issues.append(Issue(None, f"not in the ledger {ledger}: the gateway did not write this file here "
                                    "(planted, copied in, or its ledger entries were cut off)"))
        return
    v.ledger_state = entry.state
    v.store = Path(ledger).parent
    if entry.state == "deleted":
        v.notes.append(f"the ledger says retention deleted it (ledger seq {entry.deleted_seq}), yet it is still here")
    if r.session_id is not None and r.session_id != entry.session:
        v.issues.append(Issue(0, f"holds session {r.session_id}, but the ledger put session {entry.session} "
                                 "at this path: the file was swapped"))
        return
    if entry.first and r.lines and format_v1.line_hash(r.lines[0]) != entry.first:
        v.issues.append(Issue(0, "session.open differs from the one the ledger recorded at open "
                                 f"(ledger seq {entry.open_seq}): the file was replaced or rewritten"))
    end = entry.end
    if end is None:
        # The file is made right after its session.open entry: a crash in between leaves it empty.
        _excuse_empty(v, "no record reached the disk (the gateway stopped right after making the file)")
        v.notes.append("open in the ledger (the gateway is running, or stopped without closing it and "
                       "has not restarted since)")
        return
    t = end.get("t")
    if end.get("file") == "missing":
        v.issues.append(Issue(None, f"the ledger says the file was already missing at recovery "
                                    f"(ledger seq {entry.end_seq})"))
        return
    if not end.get("records"):
        if t == "session.recovered":
            _excuse_empty(v, f"no record had reached the disk when the gateway crashed (ledger seq {entry.end_seq})")
        elif t == "session.failed":
            _excuse_empty(v, "the gateway was to remove this file once its ledger entry was written")
            if not r.lines and not r.problems:
                v.damage.append(f"{storage_failure(end)}; no record of this session reached the disk "
                                f"(ledger seq {entry.end_seq})")
    want, head = end.get("records") or 0, end.get("head")
    have = r.intact
    what = {"session.close": "closed", "session.recovered": "recovered after a crash",
            "session.failed": "ended by a storage error"}.get(t, t)
    where = f"ledger seq {entry.end_seq}"
    if have < want:
        kind = "truncated sealed session" if t == "session.close" and end.get("sealed") else "truncated"
        v.issues.append(Issue(have, f"{kind}: the ledger says {what} with {want} records (last seq {want - 1}, "
                                    f"{where}); the file has {have} intact"))
        return
    if want and format_v1.line_hash(r.lines[want - 1]) != head:
        v.issues.append(Issue(want - 1, f"differs from the head the ledger recorded ({where}): records up to "
                                        "here were rewritten"))
    if len(r.lines) > want:
        v.issues.append(Issue(want, f"{len(r.lines) - want} record(s) after the head the ledger recorded when "
                                    f"it was {what} ({where}): appended later"))
    if t == "session.recovered":
        cp = end.get("checkpoint")
        v.notes.append(f"recovered at the next start ({where}), last signed checkpoint "
                       + (f"seq {cp}" if cp is not None else "none"))
    if t == "session.failed" and want and not v.issues:
        v.damage.append(f"{storage_failure(end)}; the gateway wrote {want} record(s) of this session and "
                        f"could write no more ({where})")


@dataclass
class LedgerVerdict:
    path: Path
    read: LedgerRead
    issues: list[Issue] = field(default_factory=list)
    missing: list[tuple[SessionEntry, str]] = field(default_factory=list)  # (entry, what)
    deleted: int = 0
    damage: list[tuple[SessionEntry, str]] = field(default_factory=list)  # failed sessions without a file
    pending: int = 0  # a bucket's copy: sessions still open when the ledger was uploaded (not uploaded yet)
    anchors: str | None = None  # what the anchors checked say about it

    def __post_init__(self):
        self.by_path = {e.path: e for e in self.read.state.sessions.values()}
        self.id = ledger_id(self.read.lines[0]) if self.read.lines else None
        for e in self.read.entries:
            lost = e.get("ledger_missing") if e.get("t") == "gateway.start" else None
            if isinstance(lost, dict):
                self.issues.append(Issue(e.get("seq"), (
                    f"when the gateway started at {when(e.get('ts'))}, there was no ledger (or an empty one) while "
                    f"the store held {lost.get('session_files')} session file(s): the ledger before this one was "
                    "deleted, moved or emptied")))

    @property
    def ok(self) -> bool:
        return not self.read.problems and not self.issues and not self.missing

    def describe(self, verified: bool) -> list[str]:
        r = self.read
        n = len(r.lines)
        sig = ("all entries signed and verified" if verified else
               "signatures not checked" if r.signed_by else "UNSIGNED (no signing key configured)")
        tail = f"; dropped a half-written last line ({r.partial_tail} bytes)" if r.partial_tail else ""
        head = f"head seq {n - 1} sha256 {r.head}" if n else "empty"
        deleted = f", {self.deleted} session(s) deleted by retention" if self.deleted else ""
        if self.pending:
            deleted += (f", {self.pending} session(s) still open when this ledger was uploaded (their files are "
                        "uploaded when they end)")
        problems = [Issue(s, m) for s, m in r.problems] + self.issues
        lines = []
        if problems:
            lines.append(f"FAILED  {self.path}: {len(problems)} problem(s), {n} entries; {head}")
            for p in problems[:MAX_PROBLEMS_SHOWN]:
                lines.append(f"        {self.path}: {'ledger ' if p.seq is not None else ''}{p}")
        else:
            lines.append(f"OK      {self.path}: {n} entries, {sig}{deleted}; {head}{tail}")
        if self.anchors:
            lines.append(self.anchors)
        for entry, what in self.missing:
            lines.append(f"FAILED  {self.path.parent / entry.path}: {what}")
        for entry, what in self.damage:
            lines.append(f"DAMAGED {self.path.parent / entry.path}: {what}")
        return lines


# -- the whole run --------------------------------------------------------------------------


@dataclass
class Report:
    files: list[FileVerdict]
    ledgers: list[LedgerVerdict]
    anchor_issues: list[str] = field(default_factory=list)
    store_issues: list[str] = field(default_factory=list)  # e.g. a signed store without its ledger

    @property
    def ok(self) -> bool:
        return (all(f.ok for f in self.files) and all(l.ok for l in self.ledgers) and not self.anchor_issues
                and not self.store_issues)

    @property
    def damaged(self) -> bool:
        return any(f.damage for f in self.files) or any(l.damage for l in self.ledgers)

    @property
    def code(self) -> int:
        """TAMPERED beats DAMAGED: damage never hides a problem."""
        return TAMPERED if not self.ok else DAMAGED if self.damaged else INTACT


def verify_file(path: str | Path, verifiers: list[Verifier] | None = None) -> FileVerdict:
    v = FileVerdict(Path(path), read_session(path))
    check_signatures(v, verifiers)
    note_gaps(v)
    return v


def verify_stray(path: Path, root: Path, verifiers: list[Verifier] | None = None) -> FileVerdict:
    """A session file under a fleet root outside every gateway's store (fleet.store_paths)."""
    v = verify_file(path, verifiers)
    v.issues.append(Issue(None, f"not in any gateway's store: {root} holds the stores of several gateways "
                                f"({fleet.GATEWAYS}/<id>/), and no ledger there names this file"))
    return v


def note_gaps(v: FileVerdict) -> None:
    """Records the gateway could not write as they were (recorder/store/record_repair.py): a gap it
    recorded itself, not tampering; said, with the seq, so that nobody takes the file as whole."""
    for rec in v.read.records:
        if rec.get("t") == "http.error" and rec.get("phase") == "record" and rec.get("lost"):
            v.damage.append(f"GAP at seq {rec.get('seq')}: the {rec['lost']} record of flow {rec.get('flow')} "
                            "could not be written (its http.error says why)")
        elif "repaired" in rec:
            v.notes.append(f"seq {rec.get('seq')}: {rec.get('t')} written repaired ({rec['repaired']})")


def collect_files(paths: list[str | Path]) -> list[Path]:
    """Every session file named by `paths` (files, or directories searched recursively).
    Raises FileNotFoundError naming the first path that does not exist."""
    files: list[Path] = []
    for p in paths:
        files.extend(iter_session_files(p))
    return files


def verify_paths(paths: list[str | Path], verifiers: list[Verifier] | None = None,
                 anchors: list[tuple[int, str]] | None = None, anchored: list[Anchor] | None = None,
                 need_ledger: bool = True, uploaded_copy: bool = False) -> Report:
    """Check every session file under `paths`; where a path lies in a store with a ledger,
    check its sessions against the ledger too (and, for a directory, that none is missing).
    `anchors` are SEQ:SHA256 heads given by hand, `anchored` those read from anchor files.
    With verifiers and `need_ledger`, files signed by one of them must have their ledger.
    `uploaded_copy`: the paths are a copy of a bucket (recorder/store/s3.py), where a session
    still open when its ledger was uploaded has no file yet; anywhere else its absence is a finding."""
    files: list[FileVerdict] = []
    ledgers: dict[Path, LedgerVerdict] = {}
    seen: set[Path] = set()
    store_issues: list[str] = []
    nearest: dict[Path, Path | None] = {}  # a file's directory -> the ledger it answers to

    def ledger_of(f: Path) -> LedgerVerdict | None:
        d = f.parent
        if d not in nearest:
            nearest[d] = find_ledger(f)
        lpath = nearest[d]
        if lpath is None:
            return None
        lv = ledgers.get(lpath)
        if lv is None:
            lv = ledgers[lpath] = LedgerVerdict(lpath, read_ledger(lpath, verifiers))
        return lv

    expanded: list[Path] = []
    for p in map(Path, paths):  # a fleet's root: each gateway's store against its own ledger
        stores, stray = fleet.store_paths(p)
        expanded.extend(stores)
        for f in stray:
            seen.add(f.resolve())
            files.append(verify_stray(f, p, verifiers))
    for p in expanded:
        # The ledger of the store p lies in, and those of the stores below it (`wiretrail
        # mcp-stdio` keeps its sessions and its ledger in one of its own): each file answers to
        # its nearest ledger.
        governing: dict[Path, set[str]] = {}
        top = find_ledger(p)
        if top is not None:
            governing[top] = set()
            ledger_of(top)
        if p.is_dir():
            for sub in sorted(p.rglob(LEDGER_NAME)):
                if sub.is_file():
                    governing.setdefault(sub, set())
                    ledger_of(sub)
        found = list(iter_session_files(p))
        signed_here: list[FileVerdict] = []
        for f in found:
            lv = ledger_of(f)
            if lv is not None:
                governing.setdefault(lv.path, set()).add(_relative(f, lv.path.parent))
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            v = verify_file(f, verifiers)
            if lv is not None:
                check_against_ledger(v, lv.by_path.get(_relative(f, lv.path.parent)), lv.path)
            elif verifiers and (v.read.open_record or {}).get("key") in {x.key_id for x in verifiers}:
                signed_here.append(v)
            files.append(v)
        if signed_here and need_ledger:
            d = p if p.is_dir() else p.parent
            store_issues.append(
                f"{p}: no ledger ({LEDGER_NAME}) in {d} or the 4 directories above it, yet {len(signed_here)} "
                f"session file(s) here are signed by key {signed_here[0].read.open_record.get('key')}: a signed store "
                "always has its ledger, so it was deleted or moved, and a deleted, swapped or planted session file "
                "cannot be detected (for files copied out of their store on purpose, add --no-ledger)")
        if p.is_dir():
            for lpath, present in governing.items():
                inside = _is_within(p, lpath.parent)
                check_missing(ledgers[lpath], present, _relative(p, lpath.parent) if inside else "", uploaded_copy)
    report = Report(files, list(ledgers.values()), store_issues=store_issues)
    if anchored is not None:
        check_anchored(report, anchored, verifiers)
    for seq, head in anchors or []:
        hits = [lv for lv in report.ledgers if seq < len(lv.read.lines)
                and format_v1.line_hash(lv.read.lines[seq]) == head]
        if not hits:
            report.anchor_issues.append(
                f"anchor seq {seq} sha256 {head}: no ledger checked has that entry: the ledger was cut "
                "back, rewritten or replaced since the anchor was taken")
    return report


def check_missing(lv: LedgerVerdict, present: set[str], scope: str = "", uploaded_copy: bool = False) -> None:
    """Ledger entries (under `scope`) whose file is not among `present` (paths relative to the
    store): lv.damage when the gateway recorded that storage failed before the file had a
    record, lv.missing otherwise; sessions retention deleted are counted in lv.deleted."""
    for entry in lv.read.state.sessions.values():
        if scope and not entry.path.startswith(scope + "/"):
            continue
        if entry.state == "deleted":
            lv.deleted += 1
            continue
        if entry.state == "failed" and entry.end.get("file") in ("removed", "none") \
                and entry.path not in present:
            # Storage failed before any record reached the disk; the writer removed the file.
            how = "the gateway removed its empty file" if entry.end.get("file") == "removed" else \
                "the gateway never made its file"
            lv.damage.append((entry, f"session {entry.session}: {storage_failure(entry.end)}; no record of it "
                                     f"reached the disk, and {how} (ledger seq {entry.end_seq})"))
            continue
        if entry.path not in present and uploaded_copy and entry.end is None:
            lv.pending += 1
            continue
        if entry.path not in present:
            lv.missing.append((entry, f"session file deleted or moved: the ledger opened session "
                                      f"{entry.session} here at ledger seq {entry.open_seq}"
                                      + (f" and recorded it {entry.state} at seq {entry.end_seq}"
                                         if entry.end_seq is not None else "")))


def check_anchored(report: Report, anchored: list[Anchor], verifiers: list[Verifier] | None) -> None:
    """Every anchor must be one of the gateway's, of a ledger checked, and that ledger must
    still hold the entry it names."""
    by_id = {lv.id: lv for lv in report.ledgers if lv.id}
    held: dict[str, list[Anchor]] = {}
    foreign: dict[str, list[Anchor]] = {}
    for a in anchored:
        wrong = a.check(verifiers) if verifiers else None
        if wrong:
            report.anchor_issues.append(f"anchor {a.where} {wrong}")
            continue
        (held if a.ledger in by_id else foreign).setdefault(a.ledger, []).append(a)
    for lid, group in foreign.items():
        newest = max(group, key=lambda a: a.seq)
        report.anchor_issues.append(
            f"{len(group)} anchor(s) of ledger {lid[:16]}… (host {newest.host}, dir {newest.dir}; the newest, "
            f"{newest.where}, names seq {newest.seq}, taken {when(newest.ts)}) match no ledger checked: that ledger "
            "was replaced or deleted, or these anchors belong to another store (give only this store's anchors)")
    for lid, group in held.items():
        lv = by_id[lid]
        lines = lv.read.lines
        gone = [a for a in group if a.seq >= len(lines) or format_v1.line_hash(lines[a.seq]) != a.head]
        if gone:
            first = min(gone, key=lambda a: a.seq)
            what = (f"it has only {len(lines)} entries" if first.seq >= len(lines)
                    else f"its entry seq {first.seq} is a different one")
            lv.issues.append(Issue(None, (
                f"cut back or rewritten after it was anchored: anchor {first.where} (taken {when(first.ts)}) says "
                f"entry seq {first.seq} ({first.t}) had sha256 {first.head}, but {what}; {len(gone)} of {len(group)} "
                "anchor(s) fail like this")))
            continue
        newest = max(group, key=lambda a: a.seq)
        after = len(lines) - 1 - newest.seq
        lv.anchors = (f"        anchors: {len(group)} checked, the newest (taken {when(newest.ts)}) holds seq "
                      f"{newest.seq}" + (f"; {after} newer entr{'y is' if after == 1 else 'ies are'} not anchored "
                                          "yet" if after else "; nothing newer"))


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _relative(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
    return "" if rel == "." else rel


def summarize(verdicts: list[FileVerdict]) -> str:
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.state] = counts.get(v.state, 0) + 1
    parts = [f"{counts[s]} {s}" for s in ("sealed", "closed", "unsealed", "damaged", "broken") if counts.get(s)]
    return f"{len(verdicts)} file(s) checked: " + ", ".join(parts)
