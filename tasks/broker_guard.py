"""A broker message that cannot be a task is set aside, never fatal to the worker that reads it.

kombu decodes each message it pops (``BRPOP`` on a queue, a pub/sub message on the pidbox
channel) inside the worker's event loop, and an exception there ends the Celery worker: one
``redis-cli lpush gpu 'not json'`` used to stop every worker on the queue, and a JSON list
published on ``/0.celery.pidbox`` every worker subscribed to it. Here the transports check each
message's envelope before kombu uses it. A message that is not JSON, or whose envelope lacks
what kombu reads (properties, a delivery tag, delivery info, a text body), is logged (queue,
size and what is wrong; never its content) and, on Redis, kept in the list ``medq.dead-letter``
(newest first, the last 1 000) for an operator to look at. Well-formed envelopes carrying a body
Celery cannot use (not JSON, pickle, an unknown task) are Celery's to refuse; it logs and acks.

Selected in tasks/config.py for redis://, rediss:// and the embedded broker.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from queue import Empty
from typing import Any

from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.transport import redis as kombu_redis

log = logging.getLogger("medq.broker")
DEAD_LETTER = "medq.dead-letter"
DEAD_LETTER_KEEP = 1000


def envelope_problem(message: Any) -> str | None:
    """What makes ``message`` (a decoded transport envelope) unusable by kombu; None if nothing."""
    if not isinstance(message, dict):
        return f"not a JSON object but a {type(message).__name__}"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "no properties object"
    if not isinstance(properties.get("delivery_tag"), str):
        return "no delivery tag"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("exchange", "routing_key")):
        return "no delivery info (exchange, routing key)"
    for key in ("content-type", "content-encoding"):
        if message.get(key) is not None and not isinstance(message[key], str):
            return f"{key} is not text"
    if message.get("headers") is not None and not isinstance(message["headers"], dict):
        return "headers are not an object"
    body, encoding = message.get("body"), properties.get("body_encoding")
    if body is not None and not isinstance(body, str):
        return "body is not text"
    if encoding not in (None, "base64"):
        return f"unknown body encoding {str(encoding)[:20]!r}"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    return None


def _as_text(raw: Any) -> str:
    if isinstance(raw, (bytes, bytearray)):
        return raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        return raw
    return json.dumps(raw, default=str)


class _GuardedChannel:
    """Channel mixin: a popped message kombu cannot decode is set aside instead of raised."""

    def _set_aside(self, queue: str, raw: Any, problem: str) -> None:
        text = _as_text(raw)
        log.error("dropped a malformed message from %r (%d bytes): %s", queue, len(text), problem)
        self._dead_letter(text)

    def _dead_letter(self, text: str) -> None:
        """Keep it where an operator can look (Redis); the embedded broker only logs."""

    def _get(self, queue, *args, **kwargs):
        try:
            return super()._get(queue, *args, **kwargs)
        except Empty:
            raise
        except Exception as exc:
            if isinstance(exc, self.connection.connection_errors):
                raise
            self._undecodable(queue, exc)
            raise Empty() from None

    def _undecodable(self, queue: str, exc: Exception) -> None:
        """A popped message that kombu could not decode (not JSON, or JSON its decoder's hooks
        refuse, such as ``{"__type__": "bytes", "__value__": 5}``)."""
        if isinstance(exc, json.JSONDecodeError):
            self._set_aside(queue, exc.doc, "not JSON")
        else:
            log.error("dropped a malformed message from %r: kombu cannot decode it (%s)", queue, type(exc).__name__)


class _GuardedTransport:
    """Transport mixin: every decoded envelope is checked before kombu builds a Message of it."""

    def _deliver(self, message, queue):
        problem = envelope_problem(message)
        if problem is not None:
            channel = next((c for c in self.channels if c), None)
            if channel is not None:
                channel._set_aside(queue, message, problem)
            else:
                log.error("dropped a malformed message from %r: %s", queue, problem)
            return
        try:
            super()._deliver(message, queue)
        except (DecodeError, ContentDisallowed) as exc:  # a broadcast consumer without its own handler
            log.error("dropped a message from %r whose body cannot be decoded (%s)", queue, type(exc).__name__)


class _RedisGuard:
    """Redis channels: a popped item that is not JSON is set aside, and kept in the dead-letter list."""

    def _dead_letter(self, text: str) -> None:
        try:
            with self.conn_or_acquire() as client:
                client.lpush(DEAD_LETTER, text)
                client.ltrim(DEAD_LETTER, 0, DEAD_LETTER_KEEP - 1)
        except Exception:  # the log line is what matters
            log.debug("could not keep the malformed message in %s", DEAD_LETTER, exc_info=True)

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except Empty:
            raise
        except Exception as exc:  # popped already: set it aside and go on
            if isinstance(exc, self.connection_errors):
                raise
            self._undecodable("a queue", exc)
            return True

    def _receive_one(self, c):
        """A broadcast (pidbox) message: kombu itself drops one that is not JSON, with a warning
        that quotes it, by raising Empty, which also abandons the rest of a burst of messages
        already read from the socket (they would wait for the next message to be seen); anything
        else it cannot decode is dropped here. Either way the burst goes on being read."""
        try:
            return super()._receive_one(c)
        except Empty:
            return None
        except Exception as exc:
            if isinstance(exc, self.connection_errors):
                raise
            self._undecodable("the broadcast channel", exc)
            return None


class RedisChannel(_RedisGuard, _GuardedChannel, kombu_redis.Channel):
    pass


class RedisTransport(_GuardedTransport, kombu_redis.Transport):
    Channel = RedisChannel


class SentinelChannel(_RedisGuard, _GuardedChannel, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(_GuardedTransport, kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORTS = {"redis": f"{__name__}:RedisTransport", "rediss": f"{__name__}:RedisTransport",
              "sentinel": f"{__name__}:SentinelTransport"}


def transport_for(url: str) -> str | None:
    """The guarded transport for a broker URL's scheme (None: kombu's own choice)."""
    return TRANSPORTS.get(url.split("://", 1)[0]) if "://" in url else None
