"""`make demo`: the connector end to end against the bundled emulator, with a crash.

1. start the emulator and write a configuration (SQLite state, file sink, secrets in a
   protected file referenced as ${secret:...});
2. publish a realistic flow over REST: Account creates, updates and deletes, and
   Order_Placed__e platform events;
3. run the connector, SIGKILL it mid-stream, start it again, let it catch up, stop it with
   SIGTERM;
4. verify: every published event is in demo-output/records.jsonl, none twice, and each
   checkpoint equals the stream's last replayId.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"
RECORDS = OUT / "records.jsonl"
CONFIG = OUT / "sfstream.yaml"
CHANNELS = {
    "/data/AccountChangeEvent": "sf.event.account_changes",
    "/event/Order_Placed__e": "sf.event.order_placed",
}
SFSTREAM = [sys.executable, "-m", "sfstream.cli"]
START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:5.1f}s] {message}", flush=True)


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [*SFSTREAM, "emulator", "--port", "0", "--poll-timeout", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return process, match.group(1)


def write_config(url: str) -> None:
    secrets = OUT / "secrets.env"
    secrets.write_text(
        "SF_CLIENT_SECRET=sfstream-emulator-client-secret\n"
        "SF_REFRESH_TOKEN=sfstream-emulator-refresh-token\n"
    )
    secrets.chmod(0o600)
    CONFIG.write_text(f"""\
salesforce:
  login_url: {url}
  client_id: sfstream-emulator-client-id
  client_secret: ${{secret:SF_CLIENT_SECRET}}
  refresh_token: ${{secret:SF_REFRESH_TOKEN}}
secrets:
  backend: file
  file: secrets.env
streams:
  - channel: /data/AccountChangeEvent
    initial_replay: earliest
  - channel: /event/Order_Placed__e
    key_field: Order_Number__c
    initial_replay: earliest
state:
  path: state.db
sink:
  type: file
  path: records.jsonl
batch:
  max_records: 100
  max_wait_ms: 100
runtime:
  summary_interval_s: 5
logging:
  format: json
""")


def run_connector(log_name: str) -> subprocess.Popen[bytes]:
    log = (OUT / log_name).open("wb")
    return subprocess.Popen(
        [*SFSTREAM, "run", "--config", str(CONFIG)], stdout=log, stderr=subprocess.STDOUT
    )


def records_on_disk() -> list[dict[str, Any]]:
    if not RECORDS.exists():
        return []
    found = []
    for line in RECORDS.read_bytes().splitlines():
        if line.strip():
            message = orjson.loads(line)
            if message.get("type") == "RECORD":
                found.append(message)
    return found


class Flow:
    """Publishes Account changes and orders over the emulator's REST API."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.token = ""
        self.rng = random.Random(7)
        self.accounts: list[str] = []
        self.counts: Counter[str] = Counter()

    async def login(self) -> None:
        async with self.http.post(
            f"{self.url}/services/oauth2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": "sfstream-emulator-client-id",
                "client_secret": "sfstream-emulator-client-secret",
                "refresh_token": "sfstream-emulator-refresh-token",
            },
        ) as response:
            self.token = (await response.json())["access_token"]

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Sforce-Call-Options": "client=sfstream-demo",
        }
        async with self.http.request(
            method, f"{self.url}/services/data/v62.0/{path}", json=body, headers=headers
        ) as response:
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json() if response.status != 204 else None

    async def step(self, number: int) -> None:
        choice = self.rng.random()
        if choice < 0.35 or len(self.accounts) < 5:
            records = [
                {
                    "attributes": {"type": "Account"},
                    "Name": f"Customer {number}-{i}",
                    "Industry": self.rng.choice(["Banking", "Retail", "Technology"]),
                    "BillingCity": self.rng.choice(["Paris", "Lyon", "Austin"]),
                }
                for i in range(self.rng.randint(1, 4))
            ]
            results = await self.call(
                "POST", "composite/sobjects", {"allOrNone": True, "records": records}
            )
            self.accounts += [r["id"] for r in results]
            self.counts["account creates"] += len(records)
        elif choice < 0.6:
            account = self.rng.choice(self.accounts)
            await self.call(
                "PATCH",
                f"sobjects/Account/{account}",
                {"AnnualRevenue": self.rng.randint(1, 900) * 1000},
            )
            self.counts["account updates"] += 1
        elif choice < 0.65 and len(self.accounts) > 10:
            account = self.accounts.pop(self.rng.randrange(len(self.accounts)))
            await self.call("DELETE", f"sobjects/Account/{account}")
            self.counts["account deletes"] += 1
        else:
            await self.call(
                "POST",
                "sobjects/Order_Placed__e",
                {
                    "Order_Number__c": f"ORD-{number:05d}",
                    "Amount__c": self.rng.randint(5, 500),
                    "Customer_Id__c": self.rng.choice(self.accounts)[:18],
                },
            )
            self.counts["orders"] += 1

    async def publish(self, steps: int, seconds: float) -> None:
        for number in range(steps):
            await self.step(number)
            await asyncio.sleep(seconds / steps)


