"""Helpers for scripts/bench.sh (and benches/held.py), run with the project
venv's python (botocore for SigV4 signing). Subcommands:

  ports N                          print N free TCP ports on 127.0.0.1
  config KIND --demo F --out F ... write a bench config derived from config/demo.toml
                                   (--set dotted.key=<TOML value> overrides, repeatable;
                                   --identities N adds N workload identities)
  lua --config F --out F           wrk script replaying one signed GetSecretValue
  call --config F [--out F]        one signed GetSecretValue; exit 1 unless 200
  read-all --config F --n N        GetSecretValue of bench/scale/0..N-1 once each
  replay --config F --n N [--conns C]
                                   exactly N copies of one signed GetSecretValue over C
                                   keep-alive connections; exit 1 unless all answer 200
  coldstart --bin B --demo F ...   time spawn -> admin /readyz 200, several runs
                                   (--identities N as for config)

Every failure exits non-zero with a message that says what was expected.
"""

import argparse
import asyncio
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# The demo secret every cache-hit row reads, and the Vault path of the Vault row.
DEMO_SECRET = "demo/api/key"
WORKLOAD_IDENTITY = "demo-app"
APPROVER_GROUP = "secops"

# Row 5: held requests. At the top of the policy so it decides bench/held/*
# before anything else; a long hold window so nothing times out while the
# harness waits, and the request TTL must be at least the window.
HOLD_RULE = {
    "name": "bench-hold",
    "identities": [WORKLOAD_IDENTITY],
    "operations": ["GetSecretValue"],
    "resources": ["bench/held/*"],
    "action": "hold",
    "approvers": APPROVER_GROUP,
    "approvals": 1,
    "hold_window": "10m",
    "request_ttl": "1h",
}

# Scale line: the secrets seeded into the dev store, and the rule that lets
# demo-app read them (appended last, so it changes no other row's rule walk).
SCALE_PREFIX = "bench/scale/"
SCALE_RULE = {
    "name": "bench-scale-read",
    "identities": [WORKLOAD_IDENTITY],
    "fronts": ["aws"],
    "operations": ["GetSecretValue"],
    "resources": [SCALE_PREFIX + "*"],
    "action": "allow",
}


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# --- TOML ------------------------------------------------------------------
# tomllib reads but cannot write; the configs are plain (strings, integers,
# booleans, lists, tables, arrays of tables), so a small writer is enough.


def _toml_key(k):
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic strings
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v):
    return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)


def dump_toml(doc):
    out = []

    def table(path, d, header):
        plain = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_table_array(v)}
        # A table that only holds sub-tables needs no header of its own.
        if header and (plain or len(plain) == len(d)):
            out.append(header)
        for k, v in plain.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in d.items():
            sub = f"{path}.{_toml_key(k)}" if path else _toml_key(k)
            if isinstance(v, dict):
                out.append("")
                table(sub, v, f"[{sub}]")
            elif _is_table_array(v):
                for item in v:
                    out.append("")
                    table(sub, item, f"[[{sub}]]")

    table("", doc, None)
    return "\n".join(out).lstrip("\n") + "\n"


# --- configs ----------------------------------------------------------------


def apply_overrides(cfg, overrides):
    """`dotted.key=<TOML value>` items (e.g. `audit.mode="batched"`), applied last."""
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            die(f"override {item!r}: expected dotted.key=<TOML value>, e.g. audit.mode=\"batched\"")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError as e:
            die(f"override {item!r}: the value is not TOML ({e}); quote strings: audit.mode=\"batched\"")
        *parents, leaf = key.strip().split(".")
        table = cfg
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value


def extra_identities(n):
    """n more workload identities, each with its own access key and Vault
    token (what a deployment with many services configures). They are in
    group "demo" and named by no rule: they show what identities cost to
    hold and to look up, not what rules cost."""
    return [
        {
            "name": f"bench-id-{i}",
            "groups": ["demo"],
            "aws_access_key_id": f"AKIABENCH{i:011d}",
            "aws_secret_access_key": f"bench-secret-key-{i:06d}",
            "vault_token": f"kg-bench-{i:06d}-token",
        }
        for i in range(n)
    ]


