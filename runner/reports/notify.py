"""Notifications: the job itself (rank 0, wherever it runs) POSTs to the user's webhooks when it
starts or resumes and when it ends (finished, failed, preempted, cancelled).

A webhook URL is a credential (whoever has a Slack hook can post to the channel): it reaches the
job only through the environment (NOTIFY_ENV, which each backend passes as a secret is passed:
an environment variable, a Modal secret), never through the spec or any file of the run folder,
and it is printed masked. A delivery runs on a background thread with a timeout per try,
retried with backoff (tenacity) for a bounded time, then said once as a warning: a webhook
that fails, refuses or hangs never fails the job, and holds its end back at most FINAL_WAIT_S.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from runner.errors import bad_input

NOTIFY_ENV = "GPUJOB_NOTIFY"  # {"urls": [...], "backend": NAME}, or URLs separated by white space
TRY_TIMEOUT_S = 10.0  # one POST: a receiver that hangs is given up on after this
RETRY_FOR_S = 120.0  # how long one notification is retried (500s, 429s, refused connections)
FINAL_WAIT_S = 10.0  # at the job's end: the most its last notifications may hold the process back
MAX_BACKOFF_S = 30.0
USER_AGENT = "gpujob-notify/1"


def checked_urls(urls: list[str], where: str) -> list[str]:
    """The webhook URLs, each an http(s) URL with a host; exit 2 naming `where` otherwise (the
    URL masked: it is a credential)."""
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
            raise bad_input(f"{where}: '{masked(url)}' is not a webhook URL (http:// or https://HOST/...)")
    return list(dict.fromkeys(urls))  # one notification per receiver, even when given twice


def masked(url: str) -> str:
    """What may be printed of a webhook URL: its scheme, host and port; the path (where Slack and
    most services keep the secret) and any user or query are not."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "***"
    port = f":{parts.port}" if _port(parts) else ""
    return f"{parts.scheme}://{parts.hostname}{port}/***"


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def environment_value(urls: list[str], backend: str) -> str:
    return json.dumps({"urls": urls, "backend": backend})


def from_environment(environ=os.environ) -> tuple[list[str], str | None]:
    """The webhooks the job was given, and the backend it runs on where gpujob said so. A user may
    also export NOTIFY_ENV as plain URLs (e.g. for `gpujob resume`)."""
    text = (environ.get(NOTIFY_ENV) or "").strip()
    if not text:
        return [], None
    if text.startswith("{"):
        try:
            given = json.loads(text)
            urls = [str(url) for url in given.get("urls", [])]
            return checked_urls(urls, NOTIFY_ENV), given.get("backend")
        except (ValueError, AttributeError):
            raise bad_input(f"{NOTIFY_ENV}: not the JSON gpujob writes there, nor URLs separated by spaces") from None
    return checked_urls(text.split(), NOTIFY_ENV), None


