"""Meta-like traffic against a deployed stack, and what became of each message.

``MetaLikeSender`` posts signed WhatsApp text messages through the VPS's public
:443 (Traefik, SNI and all) at a steady rate, each from its own sender, and
retries every non-200 answer with a backoff until it gets a 200, as Meta does
(its schedule backs off over hours; here from ``retry_seconds``, doubling up
to ``max_retry_seconds``). A fixed 2 s interval was tried first: after a
minute's outage its retry storm (128 threads, a TLS handshake each) took a
third of a 2-CPU machine from the stack it was testing, and the probes of a
deploy waited behind the executions it piled up; Meta does not do that.
With ``statuses=True`` it also posts, as Meta does, a "sent" status for each
reply the Graph API double accepted, echoing the send's
``biz_opaque_callback_data``, signed and retried the same way (they are not
counted in the figures).
``outcome`` then reads, for every message,
what PostgreSQL stored, the reply rows, and the sends the Graph API double
received, and sums them into :class:`Figures`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator

from harness.deploys import public_request
from restobot import meta_payloads
from restobot.commands import container_exec, psql
from restobot.settings import read_env_file, secrets_file

REQUEST_TIMEOUT = 20.0  # Meta waits about 20 s for a webhook's answer
RATE_WINDOW_SECONDS = 30  # W2 counts a conversation's messages per 30 s window of their received_at


def at_the_start_of_a_rate_window(needed: float = 20.0) -> None:
    """Wait, when less than ``needed`` seconds are left, for the next of W2's fixed rate-limit windows: a burst
    received across a boundary is counted half in each (a CI run sent 12 across one and none was dropped).
    The VPS containers share this machine's clock."""
    left = RATE_WINDOW_SECONDS - time.time() % RATE_WINDOW_SECONDS
    if left < needed:
        time.sleep(left + 0.5)


def statuses_for_accepted_sends(requests: list[dict], phone_number_id: str) -> list[tuple[str, dict]]:
    """The "sent" status Meta posts for each WhatsApp message the Graph API double accepted, as
    (message id, payload): ``requests`` as the double records them (``status``, ``message_id``, ``body``)."""
    statuses = []
    for request in requests:
        body = request.get("body")
        if request.get("status") != 200 or not request.get("message_id") or not isinstance(body, dict) \
                or body.get("messaging_product") != "whatsapp":
            continue
        statuses.append((request["message_id"], meta_payloads.whatsapp_status(
            request["message_id"], "sent", recipient=str(body.get("to", "")), phone_number_id=phone_number_id,
            callback_data=body.get("biz_opaque_callback_data"))))
    return statuses


@dataclasses.dataclass
class Delivery:
    """One message and every answer it got: (seconds since the traffic started, status; -1: no answer)."""

    wamid: str
    sender: str
    body: bytes
    signature: str
    answers: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    accepted_with: str = ""  # the body of the 200 answer

    @property
    def answered_200(self) -> bool:
        return any(status == 200 for _, status in self.answers)


@dataclasses.dataclass(frozen=True)
class Figures:
    """What became of the messages of one run (lost = answered 200 but not stored, or stored but not
    replied; duplicates = replies the Graph API received beyond one per message)."""

    sent: int
    answered_200: int
    non_200_answers: int
    stored: int
    duplicates: int
    replied: int
    lost: int
    first_200_after_fault: float | None
    non_200_by_status: tuple[tuple[int, int], ...] = ()
    bodies_of_lost_200s: tuple[str, ...] = ()  # what the stack said when it accepted a message it then lost

    def line(self) -> str:
        recovery = "-" if self.first_200_after_fault is None else f"{self.first_200_after_fault:.1f} s"
        return (f"sent {self.sent}  200 {self.answered_200}  non-200 answers {self.non_200_answers}  "
                f"stored {self.stored}  duplicates {self.duplicates}  replied {self.replied}  lost {self.lost}  "
                f"first 200 after the fault {recovery}  non-200 by status {dict(self.non_200_by_status)}"
                + (f"  bodies of the lost 200s {list(self.bodies_of_lost_200s)}" if self.bodies_of_lost_200s else ""))


