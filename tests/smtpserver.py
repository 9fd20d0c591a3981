"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps the mails it is sent, for the tests of
``airflow.email_on_failure``, and the Airflow connection a user would write for it."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.s3server import free_ports


class Inbox:
    """aiosmtpd's handler: every message received, parsed, with the recipients the server was given."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server, session, envelope) -> str:  # aiosmtpd calls it by this name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append((list(envelope.rcpt_tos), message))
        return "250 OK"


class SmtpServer:
    def __init__(self) -> None:
        (self.port,) = free_ports(1, paired=False)
        self.inbox = Inbox()
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def airflow_connection(self) -> str:
        """``AIRFLOW_CONN_SMTP_DEFAULT``: plain SMTP (no TLS on loopback), one try, a sender."""
        extra = {"from_email": "lakecast@example.com", "disable_ssl": True, "disable_tls": True, "retry_limit": 0}
        return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": self.port, "extra": extra})

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
