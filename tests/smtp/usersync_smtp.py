"""aiosmtpd handlers for the notifier's tests.

Start with the tests/smtp folder on PYTHONPATH:

    python3 -m aiosmtpd -n -l 127.0.0.1:2525 -c usersync_smtp.Scripted MAILDIR [DEFER_TIMES]

`Scripted` stores every accepted message in MAILDIR like aiosmtpd's own
`Mailbox` handler, and answers as a real relay does for some recipients
(chosen by the start of the address's local part):

- `bounce...`: refused at RCPT with 550 (no such user): a permanent failure;
- `defer...`: DATA answered 451 the first DEFER_TIMES (default 2) times for
  that recipient, then accepted: a temporary failure;
- `hold...`: the message is stored, but the 250 is sent only once the file
  MAILDIR/release exists, so a sender killed meanwhile cannot know the server
  has the mail.
"""

import asyncio
import os

from aiosmtpd.handlers import Mailbox


def local_part(address):
    return address.split("@", 1)[0].lower()


class Scripted(Mailbox):
    def __init__(self, mail_dir, defer_times=2):
        super().__init__(mail_dir)
        self.defer_times = int(defer_times)
        self.deferred = {}

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if local_part(address).startswith("bounce"):
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            if local_part(rcpt).startswith("defer"):
                tries = self.deferred.get(rcpt, 0)
                if tries < self.defer_times:
                    self.deferred[rcpt] = tries + 1
                    return "451 4.3.0 mailbox busy, try again later"
        reply = await super().handle_DATA(server, session, envelope)
        if any(local_part(rcpt).startswith("hold") for rcpt in envelope.rcpt_tos):
            release = os.path.join(self.mail_dir, "release")
            while not os.path.exists(release):
                await asyncio.sleep(0.05)
        return reply

    @classmethod
    def from_cli(cls, parser, *args):
        if not 1 <= len(args) <= 2:
            parser.error("usage: -c usersync_smtp.Scripted MAILDIR [DEFER_TIMES]")
        return cls(*args)
