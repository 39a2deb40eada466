"""aiosmtpd handlers for the notifier's tests.

Start with the tests/smtp folder on PYTHONPATH:

    python3 -m aiosmtpd -n -l 127.0.0.1:2525 -c usersync_smtp.Scripted MAILDIR [DEFER_TIMES]
    python3 -m aiosmtpd -n -l 127.0.0.1:2525 -c usersync_smtp.Gated MAILDIR ADMIT HOLD

`Scripted` stores every accepted message in MAILDIR like aiosmtpd's own
`Mailbox` handler, offers PIPELINING (aiosmtpd reads commands in order
however they arrive, but does not say so), and answers as a real relay does for some recipients
(chosen by the start of the address's local part):

- `bounce...`: refused at RCPT with 550 (no such user): a permanent failure;
- `defer...`: DATA answered 451 the first DEFER_TIMES (default 2) times for
  that recipient, then accepted: a temporary failure;
- `hold...`: the message is stored, but the 250 is sent only once the file
  MAILDIR/release exists, so a sender killed meanwhile cannot know the server
  has the mail.

`Gated` (a `Scripted` for every recipient) freezes a sender mid-send at a
point the test knows: it answers the first ADMIT messages, stores the next
HOLD without answering them (the sender has sent the data, but has no reply),
and holds every later RCPT unanswered (those mails have not been sent), all
until MAILDIR/release exists. MAILDIR/gate holds "admitted stored": once both
equal ADMIT + HOLD, no sender is in the middle of sending a message's data.
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

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # This form of the hook takes over what plain aiosmtpd does itself.
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

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


class Gated(Scripted):
    def __init__(self, mail_dir, admit, hold):
        super().__init__(mail_dir)
        self.admit = int(admit)
        self.hold = int(hold)
        self.admitted = 0
        self.stored = 0
        self.write_state()

    def released(self):
        return os.path.exists(os.path.join(self.mail_dir, "release"))

    async def until_released(self):
        while not self.released():
            await asyncio.sleep(0.05)

    def write_state(self):
        # Written whole and renamed, so a reader never sees half a line.
        path = os.path.join(self.mail_dir, "gate")
        with open(path + ".tmp", "w") as f:
            f.write("%d %d" % (self.admitted, self.stored))
        os.replace(path + ".tmp", path)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.admitted >= self.admit + self.hold:
            await self.until_released()
        else:
            self.admitted += 1
            self.write_state()
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        self.stored += 1
        self.write_state()
        if self.stored > self.admit:
            await self.until_released()
        return reply

    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 3:
            parser.error("usage: -c usersync_smtp.Gated MAILDIR ADMIT HOLD")
        return cls(*args)
