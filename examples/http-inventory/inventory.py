#!/usr/bin/env python3
"""An inventory service that takes part in concord transactions over HTTP.

It keeps item quantities in SQLite (synchronous=FULL: a committed SQLite
transaction is on disk) and answers the HTTP participant contract that
concord's coordinator calls (see the README, "Writing an HTTP participant",
and the callbacks in docs/openapi.json):

  POST /prepare {xid, branch, coordinator, work, deadline, timeout_ms}
       -> 200 {"vote": "ready" | "abort" | "read_only", "reason": ...}
       READY promises that the branch's part is durable here and that it
       will be applied if COMMIT comes. The items it changes are held
       until the decision (a second branch touching one votes ABORT).
  POST /commit {xid, branch, coordinator}  -> 200 once applied
  POST /abort  {xid, branch, coordinator}  -> 200 once undone
       Duplicates are answered as the first one was. An unknown xid at
       commit or abort means there is nothing to do (it was finished and
       forgotten, or never prepared here): 200.

A READY branch that hears nothing for --inquire-ms asks the coordinator
(GET /v1/transactions/{xid}) and applies what was decided; no record there
means ABORTED (presumed abort: a READY branch is never forgotten by the
coordinator before it has acknowledged COMMIT).

The work of a branch: {"ops": [{"item": "widget", "delta": -2}, ...]}.
Quantities never go below zero.

Only the standard library is used, so the example runs anywhere Python 3
does. Test hooks: --delay-prepare-ms answers prepare slowly;
--die-on-commit kills the process (SIGKILL) when the first COMMIT arrives,
before applying it.
"""

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY_BYTES_MAX = 1 << 20


class Inventory:
    """The database and the rules; one lock keeps SQLite to one writer."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS items (
                name TEXT PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0));
            CREATE TABLE IF NOT EXISTS branches (
                xid TEXT NOT NULL, branch TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('ready', 'committed', 'aborted')),
                ops TEXT NOT NULL, prepared_at REAL NOT NULL,
                PRIMARY KEY (xid, branch));
            """
        )

    def seed(self, name, qty):
        with self.lock:
            self.db.execute(
                "INSERT INTO items (name, qty) VALUES (?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, qty),
            )

    def prepare(self, xid, branch, work):
        ops = parse_ops(work)
        with self.lock:
            row = self.db.execute(
                "SELECT state FROM branches WHERE xid = ? AND branch = ?", (xid, branch)
            ).fetchone()
            if row is not None:
                # A duplicate: the same answer as the first time.
                if row[0] == "aborted":
                    return {"vote": "abort", "reason": "aborted already"}
                return {"vote": "ready"}
            if not ops:
                return {"vote": "read_only"}
            held = self.held_items()
            for op in ops:
                if op["item"] in held:
                    return {"vote": "abort", "reason": f"{op['item']} is held by another transaction"}
            totals = {}
            for op in ops:
                totals[op["item"]] = totals.get(op["item"], 0) + op["delta"]
            for item, delta in totals.items():
                got = self.db.execute("SELECT qty FROM items WHERE name = ?", (item,)).fetchone()
                if got is None:
                    return {"vote": "abort", "reason": f"no item {item}"}
                if got[0] + delta < 0:
                    return {"vote": "abort", "reason": f"only {got[0]} of {item} left"}
            # READY: durable before the answer.
            self.db.execute(
                "INSERT INTO branches (xid, branch, state, ops, prepared_at) "
                "VALUES (?, ?, 'ready', ?, ?)",
                (xid, branch, json.dumps(ops), time.time()),
            )
            return {"vote": "ready"}

    def held_items(self):
        held = set()
        for (ops,) in self.db.execute("SELECT ops FROM branches WHERE state = 'ready'"):
            held.update(op["item"] for op in json.loads(ops))
        return held

    def finish(self, xid, branch, decision):
        """Apply COMMIT or ABORT. Returns (http status, answer)."""
        with self.lock:
            row = self.db.execute(
                "SELECT state, ops FROM branches WHERE xid = ? AND branch = ?", (xid, branch)
            ).fetchone()
            if row is None:
                return 200, {"result": "unknown xid: nothing to do"}
            state, ops = row
            want = "committed" if decision == "commit" else "aborted"
            if state == want:
                return 200, {"result": f"{want} already"}
            if state != "ready":
                return 409, {"error": f"the branch is {state}; cannot {decision} it"}
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if decision == "commit":
                    for op in json.loads(ops):
                        self.db.execute(
                            "UPDATE items SET qty = qty + ? WHERE name = ?",
                            (op["delta"], op["item"]),
                        )
                self.db.execute(
                    "UPDATE branches SET state = ? WHERE xid = ? AND branch = ?",
                    (want, xid, branch),
                )
                self.db.execute("COMMIT")
            except Exception:
                self.db.execute("ROLLBACK")
                raise
            return 200, {"result": want}

    def ready_before(self, cutoff):
        with self.lock:
            return self.db.execute(
                "SELECT xid, branch FROM branches WHERE state = 'ready' AND prepared_at < ?",
                (cutoff,),
            ).fetchall()

    def report(self):
        with self.lock:
            items = dict(self.db.execute("SELECT name, qty FROM items"))
            branches = {}
            for state, n in self.db.execute(
                "SELECT state, count(*) FROM branches GROUP BY state"
            ):
                branches[state] = n
            return {"items": items, "branches": branches}