async def published(http: aiohttp.ClientSession, url: str, channel: str) -> list[int]:
    async with http.get(
        f"{url}/_emulator/v1/events", params={"channel": channel, "limit": "1000000"}
    ) as response:
        return [m["data"]["event"]["replayId"] for m in await response.json()]


async def wait_until_caught_up(http: aiohttp.ClientSession, url: str, limit_s: float) -> None:
    expected = {stream: await published(http, url, channel) for channel, stream in CHANNELS.items()}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        seen: dict[str, set[int]] = {stream: set() for stream in CHANNELS.values()}
        for record in records_on_disk():
            seen.setdefault(record["stream"], set()).add(record["replay_id"])
        if all(set(ids) <= seen[stream] for stream, ids in expected.items()):
            return
        await asyncio.sleep(0.5)


def checkpoints() -> dict[str, int]:
    result = subprocess.run(
        [*SFSTREAM, "state", "show", "--json", "--config", str(CONFIG)],
        capture_output=True,
        check=True,
    )
    return {c["stream"]: c["replay_id"] for c in orjson.loads(result.stdout)["checkpoints"]}


async def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    emulator, url = start_emulator()
    say(f"emulator up at {url}")
    write_config(url)
    say(f"configuration written to {CONFIG.relative_to(ROOT)} (secrets in a 0600 file)")
    try:
        async with aiohttp.ClientSession() as http:
            flow = Flow(http, url)
            await flow.login()
            publisher = asyncio.create_task(flow.publish(steps=900, seconds=14.0))
            first = run_connector("run-1.log")
            say(f"connector started (pid {first.pid}); publishing Account changes and orders")
            await asyncio.sleep(5.0)
            say(
                f"{len(records_on_disk())} records written so far; killing the connector "
                "with SIGKILL mid-stream"
            )
            first.send_signal(signal.SIGKILL)
            first.wait()
            await asyncio.sleep(1.0)
            second = run_connector("run-2.log")
            say(f"connector restarted (pid {second.pid}); it resumes from its checkpoints")
            await publisher
            say("publishing done: " + ", ".join(f"{n} {k}" for k, n in flow.counts.items()))
            await wait_until_caught_up(http, url, limit_s=30.0)
            second.send_signal(signal.SIGTERM)
            code = second.wait(timeout=30)
            say(f"connector stopped with SIGTERM, exit code {code}")
            return await verify(http, url, code)
    finally:
        emulator.send_signal(signal.SIGTERM)
        emulator.wait(timeout=10)


async def verify(http: aiohttp.ClientSession, url: str, exit_code: int) -> int:
    records = records_on_disk()
    stored = checkpoints()
    print()
    print(
        f"{'stream':28} {'published':>9} {'written':>8} {'missing':>8} {'duplicates':>10}"
        f"  checkpoint = last replayId"
    )
    ok = exit_code == 0
    for channel, stream in CHANNELS.items():
        expected = await published(http, url, channel)
        mine = [(r["replay_id"], r["key"]) for r in records if r["stream"] == stream]
        ids = {replay for replay, _ in mine}
        missing = len(set(expected) - ids)
        duplicates = len(mine) - len(set(mine))
        last = expected[-1] if expected else None
        good = missing == 0 and duplicates == 0 and stored.get(stream) == last
        ok = ok and good
        print(
            f"{stream:28} {len(expected):>9} {len(ids):>8} {missing:>8} {duplicates:>10}  "
            f"{stored.get(stream)} = {last} {'ok' if good else 'MISMATCH'}"
        )
    print()
    print(
        f"records in {RECORDS.relative_to(ROOT)}: {len(records)} "
        f"(a merged change event counts once per record id)"
    )
    print(
        "every published event present, none duplicated, checkpoints at the last replayId"
        if ok
        else "VERIFICATION FAILED: see the table above and demo-output/*.log"
    )
    print(f"took {time.monotonic() - START:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(asyncio.run(main()))