class MetaLikeSender:
    """Signed messages at ``rate`` per second; each retried after ``retry_seconds``, the wait doubling
    up to ``max_retry_seconds``, until a 200 or until ``give_up_after`` seconds (Meta gives up after
    days; the test needs an end)."""

    def __init__(self, stack, *, rate: float = 2.0, retry_seconds: float = 2.0, max_retry_seconds: float = 16.0,
                 give_up_after: float = 240.0, sender_prefix: str = "3361", statuses: bool = False) -> None:
        self.stack = stack
        self.rate = rate
        self.retry_seconds = retry_seconds
        self.max_retry_seconds = max_retry_seconds
        self.give_up_after = give_up_after
        self.sender_prefix = sender_prefix
        self.run = secrets.randbelow(10_000)  # senders unique across runs: the double's record outlives a run
        self.deliveries: list[Delivery] = []
        # Meta's "sent" status for each reply the Graph API double accepted, posted like a message
        self.statuses = statuses
        self.status_deliveries: list[Delivery] = []
        self._statuses_posted: set[str] = set()
        self.started = 0.0
        self._secret = read_env_file(secrets_file("local"))["META_APP_SECRET"]
        self._phone_number_id = stack.settings["meta"]["wa_phone_number_id"]
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=128)
        self._futures: list[concurrent.futures.Future] = []
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None

    def now(self) -> float:
        return time.monotonic() - self.started

    def new_delivery(self, number: int) -> Delivery:
        sender = f"{self.sender_prefix}{self.run:04d}{number:04d}"
        payload = meta_payloads.whatsapp_text(f"Bonjour, vos horaires ? ({number})", sender=sender,
                                              phone_number_id=self._phone_number_id)
        return self.signed(payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"], sender, payload)

    def signed(self, key: str, sender: str, payload: dict) -> Delivery:
        body = meta_payloads.encode(payload)
        return Delivery(key, sender, body, meta_payloads.sign(body, self._secret))

    def post_new_statuses(self) -> None:
        """A status for each send the double accepted since the last call, each retried until a 200."""
        try:
            requests = self.stack.meta.requests()
        except OSError:  # the double's control port did not answer: the next call posts them
            return
        for message_id, payload in statuses_for_accepted_sends(requests, self._phone_number_id):
            if message_id in self._statuses_posted:
                continue
            self._statuses_posted.add(message_id)
            delivery = self.signed(message_id, payload["entry"][0]["changes"][0]["value"]["statuses"][0]
                                   ["recipient_id"], payload)
            self.status_deliveries.append(delivery)
            self._futures.append(self._pool.submit(self.deliver_until_200, delivery))

    def post_once(self, delivery: Delivery) -> int:
        headers = {"Content-Type": "application/json", "X-Hub-Signature-256": delivery.signature}
        try:
            response, body = public_request(self.stack, "POST", "/v1/inbound/whatsapp", delivery.body, headers)
        except OSError:
            return -1
        if response.status == 200:
            delivery.accepted_with = body[:200].decode(errors="replace")
        return response.status

    def retry_delays(self) -> Iterator[float]:
        """The waits between one delivery's attempts: ``retry_seconds``, doubling, capped."""
        delay = self.retry_seconds
        while True:
            yield delay
            delay = min(delay * 2, self.max_retry_seconds)

    def deliver_until_200(self, delivery: Delivery) -> None:
        first = time.monotonic()
        delays = self.retry_delays()
        while True:
            status = self.post_once(delivery)
            delivery.answers.append((round(self.now(), 2), status))
            if status == 200 or time.monotonic() - first > self.give_up_after:
                return
            time.sleep(next(delays))

    def start(self) -> None:
        self.started = time.monotonic()
        if self.statuses:  # the sends of earlier runs are not this run's
            self._statuses_posted = {message_id for message_id, _ in
                                     statuses_for_accepted_sends(self.stack.meta.requests(), self._phone_number_id)}

        def loop() -> None:
            number = 0
            while not self._stop.is_set():
                delivery = self.new_delivery(number)
                self.deliveries.append(delivery)
                self._futures.append(self._pool.submit(self.deliver_until_200, delivery))
                number += 1
                if self.statuses and number % max(1, round(2 * self.rate)) == 0:  # every 2 s
                    self.post_new_statuses()
                self._stop.wait(max(0.0, number / self.rate - self.now()))

        self._loop = threading.Thread(target=loop, daemon=True)
        self._loop.start()

    def stop(self) -> None:
        """No new message; wait until every message got its 200 or gave up."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join()
        if self.statuses:
            self.post_new_statuses()
        concurrent.futures.wait(self._futures)
        self._pool.shutdown()


STORED_SQL = ("select i.msg_id, coalesce(o.status, '') from inbound_messages i "
              "left join outbound_messages o on o.inbound_message_id = i.id "
              "where i.msg_id = any(string_to_array(:'wamids', ','))")


def stored_rows(stack, wamids: list[str]) -> tuple[Counter, dict[str, str]]:
    """Inbound rows per wamid, and each stored message's reply status ('' when it has no reply row)."""
    if not wamids:
        return Counter(), {}
    query = psql(STORED_SQL, {"wamids": ",".join(wamids)})
    rows = stack.ssh(*container_exec("resto-postgres-1", query)).stdout.strip()
    stored: Counter = Counter()
    replies: dict[str, str] = {}
    for line in rows.splitlines():
        msg_id, _, status = line.partition("|")
        stored[msg_id] += 1
        replies[msg_id] = status
    return stored, replies


def graph_sends_per_recipient(stack) -> Counter:
    """Replies the Graph API double accepted (200), per recipient; refused or cut-off sends are not sends."""
    return Counter(r["body"].get("to") for r in stack.meta.requests()
                   if r["path"].endswith("/messages") and isinstance(r.get("body"), dict) and r.get("status") == 200)


def outcome(stack, sender: MetaLikeSender, *, fault_ended_at: float | None = None,
            settle_seconds: float = 180.0) -> Figures:
    """The figures once every stored message is replied (or ``settle_seconds`` have passed)."""
    wamids = [d.wamid for d in sender.deliveries]
    deadline = time.monotonic() + settle_seconds
    while True:
        stored, replies = stored_rows(stack, wamids)
        if all(replies.get(w) == "SENT" for w in stored) or time.monotonic() > deadline:
            break
        time.sleep(3)
    sends = graph_sends_per_recipient(stack)
    by_sender = {d.wamid: d.sender for d in sender.deliveries}
    replied = sum(1 for w in stored if replies.get(w) == "SENT" and sends[by_sender[w]] >= 1)
    duplicates = sum(max(0, sends[d.sender] - 1) for d in sender.deliveries)
    lost_200s = [d for d in sender.deliveries if d.answered_200 and d.wamid not in stored]
    lost = len(lost_200s)
    lost += sum(1 for w in stored if replies.get(w) != "SENT")
    after = [t for d in sender.deliveries for t, status in d.answers
             if status == 200 and fault_ended_at is not None and t >= fault_ended_at]
    return Figures(
        sent=len(sender.deliveries),
        answered_200=sum(1 for d in sender.deliveries if d.answered_200),
        non_200_answers=sum(1 for d in sender.deliveries for _, status in d.answers if status != 200),
        stored=len(stored),
        duplicates=duplicates + sum(max(0, n - 1) for n in stored.values()),
        replied=replied,
        lost=lost,
        first_200_after_fault=round(min(after) - fault_ended_at, 1) if after else None,
        non_200_by_status=tuple(sorted(Counter(status for d in sender.deliveries for _, status in d.answers
                                               if status != 200).items())),
        bodies_of_lost_200s=tuple(repr(d.accepted_with) for d in lost_200s[:5]),
    )