def parse_ops(work):
    if work is None:
        return []
    if not isinstance(work, dict) or not isinstance(work.get("ops"), list):
        raise ValueError('work must be {"ops": [{"item": NAME, "delta": N}, ...]}')
    ops = []
    for op in work["ops"]:
        if (
            not isinstance(op, dict)
            or not isinstance(op.get("item"), str)
            or not isinstance(op.get("delta"), int)
            or isinstance(op.get("delta"), bool)
        ):
            raise ValueError('each op must be {"item": NAME, "delta": INTEGER}')
        ops.append({"item": op["item"], "delta": op["delta"]})
    return ops


def make_handler(inventory, options):
    state = {"commits_seen": 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            if options.verbose:
                sys.stderr.write("inventory: " + (fmt % args) + "\n")

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/items":
                return self.answer(200, inventory.report())
            if self.path == "/healthz":
                return self.answer(200, {"status": "ok"})
            self.answer(404, {"error": f"no route {self.path}"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_BYTES_MAX:
                return self.answer(413, {"error": "body too large"})
            try:
                call = json.loads(self.rfile.read(length) or b"{}")
                xid, branch = call["xid"], call["branch"]
                if not isinstance(xid, str) or not isinstance(branch, str):
                    raise ValueError("xid and branch must be strings")
            except (ValueError, KeyError, TypeError) as e:
                return self.answer(400, {"error": f"bad call: {e}"})
            if options.verbose:
                sys.stderr.write(
                    f"inventory: {self.path} {xid} traceparent={self.headers.get('traceparent')}\n"
                )
            if self.path == "/prepare":
                if options.delay_prepare_ms:
                    time.sleep(options.delay_prepare_ms / 1000)
                try:
                    return self.answer(200, inventory.prepare(xid, branch, call.get("work")))
                except ValueError as e:
                    return self.answer(200, {"vote": "abort", "reason": str(e)})
            if self.path in ("/commit", "/abort"):
                if self.path == "/commit" and options.die_on_commit:
                    state["commits_seen"] += 1
                    if state["commits_seen"] == 1:
                        sys.stderr.write(f"inventory: dying (SIGKILL) on COMMIT of {xid}\n")
                        sys.stderr.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                status, body = inventory.finish(xid, branch, self.path[1:])
                return self.answer(status, body)
            self.answer(404, {"error": f"no route {self.path}"})

    return Handler


def inquire_loop(inventory, options):
    """Ask the coordinator about READY branches that heard nothing."""
    token = None
    if options.api_token_file:
        with open(options.api_token_file) as f:
            token = f.readline().strip()
    while True:
        time.sleep(options.inquire_ms / 1000)
        for xid, branch in inventory.ready_before(time.time() - options.inquire_ms / 1000):
            request = urllib.request.Request(f"{options.coordinator_api}/v1/transactions/{xid}")
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    state = json.load(response)["state"]
            except urllib.error.HTTPError as e:
                state = "no_record" if e.code == 404 else None
            except (OSError, ValueError, KeyError):
                state = None  # the coordinator is down: ask again later
            if state in ("committed", "committed_waiting_for_acks"):
                inventory.finish(xid, branch, "commit")
            elif state in ("aborted", "no_record"):
                inventory.finish(xid, branch, "abort")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="host:port to serve on")
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    parser.add_argument(
        "--coordinator-api", help="the coordinator's HTTP API, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument("--api-token-file", help="bearer token for the coordinator's API")
    parser.add_argument("--seed", action="append", default=[], metavar="ITEM=QTY")
    parser.add_argument("--inquire-ms", type=int, default=2000)
    parser.add_argument("--delay-prepare-ms", type=int, default=0)
    parser.add_argument("--die-on-commit", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    options = parser.parse_args()

    inventory = Inventory(options.db)
    for seed in options.seed:
        name, _, qty = seed.partition("=")
        inventory.seed(name, int(qty))
    host, _, port = options.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), make_handler(inventory, options))
    server.daemon_threads = True
    if options.coordinator_api:
        threading.Thread(target=inquire_loop, args=(inventory, options), daemon=True).start()
    sys.stderr.write(f"inventory: serving on {options.listen}\n")
    sys.stderr.flush()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