class Undelivered(Exception):
    """One try that failed; `retry_after`: what a 429's Retry-After asked for, in seconds."""

    def __init__(self, reason: str, retry: bool = True, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.retry_after = reason, retry, retry_after


def post_json(url: str, body: dict, timeout_s: float) -> None:
    """One POST of `body` as JSON; raises Undelivered with what went wrong (never the URL)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            reply.read()
    except urllib.error.HTTPError as err:
        # 429 and 5xx are the receiver's passing trouble; 408 a timeout it reports; other 4xx will not change
        retry = err.code in (408, 429) or err.code >= 500
        raise Undelivered(f"HTTP {err.code}", retry, _retry_after(err.headers.get("Retry-After"))) from None
    except (urllib.error.URLError, OSError) as err:  # TimeoutError is an OSError; urlopen may wrap it
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        if isinstance(reason, TimeoutError):
            raise Undelivered(f"no answer within {timeout_s:g} s") from None
        raise Undelivered(f"cannot connect ({reason})") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: backoff decides


@dataclass
class Delivery:
    event: str
    url: str
    make_body: Callable[[str], dict]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: list[str] = field(default_factory=list)  # "sent", or the reason it was given up on


class Notifier:
    """Sends each event to every webhook from a background thread per webhook, in the order the
    events happened (a receiver never hears `finished` before `started`); `wait` at the job's end."""

    def __init__(self, urls: list[str], post: Callable[[str, dict, float], None] = post_json,
                 try_timeout_s: float = TRY_TIMEOUT_S, retry_for_s: float = RETRY_FOR_S,
                 warn: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep):
        self.urls, self.post, self.try_timeout_s, self.retry_for_s = urls, post, try_timeout_s, retry_for_s
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.sleep = sleep
        self.deliveries: list[Delivery] = []
        self.queues: dict[str, queue.SimpleQueue] = {}
        self.lock = threading.Lock()

    def send(self, event: str, make_body: Callable[[str], dict]) -> None:
        """`make_body(url)`: the body for that receiver, made on the sending thread (it reads the
        run folder), so that nothing of it holds the job up."""
        for url in self.urls:
            delivery = Delivery(event, url, make_body)
            self.deliveries.append(delivery)
            self._queue(url).put(delivery)

    def wait(self, limit_s: float = FINAL_WAIT_S) -> None:
        """Wait for what is still being sent, at most `limit_s` in all; what is not through by
        then is given up on, with one warning each."""
        deadline = time.monotonic() + limit_s
        for delivery in self.deliveries:
            if not delivery.done.wait(max(0.0, deadline - time.monotonic())):
                self._warn_once(delivery, f"not delivered within {limit_s:g} s of the job's end; given up")

    def _queue(self, url: str) -> queue.SimpleQueue:
        with self.lock:
            if url not in self.queues:
                self.queues[url] = queue.SimpleQueue()
                threading.Thread(target=self._sender, args=(self.queues[url],), daemon=True,
                                 name="gpujob-notify").start()
            return self.queues[url]

    def _sender(self, deliveries: queue.SimpleQueue) -> None:
        while True:
            delivery = deliveries.get()
            try:
                self._deliver(delivery, delivery.make_body)
            finally:
                delivery.done.set()

    def _deliver(self, delivery: Delivery, make_body: Callable[[str], dict]) -> None:
        from tenacity import RetryError, Retrying, retry_if_exception, stop_before_delay

        tries = 0
        try:
            body = make_body(delivery.url)
            # stop_before_delay: no wait (a long Retry-After) carries a try past the bound
            retrying = Retrying(stop=stop_before_delay(self.retry_for_s), wait=_backoff, sleep=self.sleep,
                                retry=retry_if_exception(lambda err: isinstance(err, Undelivered) and err.retry))
            for attempt in retrying:
                with attempt:
                    tries += 1
                    self.post(delivery.url, body, self.try_timeout_s)
            with self.lock:
                delivery.outcome.append("sent")
        except RetryError as err:
            last = err.last_attempt.exception()
            self._warn_once(delivery, f"{getattr(last, 'reason', last)} after {tries} tries within "
                                      f"{self.retry_for_s:g} s; given up")
        except Undelivered as err:
            self._warn_once(delivery, f"{err.reason}; not retried")
        except Exception as err:  # a notification never fails the job: whatever went wrong is a warning
            said = str(err).replace(delivery.url, masked(delivery.url))  # an error may quote the URL
            self._warn_once(delivery, f"{type(err).__name__}: {said}")

    def _warn_once(self, delivery: Delivery, why: str) -> None:
        with self.lock:
            if delivery.outcome:  # sent, or already given up on and said so
                return
            delivery.outcome.append(why)
        self.warn(f"gpujob: warning: notification '{delivery.event}' to {masked(delivery.url)}: {why} "
                  "(the job is not affected)")


def _backoff(retry_state) -> float:
    """Exponential backoff from 1 s, up to MAX_BACKOFF_S; a 429's Retry-After where it asks for longer."""
    exponential = min(MAX_BACKOFF_S, 2.0 ** (retry_state.attempt_number - 1))
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    asked = getattr(error, "retry_after", None)
    return max(exponential, asked) if asked is not None else exponential


def hand_to_job(spec_urls: list[str], option_urls: list[str], backend: str, environ=os.environ) -> list[str]:
    """Put the job's webhooks (the spec's `notify`, `--notify`, and any the user exported in
    NOTIFY_ENV) into this process's environment, from which each backend passes them on as it
    passes a secret; returns them."""
    given, _ = from_environment(environ)
    urls = checked_urls([*spec_urls, *checked_urls(option_urls, "--notify"), *given], "notify")
    if urls:
        environ[NOTIFY_ENV] = environment_value(urls, backend)
    return urls
