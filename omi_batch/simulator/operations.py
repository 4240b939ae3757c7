"""What each endpoint does to the simulator's state: rooms, messages, the agent directory,
conversation and ticket transfers (preview and execute)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from functools import partial
from typing import Any

from omi_batch.simulator.delivery import Delivery
from omi_batch.simulator.fixtures import _agent_id, _ms, _new_id
from omi_batch.simulator.model import (
    TICKET_OPEN,
    Answers,
    Rejected,
    TransferRequest,
)
from omi_batch.simulator.state import State


class Operations:
    """The endpoints' work on the ``State``, called by the WSGI app under ``State.lock``,
    answering as ``answers`` say; what an executed transfer sets off goes to the ``Delivery``."""

    def __init__(self, state: State, delivery: Delivery, answers: Answers):
        self.state = state
        self.delivery = delivery
        self.answers = answers

    def agent(self, email: str, field: str) -> str:
        """The known agent ``email`` names (trimmed, lower case), else Rejected for ``field``."""
        email = email.strip().lower()
        if email not in self.state.agents:
            raise Rejected("user_not_found", f"{field}: no agent with email {email}")
        return email

    def new_room(self, channel: str, body: dict) -> dict:
        """Create (or return, if ``uuid`` exists) a conversation. ``members`` is a simulator
        extension: agent emails, so a test can make conversations a transfer will find."""
        room_uuid = body.get("uuid") or ""
        guest = body.get("guest_info") or {}
        if not isinstance(room_uuid, str) or not isinstance(guest, dict):
            raise Rejected("request_body_required", "uuid is a string, guest_info an object")
        members = body.get("members") or []
        if not isinstance(members, list):
            raise Rejected("request_body_required", "members is a list of agent emails")
        members = [self.agent(str(m), "members") for m in members]
        with self.state.lock:
            conversation = self.state.by_uuid.get(room_uuid) if room_uuid else None
            if conversation is None:
                conv_id = _new_id()
                conversation = {
                    "id": conv_id,
                    "uuid": room_uuid or conv_id,
                    "channel": channel,
                    "guest_info": dict(guest),
                    "members": members,
                    "created": self.state.now(),
                }
                self.state.conversations.append(conversation)
                self.state.by_id[conv_id] = conversation
                self.state.by_uuid[conversation["uuid"]] = conversation
            return {"conversation": self._room_view(conversation)}

    def guest_send_message(self, body: dict) -> dict:
        """Store a guest's message in the conversation ``uuid`` names; the message as stored."""
        room_uuid, content = body.get("uuid"), body.get("content")
        if not isinstance(room_uuid, str) or not room_uuid:
            raise Rejected("uuid_required", "uuid: the conversation's uuid is required")
        if not isinstance(content, str) or not content:
            raise Rejected("content_required", "content: the message text is required")
        multimedias = body.get("multimedias")
        if multimedias is not None and not isinstance(multimedias, list):
            raise Rejected("request_body_required", "multimedias is a list")
        with self.state.lock:
            conversation = self.state.by_uuid.get(room_uuid)
            if conversation is None:
                raise Rejected("resource_not_found", f"no conversation with uuid {room_uuid}")
            stamp = _ms()
            message = {
                "created_date": stamp,
                "last_updated_date": stamp,
                "_id": _new_id(),
                "room_id": conversation["id"],
                "member_type": "guest",
                "type": "chat",
                "content": content,
                "multimedias": multimedias,
                "kind": "normal",
                "uuid": str(uuid.uuid4()),
                "conv_uuid": conversation["uuid"],
                "guest_info": conversation["guest_info"] or None,
            }
            self.state.messages.setdefault(conversation["id"], []).append(message)
            return dict(message)

    def list_messages(self, body: dict, page: int, size: int) -> list[dict]:
        """A page of a conversation's messages, newest first. ``conv_id`` may be id or uuid."""
        conv_id = body.get("conv_id")
        if not isinstance(conv_id, str) or not conv_id:
            raise Rejected("conv_id_required", "conv_id: the conversation id is required")
        with self.state.lock:
            conversation = self.state.by_id.get(conv_id) or self.state.by_uuid.get(conv_id)
            if conversation is None:
                raise Rejected("resource_not_found", f"no conversation {conv_id}")
            messages = list(reversed(self.state.messages.get(conversation["id"], [])))
            return [dict(m) for m in messages[(page - 1) * size : page * size]]

    def list_agents(self, page: int, size: int, keyword: str) -> Any:
        """``GET /api/agent/list``: a page of the directory in ``directory_shape``; ``keyword``
        matches any part of the email or the name, without case. Past the end: an empty page."""
        needle = keyword.strip().casefold()
        matches = [
            (email, agent)
            for email, agent in self.state.agents.items()
            if not needle or needle in email or needle in agent["name"].casefold()
        ]
        chosen = matches[(page - 1) * size : page * size]
        if self.answers.directory_shape == "data":
            items = [
                {
                    "id": _agent_id(email),
                    "identify_info": email,
                    "fullname": agent["name"],
                    "is_active": agent["active"],
                    "is_deleted": agent["deleted"],
                }
                for email, agent in chosen
            ]
            return {"data": items, "total": len(matches), "page_number": page, "page_size": size}
        items = [
            {
                "_id": _agent_id(email),
                "identify_info": email,
                "full_name": agent["name"],
                "name": agent["name"],
                "email": email,
                "is_active": agent["active"],
                "is_deleted": agent["deleted"],
                "role": "agent",
            }
            for email, agent in chosen
        ]
        if self.answers.directory_shape == "list":
            return items
        return {"items": items, "page": page, "size": size, "total_items": len(matches)}

    def parse_transfer(self, body: dict, kind: str = "conversations") -> TransferRequest:
        """Check a transfer body the way OMI would; raise Rejected with the first problem.

        A ticket transfer reads only sourceEmail, targetEmail, previewChanges and
        callbackResultConfig (anything else is ignored, as unknown fields are)."""
        source, target = body.get("sourceEmail"), body.get("targetEmail")
        if not isinstance(source, str) or not source.strip():
            raise Rejected("source_email_required", "sourceEmail is required")
        if not isinstance(target, str) or not target.strip():
            raise Rejected("target_email_required", "targetEmail is required")
        for name in ("previewChanges", "replaceExistingMembers"):
            if body.get(name) is not None and not isinstance(body[name], bool):
                raise Rejected("request_body_required", f"{name} must be true or false")
        conv_ids = body.get("convIds") if kind == "conversations" else None
        if conv_ids is not None and (
            not isinstance(conv_ids, list) or not all(isinstance(c, str) for c in conv_ids)
        ):
            raise Rejected("request_body_required", "convIds must be a list of strings")
        callback = body.get("callbackResultConfig")
        if callback is not None:
            url = callback.get("url") if isinstance(callback, dict) else None
            headers = callback.get("headers") if isinstance(callback, dict) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise Rejected("request_body_required", "callbackResultConfig.url is required")
            if headers is not None and not isinstance(headers, dict):
                raise Rejected("request_body_required", "callbackResultConfig.headers is an object")
            callback = {"url": url, "headers": {str(k): str(v) for k, v in (headers or {}).items()}}
        return TransferRequest(
            source=self.agent(source, "sourceEmail"),
            target=self.agent(target, "targetEmail"),
            preview=bool(body.get("previewChanges")),
            replace=kind == "conversations" and bool(body.get("replaceExistingMembers")),
            conv_ids=tuple(conv_ids) if conv_ids else None,
            callback=callback,
            request_time_ms=_ms(),
            kind=kind,
        )

    def transfer(
        self, request: TransferRequest, *, apply_now: bool = False, request_id: str | None = None
    ) -> tuple[int, Any]:
        """Handle a parsed transfer; returns (HTTP status, payload) and queues what follows.

        A preview counts (sync: in the answer; async: in a callback). An execute is applied by
        the worker, which then sends the callback; ``apply_now`` applies it here instead
        (the slow fault and scripted ``apply``: the work is done even if the answer is late).
        """
        request_id = request_id or str(uuid.uuid4())
        if request.preview:
            with self.state.lock:
                count = len(self._request_changes(request))
            mode = self.answers.preview_mode
            if request.kind == "tickets" and self.answers.ticket_preview_mode:
                mode = self.answers.ticket_preview_mode
            if mode == "sync":
                if self.answers.preview_field == "number":
                    return 200, count
                return 200, {self.answers.preview_field: count, "requestId": request_id}
            if request.callback:
                self._callback(request, request_id, "SUCCESS", count)
            return 202, {"requestId": request_id}
        if apply_now:
            self.finish_transfer(request, request_id)
        else:
            self.delivery.apply_later(partial(self.finish_transfer, request, request_id))
        return 202, {"requestId": request_id}

    # ----------------------------------------------------------------- internals

    def _room_view(self, conversation: dict) -> dict:
        stamp = _ms(conversation["created"])
        return {
            "created_date": stamp,
            "last_updated_date": stamp,
            "_id": conversation["id"],
            "guest_info": conversation["guest_info"] or None,
            "status": "active",
            "uuid": conversation["uuid"],
            "name": conversation["guest_info"].get("full_name"),
            "members": list(conversation["members"]),
            "last_message": None,
        }

    def changes(
        self, source: str, target: str, conv_ids: tuple[str, ...] | None, replace: bool
    ) -> list[dict]:
        """The conversations this transfer would change now (call with the lock held)."""
        since = self.state.now() - timedelta(days=self.answers.window_days)
        wanted = set(conv_ids) if conv_ids else None
        changes = []
        for conversation in self.state.conversations:
            members = conversation["members"]
            if source not in members or conversation["created"] < since:
                continue
            if wanted is not None and conversation["id"] not in wanted:
                continue
            if (members != [target]) if replace else (target not in members):
                changes.append(conversation)
        return changes

    def ticket_changes(self, source: str, target: str) -> list[dict]:
        """The open tickets of ``source`` a ticket transfer would move now (lock held)."""
        since = None
        if self.answers.ticket_window_days is not None:
            since = self.state.now() - timedelta(days=self.answers.ticket_window_days)
        return [
            t
            for t in self.state.tickets
            if t["assignee"] == source
            and source != target
            and t["status"] in TICKET_OPEN
            and (since is None or t["created"] >= since)
        ]

    def _request_changes(self, request: TransferRequest) -> list[dict]:
        """What this request would change now, conversations or tickets (lock held)."""
        if request.kind == "tickets":
            return self.ticket_changes(request.source, request.target)
        return self.changes(request.source, request.target, request.conv_ids, request.replace)

    def finish_transfer(self, request: TransferRequest, request_id: str) -> None:
        """Apply an executed transfer (or fail it, by the callback_error_rate fault), then
        queue its callback."""
        failed = self.state.draw(self.state.faults.callback_error_rate)
        updated = 0
        if not failed:
            with self.state.lock:
                changes = self._request_changes(request)
                for record in changes:
                    if request.kind == "tickets":
                        record["assignee"] = request.target
                    elif request.replace:
                        record["members"] = [request.target]
                    else:
                        record["members"].append(request.target)
                updated = len(changes)
        if request.callback:
            self._callback(request, request_id, "ERROR" if failed else "SUCCESS", updated)

    def _callback(
        self, request: TransferRequest, request_id: str, status: str, updated: int
    ) -> None:
        """Hand the callback of ``request`` to the delivery, unless tickets get none."""
        if request.kind == "tickets" and not self.answers.ticket_callbacks:
            return  # the variant where OMI never calls back for tickets
        self.delivery.schedule_callback(request, request_id, status, updated)
