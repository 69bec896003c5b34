"""Row 5 of scripts/bench.sh: N requests held at once, and how fast an
approval releases one.

Against a running keygate whose policy holds GetSecretValue on bench/held/*
(the `bench-hold` rule of benches/kgbench.py):

1. warm up: a few allowed reads and a small batch of held requests that are
   approved, so the hold path's one-time allocations are in the baseline;
2. read keygate's VmRSS, open N connections and send N distinct signed
   GetSecretValue requests for bench/held/<i>;
3. wait until the admin API's /readyz reports N pending; read VmRSS again:
   the difference is what N held requests cost;
4. approve a sample one by one over one keep-alive admin connection,
   timing each from just before the POST to the moment the held socket gets
   its answer. The dev store has no bench/held/<i>, so the released request
   answers 400 ResourceNotFoundException: proof that it was released and
   executed (a timeout or denial would be a 403 AccessDeniedException).

Prints one JSON object on stdout; progress goes to stderr.

    python benches/held.py --config bench.toml --pid PID --n 10000 --approve 1000
"""

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kgbench import DEMO_SECRET, Target, die, raw_request, read_response, sign_get_secret_value  # noqa: E402

HELD_PREFIX = "bench/held/"
# Connections opened at once: keeps the connect burst under the listen
# backlog, so no SYN is dropped and retried a second later.
CONNECT_CONCURRENCY = 256


def log(msg):
    print(f"held: {msg}", file=sys.stderr, flush=True)


def vm_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    die(f"no {field} in /proc/{pid}/status")


def percentile(values, p):
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        die(f"{need} file descriptors needed but the hard limit is {hard}; raise it or lower --n")
    if soft == resource.RLIM_INFINITY or soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else hard, hard))


class AdminClient:
    """One persistent keep-alive connection to the admin API."""

    def __init__(self, target):
        self.target = target
        self.host = target.admin

    async def connect(self):
        host, port = self.target.host_port("admin")
        self.reader, self.writer = await asyncio.open_connection(host, port)

    async def call(self, method, path, body=None, auth=True):
        headers = {"Authorization": f"Bearer {self.target.admin_token}"} if auth else {}
        data = b""
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        self.writer.write(raw_request(self.host, method, path, headers, data))
        status, _, resp = await read_response(self.reader)
        try:
            return status, json.loads(resp) if resp else None
        except ValueError:
            die(f"{method} {path}: HTTP {status} with a body that is not JSON: {resp[:300]!r}")

    async def pending(self):
        status, body = await self.call("GET", "/readyz", auth=False)
        if status != 200:
            die(f"GET /readyz: HTTP {status}: {body}")
        return body["pending"]

    async def pending_ids(self, limit):
        """(id, resource) of up to `limit` pending requests, newest first."""
        status, body = await self.call("GET", f"/admin/v1/requests?state=pending&limit={limit}")
        if status != 200:
            die(f"listing pending requests: HTTP {status}: {body}")
        return [(r["id"], r["resources"][0]) for r in body["requests"]]

    async def approve(self, request_id):
        status, body = await self.call("POST", f"/admin/v1/requests/{request_id}/approve", {"comment": "bench"})
        if status != 200:
            die(f"approving {request_id}: HTTP {status}, expected 200: {body}")


class Held:
    """One open connection with a request on it, waiting for its answer."""

    def __init__(self, name, writer, task):
        self.name = name
        self.writer = writer
        self.task = task  # -> (status, body, perf_counter() when the answer arrived)


async def answer(reader):
    status, _, body = await read_response(reader)
    return status, body, time.perf_counter()


async def send_held(target, requests):
    """Open one connection per pre-signed request, send it, and leave it waiting."""
    host, port = target.host_port("workload")
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(name, data):
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as e:
                die(f"connecting to {target.workload} for {name}: {e}")
            writer.write(data)
            await writer.drain()
        return Held(name, writer, asyncio.create_task(answer(reader)))

    return await asyncio.gather(*(one(name, data) for name, data in requests))


def sign_all(target, names):
    out = []
    for name in names:
        body, headers = sign_get_secret_value(target, name)
        out.append((name, raw_request(target.workload, "POST", "/", headers, body)))
    return out


def fail_if_answered(held):
    """A held request must not be answered before it is approved."""
    for h in held:
        if h.task.done():
            exc = h.task.exception()
            if exc is not None:
                die(f"{h.name}: connection failed while it should be held: {exc!r}")
            status, body, _ = h.task.result()
            die(f"{h.name} was answered before any approval: HTTP {status}: {body[:300]!r}")


