"""Which messages of a turn are new.

Chat APIs resend the whole history with every request. A turn's new messages are
those after the history its conversation already showed: the previous request's
messages, then the previous reply (which the client echoes back as an assistant
message). Conversations are told apart by their first message (a side request with
its own prompt, such as a title generator, is its own conversation).
"""
from __future__ import annotations

from recorder.forensics.transcript.model import Turn


def mark_new(turns: list[Turn]) -> None:
    seen: dict[str, list[str]] = {}  # conversation -> fingerprints of the history shown so far
    for turn in turns:
        if turn.conversation is None:
            turn.new_messages = list(turn.messages)
            continue
        prints = [m.fingerprint() for m in turn.messages]
        before = seen.get(turn.conversation)
        if before is None:
            turn.new_messages = list(turn.messages)
        else:
            k = _common_prefix(before, prints)
            turn.new_messages = turn.messages[k:]
            if k < len(before) - len(_reply_prints(turns, turn.conversation, turn)):
                turn.history_note = (
                    f"the resent history differs from the previous turn's from message {k + 1} on "
                    "(edited or compacted by the client): all messages from there on are shown"
                )
        seen[turn.conversation] = prints + [m.fingerprint() for m in turn.reply]


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _reply_prints(turns: list[Turn], conversation: str, current: Turn) -> list[str]:
    """The fingerprints of the reply of the conversation's turn before `current`."""
    last = None
    for t in turns:
        if t is current:
            break
        if t.conversation == conversation:
            last = t
    return [m.fingerprint() for m in last.reply] if last else []
