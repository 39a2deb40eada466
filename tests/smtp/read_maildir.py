"""Prints every message of a Maildir's `new` folder as one JSON array, parsed
by Python's own mail parser (an independent check of what the notifier sent):
headers decoded (RFC 2047), and the text and HTML parts decoded.

    python3 read_maildir.py MAILDIR
"""

import email
import email.header
import email.policy
import json
import os
import sys


def decoded(value):
    if value is None:
        return None
    return str(email.header.make_header(email.header.decode_header(value)))


def main(maildir):
    out = []
    folder = os.path.join(maildir, "new")
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            raw = f.read()
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        parts = {}
        for part in message.walk():
            kind = part.get_content_type()
            if kind in ("text/plain", "text/html"):
                charset = part.get_content_charset() or "utf-8"
                parts[kind] = part.get_payload(decode=True).decode(charset)
        out.append({
            "from": decoded(message["From"]),
            "to": decoded(message["To"]),
            "subject": decoded(message["Subject"]),
            "raw_subject": message["Subject"],
            "message_id": message["Message-ID"],
            "date": message["Date"],
            "content_type": message.get_content_type(),
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
        })
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