async def wait_pending(admin, n, held, timeout):
    start = time.perf_counter()
    last = -1
    while True:
        fail_if_answered(held)
        pending = await admin.pending()
        if pending == n:
            return time.perf_counter() - start
        if pending > n:
            die(f"/readyz reports {pending} pending, expected {n}: is another client using this keygate?")
        if pending != last:
            last = pending
            log(f"{pending}/{n} pending")
        if time.perf_counter() - start > timeout:
            die(f"only {pending} of {n} requests pending after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def release(admin, held_by_name, count):
    """Approve `count` held requests one at a time; return release latencies (s)."""
    latencies, approve_calls = [], []
    while len(latencies) < count:
        batch = await admin.pending_ids(min(1000, count - len(latencies)))
        if not batch:
            die(f"no pending request left after {len(latencies)} approvals, expected {count}")
        for request_id, name in batch:
            h = held_by_name.get(name)
            if h is None:
                die(f"pending request {request_id} is for {name!r}, which this run did not send")
            start = time.perf_counter()
            await admin.approve(request_id)
            approved = time.perf_counter()
            try:
                status, body, arrived = await asyncio.wait_for(h.task, timeout=30)
            except asyncio.TimeoutError:
                die(f"{name}: no answer within 30 s of its approval")
            except (OSError, asyncio.IncompleteReadError) as e:
                die(f"{name}: connection failed instead of an answer after approval: {e!r}")
            if status != 400 or b"ResourceNotFoundException" not in body:
                die(f"{name}: after approval expected 400 ResourceNotFoundException (released, then "
                    f"not found in the dev store), got HTTP {status}: {body[:300]!r}")
            latencies.append(arrived - start)
            approve_calls.append(approved - start)
    return latencies, approve_calls


async def warm_up(target, admin, count):
    # A few allowed reads: the data path and the cache.
    host, port = target.host_port("workload")
    reader, writer = await asyncio.open_connection(host, port)
    for _ in range(20):
        body, headers = sign_get_secret_value(target, DEMO_SECRET)
        writer.write(raw_request(target.workload, "POST", "/", headers, body))
        status, _, resp = await read_response(reader)
        if status != 200:
            die(f"warm-up GetSecretValue {DEMO_SECRET}: HTTP {status}: {resp[:300]!r}")
    writer.close()
    # A small batch through hold -> pending -> approve -> release.
    held = await send_held(target, sign_all(target, [f"{HELD_PREFIX}warmup-{i}" for i in range(count)]))
    await wait_pending(admin, count, held, timeout=60)
    await release(admin, {h.name: h for h in held}, count)
    for h in held:
        h.writer.close()


async def run(args):
    target = Target(args.config)
    raise_nofile(args.n + 256)
    admin = AdminClient(target)
    await admin.connect()
    if await admin.pending() != 0:
        die("keygate already has pending requests; the held bench needs a fresh instance")

    warm = max(10, min(100, args.n // 10))
    log(f"warm-up: {warm} held requests, approved")
    await warm_up(target, admin, warm)
    names = [f"{HELD_PREFIX}{i}" for i in range(args.n)]
    log(f"signing {args.n} requests")
    requests = sign_all(target, names)
    await asyncio.sleep(1)  # let the warm-up's transient allocations be returned
    rss_before = vm_kib(args.pid, "VmRSS")

    log(f"sending {args.n} requests on {args.n} connections")
    start = time.perf_counter()
    held = await send_held(target, requests)
    sent = time.perf_counter() - start
    pending_after = await wait_pending(admin, args.n, held, args.timeout)
    rss_pending = vm_kib(args.pid, "VmRSS")
    log(f"{args.n} pending {sent + pending_after:.1f} s after the first send; "
        f"VmRSS {rss_before} -> {rss_pending} KiB")

    count = min(args.approve, args.n)
    log(f"approving {count} one by one")
    latencies, approve_calls = await release(admin, {h.name: h for h in held}, count)
    for h in held:
        h.writer.close()

    us = lambda s: round(s * 1e6, 1)  # noqa: E731
    extra = rss_pending - rss_before
    print(json.dumps({
        "n": args.n,
        "approved": count,
        "rss_before_kib": rss_before,
        "rss_pending_kib": rss_pending,
        "extra_kib": extra,
        "bytes_per_pending": round(extra * 1024 / args.n),
        "send_s": round(sent, 2),
        "all_pending_s": round(sent + pending_after, 2),
        "release_p50_us": us(percentile(latencies, 50)),
        "release_p99_us": us(percentile(latencies, 99)),
        "release_max_us": us(max(latencies)),
        "approve_call_p50_us": us(statistics.median(approve_calls)),
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the generated config keygate runs with")
    p.add_argument("--pid", type=int, required=True, help="keygate's process id (for VmRSS)")
    p.add_argument("--n", type=int, default=10_000, help="requests held at once")
    p.add_argument("--approve", type=int, default=1000, help="how many to approve (and time)")
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for all N to be pending")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