def bench_config(demo_path, kind, listen, admin, state_dir, bare_port=None, seed=0, overrides=None, identities=0):
    """demo.toml with the changes each bench instance needs.

    kind: "hit"  the cache-hit / held / cold-start instance (dev store)
          "miss" AWS upstream = the bare hyper server, cache off
          "scale" hit plus `seed` extra dev-store secrets and a cache that fits them
    """
    with open(demo_path, "rb") as f:
        cfg = tomllib.load(f)
    server = cfg.setdefault("server", {})
    server["listen"] = f"127.0.0.1:{listen}"
    server["admin_listen"] = f"127.0.0.1:{admin}"
    server["state"] = os.path.join(state_dir, "keygate.db")
    # The held rows keep up to 10,000 (+ warm-up) requests pending at once,
    # each on its own connection: lift the caps that protect production.
    cfg.setdefault("gate", {}).update(max_pending_per_identity=100000, max_pending_total=100000)
    server.setdefault("limits", {})["max_connections"] = 120000
    policy = cfg.setdefault("policy", {})
    policy["rules"] = [dict(HOLD_RULE)] + policy.get("rules", [])
    if kind == "miss":
        if bare_port is None:
            die("config miss needs --bare-port")
        # kind = "aws" refuses dev_store tables; keygate's own SDK credentials
        # come from the environment (dummies set by bench.sh).
        cfg["upstream"] = {
            "kind": "aws",
            "region": "us-east-1",
            "endpoint": f"http://127.0.0.1:{bare_port}",
        }
        cfg.setdefault("cache", {})["ttl"] = "0s"
        cfg.pop("dev_store", None)
    elif kind == "scale":
        store = cfg.setdefault("dev_store", {})
        store["secrets"] = store.get("secrets", []) + [
            # A typical small JSON credential (about 60 bytes).
            {"name": f"{SCALE_PREFIX}{i}", "value": json.dumps({"username": f"svc-{i:06d}", "password": f"pw-{i:06d}-0123456789abcdef"})}
            for i in range(seed)
        ]
        cache = cfg.setdefault("cache", {})
        cache["ttl"] = "1h"  # nothing may expire while RSS is read
        cache["max_entries"] = max(cache.get("max_entries", 0), 2 * seed)
        policy["rules"].append(dict(SCALE_RULE))
    elif kind != "hit":
        die(f"unknown config kind {kind!r} (hit, miss, scale)")
    cfg["identities"] = cfg.get("identities", []) + extra_identities(identities)
    apply_overrides(cfg, overrides)
    return cfg


class Target:
    """What a client needs to know about one keygate instance, read back from its config."""

    def __init__(self, config_path):
        with open(config_path, "rb") as f:
            cfg = tomllib.load(f)
        self.workload = cfg["server"]["listen"]
        self.admin = cfg["server"]["admin_listen"]
        self.region = cfg["server"].get("region", "us-east-1")
        ident = next((i for i in cfg.get("identities", []) if i.get("name") == WORKLOAD_IDENTITY), None)
        if ident is None:
            die(f"{config_path}: no identity {WORKLOAD_IDENTITY!r} (the bench signs as it)")
        self.akid = ident["aws_access_key_id"]
        self.secret_key = _inline(ident["aws_secret_access_key"], "aws_secret_access_key")
        self.vault_token = ident.get("vault_token")
        approver = next((a for a in cfg.get("approvers", []) if APPROVER_GROUP in a.get("groups", []) and "token" in a), None)
        if approver is None:
            die(f"{config_path}: no approver in group {APPROVER_GROUP!r} with an inline token")
        self.admin_token = _inline(approver["token"], "approver token")

    def host_port(self, which):
        host, port = getattr(self, which).rsplit(":", 1)
        return host, int(port)


def _inline(value, what):
    if value.startswith("env:"):
        v = os.environ.get(value[4:])
        if v is None:
            die(f"{what} is {value} but that variable is not set")
        return v
    if value.startswith("file:"):
        with open(value[5:]) as f:
            return f.read().strip()
    return value


# --- signing and raw HTTP ---------------------------------------------------


def sign_get_secret_value(target, secret_id):
    """Body and headers of a SigV4-signed GetSecretValue (valid 5 minutes)."""
    body = json.dumps({"SecretId": secret_id})
    req = AWSRequest(
        method="POST",
        url=f"http://{target.workload}/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "secretsmanager.GetSecretValue",
        },
    )
    SigV4Auth(Credentials(target.akid, target.secret_key), "secretsmanager", target.region).add_auth(req)
    return body, dict(req.headers.items())


def raw_request(host, method, path, headers, body=b""):
    """The bytes of one HTTP/1.1 request on a keep-alive connection."""
    if isinstance(body, str):
        body = body.encode()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader):
    """(status, headers, body) of one HTTP/1.1 response from an asyncio stream."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.read()
    return status, headers, body


def get_secret_value(conn, target, secret_id):
    """One signed GetSecretValue over a keep-alive http.client connection."""
    body, headers = sign_get_secret_value(target, secret_id)
    conn.request("POST", "/", body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


# --- subcommands ------------------------------------------------------------


def cmd_ports(args):
    print(" ".join(str(p) for p in _free_ports(args.n)))


def cmd_config(args):
    cfg = bench_config(args.demo, args.kind, args.listen, args.admin, args.state_dir, args.bare_port, args.seed, args.set, args.identities)
    os.makedirs(args.state_dir, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(f"# generated by benches/kgbench.py from {args.demo} ({args.kind})\n")
        f.write(dump_toml(cfg))


def cmd_lua(args):
    target = Target(args.config)
    body, headers = sign_get_secret_value(target, args.secret)
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")


def cmd_call(args):
    target = Target(args.config)
    host, port = target.host_port("workload")
    conn = http.client.HTTPConnection(host, port, timeout=30)
    status, body = get_secret_value(conn, target, args.secret)
    if status != 200:
        die(f"GetSecretValue {args.secret} via {target.workload}: HTTP {status}, expected 200: {body[:500]!r}")
    if args.out:
        with open(args.out, "wb") as f:
            f.write(body)


def cmd_read_all(args):
    """Read each seeded secret once so that all of them are in keygate's cache."""
    target = Target(args.config)
    host, port = target.host_port("workload")
    conn = http.client.HTTPConnection(host, port, timeout=30)
    for i in range(args.n):
        status, body = get_secret_value(conn, target, f"{SCALE_PREFIX}{i}")
        if status != 200:
            die(f"GetSecretValue {SCALE_PREFIX}{i}: HTTP {status}, expected 200: {body[:300]!r}")


