"""``OmiClient``: the OMI endpoints omi-batch uses, each one call through the ``Transport`` it
holds."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Self

from omi_batch.client.envelope import (
    AGENTS_PATH,
    TICKET_PATH,
    TICKETS_DENIED,
    TRANSFER_PATH,
    _agents_page,
    _channel,
    _dict_payload,
    _list_payload,
    transfer_parser,
)
from omi_batch.client.errors import ApiError
from omi_batch.client.transport import Transport
from omi_batch.client.values import Agent, TransferResult
from omi_batch.config import Secret


class OmiClient:
    """A client for the OMI endpoints omi-batch uses. Share one between threads; close it once.

    Each endpoint is one call through the ``Transport`` it holds, which takes the options:
    ``timeout`` is the read timeout per request, ``connect_timeout`` the connect timeout.
    ``auth`` is ``"api-key"`` (the x-api-key header) or ``"bearer"`` (a token from
    ``GET /api/auth``, kept in memory only). ``limiter`` paces every attempt (None: no pacing;
    the pipeline always gives one). ``on_attempt`` is called in the calling thread after every
    attempt; a failing hook is logged and ignored. ``sleep`` and ``rng`` are injectable so tests
    neither wait nor guess; ``pool_size`` is the most connections kept open.
    """

    def __init__(self, base_url: str, api_key: Secret, **options: Any):
        self.transport = Transport(base_url, api_key, **options)

    def __repr__(self) -> str:
        return f"OmiClient(base_url={self.transport.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self.transport.close()

    # ----------------------------------------------------------------------- endpoints

    def transfer_conversations(
        self,
        source_email: str,
        target_email: str,
        *,
        preview: bool,
        replace_existing_members: bool = False,
        conv_ids: Sequence[str] | None = None,
        callback: dict | None = None,
        context: dict | None = None,
    ) -> TransferResult:
        """Preview (count only) or execute one transfer. Execute answers 202 with a requestId;
        the result comes later by callback to ``callback["url"]``."""
        body: dict[str, Any] = {
            "sourceEmail": source_email,
            "targetEmail": target_email,
            "previewChanges": bool(preview),
            "replaceExistingMembers": bool(replace_existing_members),
        }
        if conv_ids:
            body["convIds"] = [str(c) for c in conv_ids]
        if callback:
            body["callbackResultConfig"] = callback
        parse = transfer_parser(TRANSFER_PATH, preview=preview)
        return self.transport.post(TRANSFER_PATH, body, context=context, parse=parse)

    def transfer_tickets(
        self,
        source_email: str,
        target_email: str,
        *,
        preview: bool,
        context: dict | None = None,
        callback: dict | None = None,
    ) -> TransferResult:
        """Preview or execute the move of a source agent's tickets to the target, with the
        conversation transfer's envelope and count variants. A key without the permission to
        assign other agents' tickets gets an ApiError ``permission_denied`` for this row, not
        an AuthError: the same key may move conversations."""
        body: dict[str, Any] = {
            "sourceEmail": source_email,
            "targetEmail": target_email,
            "previewChanges": bool(preview),
        }
        if callback:
            body["callbackResultConfig"] = callback
        parse = transfer_parser(TICKET_PATH, preview=preview)
        return self.transport.post(
            TICKET_PATH, body, context=context, parse=parse, denied=TICKETS_DENIED
        )

    def list_agents(
        self,
        keyword: str | None = None,
        size: int = 50,
        *,
        max_pages: int = 400,
        context: dict | None = None,
    ) -> Iterator[Agent]:
        """Every agent of OMI's directory (those matching ``keyword``), page after page until an
        empty page; an agent listed twice (an old deleted account beside a new one) comes once
        per entry. The directory is documented with a Bearer token: in api-key mode the key is
        sent first and, if OMI refuses it there, a token is fetched once and used from then on.
        A page that only repeats the items already read ends the list when it is smaller than
        ``size`` (OMI ignores ``page`` and gave everything at once); a full one raises ApiError
        ``directory_paging`` (the rest cannot be reached: calling the others missing would be
        wrong). ApiError ``directory_too_large`` after ``max_pages`` pages (a bound, not a
        guess)."""
        size = max(1, int(size))
        seen: set[str] = set()
        for page in range(1, max_pages + 1):
            params: dict[str, Any] = {"page": page, "size": size}
            if keyword:
                params["keyword"] = keyword
            items = self.transport.request(
                "GET", AGENTS_PATH, None, params=params, context=context, parse=_agents_page,
                auth=self.transport.directory_auth,
                fallback=self.transport.directory_auth == "api-key",
            )  # fmt: skip
            if not items:
                return
            fresh = [(key, agent) for key, agent in items if key not in seen]
            if not fresh:  # OMI ignoring ``page`` and repeating itself
                if len(items) < size:
                    return
                raise ApiError(
                    None, "directory_paging",
                    f"page {page} of the agent list repeats the agents of the pages before it "
                    f"({len(items)} of them): OMI seems to ignore the page parameter, so the "
                    "rest of the directory cannot be read", endpoint=AGENTS_PATH,
                )  # fmt: skip
            seen.update(key for key, _ in fresh)
            yield from (agent for _, agent in fresh if agent is not None)
        raise ApiError(
            None, "directory_too_large",
            f"more than {max_pages} pages of {size} agents", endpoint=AGENTS_PATH,
        )  # fmt: skip

    def new_room(
        self,
        channel: str = "livetalk",
        *,
        uuid: str = "",
        guest_info: dict | None = None,
        context: dict | None = None,
    ) -> dict:
        """Open a conversation as a guest (test data); returns the payload."""
        body = {"uuid": uuid, "guest_info": guest_info or {}}
        path = f"/api/social/{_channel(channel)}/new_room"
        return self.transport.post(path, body, context=context, parse=_dict_payload)

    def guest_send_message(
        self,
        channel: str = "livetalk",
        *,
        uuid: str,
        content: str,
        multimedias: list[dict] | None = None,
        context: dict | None = None,
    ) -> dict:
        """Send a message as the guest of conversation ``uuid``; returns the stored message."""
        body: dict[str, Any] = {"uuid": uuid, "content": content}
        if multimedias:
            body["multimedias"] = multimedias
        path = f"/api/social/{_channel(channel)}/guest_send_message"
        return self.transport.post(path, body, context=context, parse=_dict_payload)

    def list_messages(
        self, conv_id: str, *, page: int = 1, size: int = 15, context: dict | None = None
    ) -> list:
        """One page of a conversation's messages."""
        return self.transport.post(
            "/api/social/message/list",
            {"conv_id": conv_id},
            params={"page": int(page), "size": int(size)},
            context=context,
            parse=_list_payload,
        )
