#!/usr/bin/python3
"""dlq_consumer: consume the replays of one dlq queue from application code.

The loop every dlq consumer runs (README.md, "Consuming replays from your
application"):

    dlq_listen(queue)                         register as a live consumer, LISTEN
    loop:
        dlq_claim(queue, batch, visibility)   lease a batch of replaying messages
        handle each message                   your code
        dlq_ack(ids) / dlq_nack(id, error)    close it, or end the attempt
        wait for a NOTIFY (or a poll timeout) when the batch was not full

Delivery is at least once: a message whose lease runs out before it is
acked (the consumer died, the connection dropped, the server failed over)
is claimed again, so handlers must be idempotent.  Each message is acked
exactly once.

Configuration, all from the environment:
    PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, ...   libpq, as psql reads them
    DLQ_QUEUE             the queue to consume (required)
    DLQ_BATCH_SIZE        messages per claim, 1-1000 (default 100)
    DLQ_VISIBILITY        lease of a claim, a PostgreSQL interval (default '5 min')
    DLQ_POLL_SECONDS      wait at most this long for a notification (default 10)
    DLQ_RECONNECT_MAX     longest pause between reconnection attempts, s (default 30)
    DLQ_HANDLER           module:function called as f(payload, message) for each
                          message; returning is success, an exception is a nack
                          with its text (and its .pgcode, if any, as SQLSTATE).
                          Default: print the message as one JSON line.

The role needs dlq_operator (dlq_listen is granted to it alone).  SIGTERM or
SIGINT: the batch in hand is finished and acked, then the consumer exits 0.
Requires psycopg2 (Debian: python3-psycopg2).
"""

import importlib
import json
import logging
import os
import select
import signal
import sys
import time

import psycopg2
import psycopg2.extras

log = logging.getLogger("dlq_consumer")
stopping = False
# A signal wakes the select() in Consumer.wait through this pipe.
wakeup_r, wakeup_w = os.pipe()
os.set_blocking(wakeup_w, False)


def on_signal(signum, frame):
    global stopping
    stopping = True
    log.info("signal %d: stopping after the batch in hand", signum)


def default_handler(payload, message):
    print(json.dumps({"message_id": message["message_id"], "queue": message["queue"],
                      "attempts": message["attempts"], "payload": payload}), flush=True)


def load_handler(spec):
    if not spec:
        return default_handler
    module, _, name = spec.partition(":")
    if not name:
        raise SystemExit("DLQ_HANDLER must be module:function, not %r" % spec)
    return getattr(importlib.import_module(module), name)


class Consumer:
    def __init__(self, queue, batch_size, visibility, poll_seconds, handler):
        self.queue = queue
        self.batch_size = batch_size
        self.visibility = visibility
        self.poll_seconds = poll_seconds
        self.handler = handler
        self.conn = None

    def connect(self):
        self.conn = psycopg2.connect("application_name=dlq_consumer")
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT dlq_listen(%s)", (self.queue,))
            channel = cur.fetchone()[0]
        log.info("listening on %s for queue %s", channel, self.queue)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
            self.conn = None

    def claim(self):
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT message_id, queue, payload, attempts"
                        "  FROM dlq_claim(%s, %s, %s::interval)",
                        (self.queue, self.batch_size, self.visibility))
            return cur.fetchall()

    def handle(self, messages):
        """Run the handler on each message; ack the successes in one call."""
        done = []
        with self.conn.cursor() as cur:
            for m in messages:
                try:
                    self.handler(m["payload"], m)
                    done.append(m["message_id"])
                except Exception as e:  # the handler's failure is this message's failure
                    code = getattr(e, "pgcode", None)
                    cur.execute("SELECT dlq_nack(%s, %s, %s)",
                                (m["message_id"], ("%s: %s" % (type(e).__name__, e))[:4000],
                                 code if code and len(code) == 5 else None))
                    log.warning("message %d failed: %s -> %s", m["message_id"], e,
                                cur.fetchone()[0])
            if done:
                cur.execute("SELECT dlq_ack(%s::bigint[])", (done,))
                log.info("acked %d of %d messages", cur.fetchone()[0], len(messages))

    def wait(self):
        """Sleep until a notification, the poll timeout or a signal."""
        ready = select.select([self.conn, wakeup_r], [], [], self.poll_seconds)[0]
        if self.conn in ready:
            self.conn.poll()
            self.conn.notifies.clear()

    def run_once(self):
        messages = self.claim()
        if messages:
            self.handle(messages)
        if len(messages) < self.batch_size and not stopping:
            self.wait()


def main():
    logging.basicConfig(level=os.environ.get("DLQ_LOG_LEVEL", "INFO"),
                        format="%(asctime)s dlq_consumer %(levelname)s %(message)s",
                        stream=sys.stderr)
    queue = os.environ.get("DLQ_QUEUE")
    if not queue:
        raise SystemExit("DLQ_QUEUE is not set")
    consumer = Consumer(queue,
                        int(os.environ.get("DLQ_BATCH_SIZE", "100")),
                        os.environ.get("DLQ_VISIBILITY", "5 min"),
                        float(os.environ.get("DLQ_POLL_SECONDS", "10")),
                        load_handler(os.environ.get("DLQ_HANDLER")))
    reconnect_max = float(os.environ.get("DLQ_RECONNECT_MAX", "30"))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.set_wakeup_fd(wakeup_w)

    pause = 0.5
    while not stopping:
        try:
            if consumer.conn is None:
                consumer.connect()
                pause = 0.5
            consumer.run_once()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
            # Connection lost, server restarting, failover: what was claimed and
            # not acked comes back when its lease ends.  Reconnect and listen again.
            log.warning("connection lost (%s); reconnecting in %.1f s",
                        str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                        pause)
            consumer.close()
            time.sleep(pause)
            pause = min(pause * 2, reconnect_max)
    consumer.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