def cmd_replay(args):
    """A fixed number of requests (wrk runs for a fixed time): per-request counts
    (instructions, allocations) need the same N before and after a change."""
    target = Target(args.config)
    host, port = target.host_port("workload")
    body, headers = sign_get_secret_value(target, args.secret)
    request = raw_request(target.workload, "POST", "/", headers, body)
    per_conn = [args.n // args.conns + (1 if i < args.n % args.conns else 0) for i in range(args.conns)]

    async def one_connection(count):
        reader, writer = await asyncio.open_connection(host, port)
        bad = []
        for _ in range(count):
            writer.write(request)
            status, _, answer = await read_response(reader)
            if status != 200:
                bad.append((status, answer[:300]))
        writer.close()
        return bad

    async def run():
        return await asyncio.gather(*(one_connection(c) for c in per_conn))

    bad = [b for conn in asyncio.run(run()) for b in conn]
    if bad:
        die(f"replay: {len(bad)} of {args.n} requests did not answer 200; first: {bad[0]!r}")


def _try_readyz(port):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/readyz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def cmd_coldstart(args):
    """Spawn keygate on a fresh state dir, poll /readyz every 5 ms until 200."""
    times = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.work) as state:
            listen, admin = (int(p) for p in _free_ports(2))
            config = os.path.join(state, "keygate.toml")
            with open(config, "w") as f:
                f.write(dump_toml(bench_config(args.demo, "hit", listen, admin, state, overrides=args.set, identities=args.identities)))
            log = open(os.path.join(args.work, f"coldstart-{run}.log"), "wb")
            env = dict(os.environ, KEYGATE_LOG="warn")
            start = time.perf_counter()
            proc = subprocess.Popen([args.bin, "serve", "--config", config], stderr=log, env=env)
            try:
                while not _try_readyz(admin):
                    if proc.poll() is not None:
                        die(f"keygate exited with {proc.returncode} before it was ready (see {log.name})")
                    if time.perf_counter() - start > 30:
                        die(f"keygate not ready after 30 s (see {log.name})")
                    time.sleep(0.005)
                times.append((time.perf_counter() - start) * 1000)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log.close()
    print(json.dumps({"median_ms": statistics.median(times), "runs_ms": [round(t, 1) for t in times]}))


def _free_ports(n):
    """n distinct free ports: all sockets stay bound until every port is picked."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)

    s = sub.add_parser("config")
    s.add_argument("kind", choices=["hit", "miss", "scale"])
    s.add_argument("--demo", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--listen", type=int, required=True)
    s.add_argument("--admin", type=int, required=True)
    s.add_argument("--state-dir", required=True)
    s.add_argument("--bare-port", type=int)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--identities", type=int, default=0, help="extra workload identities")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    s.set_defaults(fn=cmd_config)

    s = sub.add_parser("lua")
    s.add_argument("--config", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--secret", default=DEMO_SECRET)
    s.set_defaults(fn=cmd_lua)

    s = sub.add_parser("call")
    s.add_argument("--config", required=True)
    s.add_argument("--out")
    s.add_argument("--secret", default=DEMO_SECRET)
    s.set_defaults(fn=cmd_call)

    s = sub.add_parser("read-all")
    s.add_argument("--config", required=True)
    s.add_argument("--n", type=int, required=True)
    s.set_defaults(fn=cmd_read_all)

    s = sub.add_parser("replay")
    s.add_argument("--config", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--conns", type=int, default=2)
    s.add_argument("--secret", default=DEMO_SECRET)
    s.set_defaults(fn=cmd_replay)

    s = sub.add_parser("coldstart")
    s.add_argument("--bin", required=True)
    s.add_argument("--demo", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--runs", type=int, default=5)
    s.add_argument("--identities", type=int, default=0, help="extra workload identities")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override, repeatable")
    s.set_defaults(fn=cmd_coldstart)

    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
