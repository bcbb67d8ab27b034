"""The review page: `wiretrail serve` shows recorded sessions to reviewers in a browser.

Read-only and server-rendered from the same code as `ls`, `show` and `verify`:
- integrity.py: a file's verdict (recorder.forensics.verify) as a badge and a sentence;
- listing.py: one row per session for the list, and the filters;
- index.py: the store's sessions, newest first, each row cached by the file's identity;
- session_view.py: one session as the page shows it (transcript turns, diffs, raw records);
- auth.py: who may look (identity tokens as the gateway checks them, identity.review_groups);
- server.py: the tornado application, its security headers and the Jinja2 templates.
Templates and static files ship in this package; nothing is fetched from elsewhere.
"""
