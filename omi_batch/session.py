"""One way to open the runtime a command or a job tick works with: settings → ledger (through
its single writer), pipeline (and its client), an optional in-process receiver; ``close()``.

With a receiver in the same process, every stored callback wakes the pipeline's wait for its
row at once, and the receiver's callbacks share commits with the pipeline's row steps
(``ledger.serial``). Messages for the person (the receiver's address, warnings) go to ``say``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from omi_batch.config import Secret, Settings


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` names this machine (OMI could not call it from outside)."""
    host = (urlsplit(url or "").hostname or "").lower()
    return host == "localhost" or host.startswith("127.") or host == "::1"


class Session:
    """The ledger, pipeline and receiver (``listen``: (host, port)) of one command or tick;
    ``metrics`` counts the receiver's answers (``metrics_endpoint``: and serves /metrics)."""

    def __init__(
        self,
        settings: Settings,
        ledger: Any,
        *,
        listen: tuple[str, int] | None = None,
        say: Callable[[str], None] | None = None,
        metrics: Any = None,
        metrics_endpoint: bool = False,
        **pipeline_options: Any,
    ) -> None:
        from omi_batch.ledger.serial import NotifyingLedger, SerialLedger
        from omi_batch.pipeline import Pipeline

        say = say or (lambda text: None)
        self.settings = settings
        self.ledger = ledger
        self.receiver: Any = None
        self.pipeline: Any = None
        self.notifier: Any = None  # the command's --notify, if any
        serial = SerialLedger(ledger)  # the pipeline and the receiver take turns writing
        webhook_url, secret = settings.webhook_url, settings.webhook_secret
        try:
            if listen is not None:
                from omi_batch import webhook

                if secret is None:
                    secret = Secret(secrets.token_urlsafe(32))
                    say("OMI_WEBHOOK_SECRET is not set: using a one-off secret, so only this "
                        "command's receiver can check these callbacks.")  # fmt: skip
                notifying = NotifyingLedger(ledger, self._notify, serial)
                options = {"metrics": metrics} if metrics is not None else {}
                app = webhook.make_app(notifying, secret, **options)
                if metrics is not None and metrics_endpoint:  # GET /metrics beside the callbacks
                    app = metrics.wrap(app)
                self.receiver = webhook.start(app, *listen)
                say(f"Webhook receiver listening on {self.receiver.url}")
                if not webhook_url:
                    webhook_url = self.receiver.url
                    if not is_loopback(settings.base_url):
                        say(f"Warning: OMI_WEBHOOK_URL is not set, so OMI is told to call "
                            f"{webhook_url}, which it cannot reach from outside this machine: "
                            "set OMI_WEBHOOK_URL to the public address that forwards to it.")  # fmt: skip
            elif webhook_url and secret is None:
                say("Warning: OMI_WEBHOOK_URL is set but OMI_WEBHOOK_SECRET is not, so no "
                    "callback can be checked: transfers will end unconfirmed.")  # fmt: skip
            self.pipeline = Pipeline(serial, settings, webhook_url=webhook_url,
                                     webhook_secret=secret, **pipeline_options)  # fmt: skip
        except BaseException:
            self.close()
            raise

    def _notify(self, batch_id: str | None, row: int | None) -> None:
        """A callback was stored: wake the pipeline's wait for that row (none before it exists)."""
        if self.pipeline is not None:
            self.pipeline.notify(batch_id, row)

    def close(self) -> None:
        """Close the pipeline's client, then stop the receiver (it finishes what is in flight)."""
        if self.pipeline is not None:
            self.pipeline.close()
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
