#!/usr/bin/env python3
"""Move money between two PostgreSQL databases in one concord transaction.

The application-branch way in (README, "PostgreSQL participants"): the
application runs its own SQL on its own connections, prepares each
database's transaction under a gid concord gave it, registers the
branches, and lets concord decide. It talks to the coordinator over its
HTTP API (standard library only) and to PostgreSQL with psycopg 3:

  1. POST /v1/transactions {}                      -> xid, coordinator, lifetime_ms
  2. on each database: BEGIN; UPDATE ...; PREPARE TRANSACTION '<gid>'
     (psycopg's tpc_begin(gid) / tpc_prepare())
  3. POST /v1/transactions/{xid}/branches          {"branches": [{"participant":
                                                   "bank-a", "work": {"gids": [gid]}}, ...]}
  4. POST /v1/transactions/{xid}/commit            -> committed or aborted

The gid is cc1:<coordinator>:<participant>:<xid>:<branch>:<hold_s>, where
hold_s is how long the prepared transaction may wait for concord's PREPARE
(the transaction's lifetime plus 5 s). The `concord pg-participant` of each
database checks the gid is prepared, votes, and runs COMMIT PREPARED or
ROLLBACK PREPARED. Whatever this program does after step 2 (crash,
lose the network, forget to register), nothing stays prepared: a gid that
was never registered is rolled back by the participant's reconciliation
once its hold has passed.

Prints one JSON line: {"xid", "outcome": "committed" | "aborted", "reason"}.
Exit status 0 when concord gave an outcome, 1 when this program gave up.
Test hook: --crash-after-prepare exits (status 3) after step 2, before
registering anything: the orphan case.
"""

import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.request

import psycopg

HOLD_MARGIN_S = 5


class Concord:
    """The coordinator's HTTP API, as much of it as this needs."""

    def __init__(self, base, token=None):
        self.base = base.rstrip("/")
        self.token = token

    def post(self, path, body):
        request = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            # 4xx/5xx carry a JSON error body: pass it on.
            return e.code, json.loads(e.read() or b"null")


def gid(opened, participant, branch):
    hold_s = math.ceil(opened["lifetime_ms"] / 1000) + HOLD_MARGIN_S
    return f"cc1:{opened['coordinator']}:{participant}:{opened['xid']}:{branch}:{hold_s}"


def prepare(dsn, the_gid, account, delta):
    """BEGIN; the UPDATE; PREPARE TRANSACTION. Returns None once prepared,
    or why the branch cannot be (then nothing is left prepared)."""
    conn = psycopg.connect(dsn)
    try:
        conn.tpc_begin(the_gid)
        # Never below zero: an overdraft touches no row.
        cur = conn.execute(
            "UPDATE accounts SET balance = balance + %s WHERE id = %s AND balance + %s >= 0",
            (delta, account, delta),
        )
        if cur.rowcount != 1:
            conn.tpc_rollback()
            return f"account {account} is missing or would go below zero"
        conn.tpc_prepare()
        return None
    except psycopg.Error as e:
        return f"{type(e).__name__}: {e}"
    finally:
        # A prepared transaction outlives its connection: that is the point.
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concord", required=True, help="coordinator HTTP API, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("CONCORD_TOKEN"), help="bearer token, if the API has one")
    parser.add_argument("--from", dest="source", required=True, metavar="PARTICIPANT=DSN",
                        help="the paying database: its concord pg-participant's name and its DSN")
    parser.add_argument("--to", dest="target", required=True, metavar="PARTICIPANT=DSN")
    parser.add_argument("--from-account", required=True)
    parser.add_argument("--to-account", required=True)
    parser.add_argument("--amount", type=int, required=True)
    parser.add_argument("--lifetime-ms", type=int, default=60000,
                        help="abort unless committed within this (and the gids' hold)")
    parser.add_argument("--crash-after-prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    def split(value):
        name, sep, dsn = value.partition("=")
        if not sep or not name or not dsn:
            parser.error(f"{value!r} is not PARTICIPANT=DSN")
        return name, dsn

    (source, source_dsn), (target, target_dsn) = split(args.source), split(args.target)
    concord = Concord(args.concord, args.token)

    status, opened = concord.post("/v1/transactions", {"lifetime_ms": args.lifetime_ms})
    if status != 201:
        print(f"cannot open a transaction: {status} {opened}", file=sys.stderr)
        return 1
    xid = opened["xid"]
    branches = [
        (source, source_dsn, args.from_account, -args.amount, "debit"),
        (target, target_dsn, args.to_account, args.amount, "credit"),
    ]
    registered = []
    refusal = None
    for participant, dsn, account, delta, label in branches:
        the_gid = gid(opened, participant, label)
        refusal = prepare(dsn, the_gid, account, delta)
        if refusal:
            break
        registered.append({"participant": participant, "work": {"gids": [the_gid]}})

    if args.crash_after_prepare:
        os._exit(3)

    if refusal:
        # What is prepared is registered, so the abort rolls it back now
        # rather than reconciliation after the hold.
        if registered:
            concord.post(f"/v1/transactions/{xid}/branches", {"branches": registered})
        status, body = concord.post(f"/v1/transactions/{xid}/abort", {})
        print(json.dumps({"xid": xid, "outcome": "aborted", "reason": refusal}))
        return 0 if status in (200, 404) else 1

    status, body = concord.post(f"/v1/transactions/{xid}/branches", {"branches": registered})
    if status != 200:
        print(f"cannot register the branches: {status} {body}", file=sys.stderr)
        return 1
    status, body = concord.post(f"/v1/transactions/{xid}/commit", {"timeout_ms": 20000})
    if status != 200:
        print(f"no outcome yet: {status} {body}", file=sys.stderr)
        return 1
    print(json.dumps({"xid": xid, "outcome": body.get("state"), "reason": body.get("reason")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
