"""Open-loop HTTP load for the coupon service: requests sent on a fixed schedule, whatever the
responses (Debian ships wrk, not wrk2, so this stands in for ``wrk2 -R``).

    python bench/openloop.py --url http://127.0.0.1:PORT --rate 300 --warmup 3 --duration 12 \
        --codes FILE [--hot FILE --mode hot] --tokenfile FILE --out FILE [--run ID] [--idem]

Why open loop: with a closed loop (N clients, each sending when its previous response came
back) a slow server slows its own load down, so latency hides in the clients' idle time
("coordinated omission", Gil Tene, *How NOT to Measure Latency*, 2015; wrk2's README). Here
request *k* is due at ``start + k / rate`` (or at Poisson arrival times with ``--poisson``)
and its latency is measured from that due time, not from when a connection happened to be
free to send it, so queueing anywhere -- in the server, in the listen backlog, or waiting for
one of this generator's connections -- counts against the server, as wrk2 does.

The traffic mix and request bodies are those of ``bench/wrk/coupons.lua`` (70% redeem with a
unique order id, 20% validate, 10% get; ``--idem`` adds a unique Idempotency-Key to every
redeem). HTTP/1.1 keep-alive connections are reused most-recently-idle first; a new one is
opened when none is idle, up to ``--max-in-flight`` requests in flight (beyond that a due
request waits for a slot, and the wait counts in its latency). A 503's ``Retry-After`` parks
the connection that received it for that long (the client honours the server's request not
to send on it); it does not change the arrival schedule, which is what open loop means.
A request on a reused connection that the server had closed (gunicorn's keep-alive timeout)
before any byte came back is sent again on a new connection.

Output: the line format of the wrk script, one line per request,
``kind status due_us recv_us error_code`` (CLOCK_MONOTONIC microseconds; status 0 = transport
error, -1 = no response within ``--grace`` seconds after the last due time), then a
``# openloop`` line with the schedule's start and the dispatch lag (how late the generator
itself was: if that is large, the figures say more about this process than the server).

Only ``127.0.0.1`` / ``localhost`` URLs are accepted: this is a load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost")
REDEEM_SHARE = 0.7
VALIDATE_SHARE = 0.2  # the rest (0.1) are GETs
CUSTOMERS = 5000


@dataclass
class Mix:
    """Builds the requests of the traffic mix (same shape as bench/wrk/coupons.lua)."""

    host: str
    token: str
    codes: list[str]
    hot_codes: list[str]
    run_id: str
    hot: bool
    idem: bool
    rng: random.Random = field(default_factory=lambda: random.Random(20261201))

    def build(self, k: int) -> tuple[str, bytes]:
        roll = self.rng.random()
        customer = f"cust-{self.rng.randint(1, CUSTOMERS)}"
        head = f"Host: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
        if roll < REDEEM_SHARE:
            code = self.rng.choice(self.hot_codes if self.hot else self.codes)
            order = f"{self.run_id}-o{k}"
            if self.idem:
                head += f"Idempotency-Key: k-{order}\r\n"
            body = (
                f'{{"code":"{code}","customer_id":"{customer}","order_id":"{order}",'
                '"order_total":"25.00"}'
            )
            return "r", _request("POST", "/api/v1/redemptions", head, body)
        if roll < REDEEM_SHARE + VALIDATE_SHARE:
            code = self.rng.choice(self.codes)
            body = f'{{"customer_id":"{customer}","order_total":"25.00"}}'
            return "v", _request("POST", f"/api/v1/coupons/{code}/validate", head, body)
        code = self.rng.choice(self.codes)
        return "g", _request("GET", f"/api/v1/coupons/{code}", head, None)


def _request(method: str, path: str, head: str, body: str | None) -> bytes:
    if body is None:
        return f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode()
    data = body.encode()
    return (
        f"{method} {path} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class StaleConnection(Exception):
    """The server closed a reused keep-alive connection before answering: send again."""


@dataclass
class Response:
    status: int
    retry_after: float
    close: bool
    body: bytes


class _Client(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection: :meth:`exchange` sends a request and returns its
    response, parsed from the bytes as they arrive (no stream reader: a line-by-line
    ``StreamReader`` parse cost more CPU per request than everything else here, and on a
    2-core box the generator's CPU is CPU the service under test does not get). Responses
    carry a ``Content-Length`` (Flask's do; a chunked one is an error, not a hang)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.received = False
        self.reused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def exchange(self, data: bytes, reused: bool) -> asyncio.Future[Response]:
        """Send ``data``; the future's result is the response. A reused connection the
        server has closed raises :class:`StaleConnection` (send it again elsewhere)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        if not self.usable:
            waiter.set_exception(StaleConnection() if reused else ConnectionError("closed"))
            return waiter
        self.waiter, self.reused, self.received = waiter, reused, False
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        self.received = True
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        status = int(head[9:12])
        length = 0
        close = False
        retry_after = 0.0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                with contextlib.suppress(ValueError):
                    retry_after = float(value)
            elif name == b"connection":
                close = value.strip() == b"close"
            elif name == b"transfer-encoding":
                waiter.set_exception(ValueError("chunked response"))
                self.close()
                return
        total = end + 4 + length
        if len(buffer) < total:
            return
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        self.waiter = None
        waiter.set_result(Response(status, retry_after, close, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            # A reused keep-alive connection the server closed while it sat idle (gunicorn's
            # keepalive ends about when a Retry-After of 2 s does): the server never saw this
            # request, and sending it again on a fresh connection is what an HTTP client
            # does (urllib3, curl).
            if self.reused and not self.received:
                waiter.set_exception(StaleConnection())
            else:
                waiter.set_exception(ConnectionError("connection closed before the response"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _error_code(body: bytes) -> str:
    marker = body.find(b'"code"')
    if marker < 0:
        return "-"
    start = body.find(b'"', body.find(b":", marker) + 1)
    end = body.find(b'"', start + 1)
    if start < 0 or end < 0:
        return "-"
    return body[start + 1 : end].decode("utf-8", "replace") or "-"


class Generator:
    """Sends ``mix`` requests at ``rate`` per second to ``host:port``; see the module doc."""

    def __init__(
        self,
        host: str,
        port: int,
        mix: Mix,
        rate: float,
        seconds: float,
        max_in_flight: int,
        poisson: bool,
    ) -> None:
        self.host, self.port, self.mix = host, port, mix
        self.rate, self.seconds = rate, seconds
        self.slots = asyncio.Semaphore(max_in_flight)
        self.poisson = poisson
        self.idle: list[_Client] = []
        self.lines: list[str] = []
        self.lags: list[float] = []
        self.opened = 0

    async def _connection(self) -> tuple[_Client, bool]:
        while self.idle:
            client = self.idle.pop()
            if client.usable:
                return client, True
            client.close()
        loop = asyncio.get_running_loop()
        _transport, client = await loop.create_connection(_Client, self.host, self.port)
        self.opened += 1
        return client, False

    def _park(self, client: _Client) -> None:
        self.idle.append(client)

    async def _one(self, k: int, due: float) -> None:
        kind, data = self.mix.build(k)
        status, code = 0, "-"
        try:
            async with self.slots:
                for _attempt in range(3):
                    client, reused = await self._connection()
                    try:
                        response = await client.exchange(data, reused)
                    except StaleConnection:
                        client.close()
                        continue
                    except BaseException:
                        client.close()
                        raise
                    break
                else:
                    raise ConnectionError("stale connections three times")
                status = response.status
                if status >= 300:
                    code = _error_code(response.body)
                if response.close:
                    client.close()
                elif status == 503 and response.retry_after > 0:
                    asyncio.get_running_loop().call_later(response.retry_after, self._park, client)
                else:
                    self.idle.append(client)
        except asyncio.CancelledError:
            self.lines.append(f"{kind} -1 {int(due * 1e6)} {int(time.monotonic() * 1e6)} -")
            raise
        except (OSError, ValueError, IndexError) as exc:
            code = type(exc).__name__
        self.lines.append(f"{kind} {status} {int(due * 1e6)} {int(time.monotonic() * 1e6)} {code}")

    async def run(self, grace: float) -> float:
        """Send the schedule, wait up to ``grace`` s for stragglers; return the start time."""
        loop_rng = random.Random(7)
        total = int(self.rate * self.seconds)
        start = time.monotonic() + 0.05
        due = start
        tasks: set[asyncio.Task[None]] = set()
        for k in range(total):
            if self.poisson:
                due += loop_rng.expovariate(self.rate)
            else:
                due = start + k / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.lags.append(time.monotonic() - due)
            task = asyncio.create_task(self._one(k, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _done, pending = await asyncio.wait(set(tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for client in self.idle:
            client.close()
        return start


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--codes", type=Path, required=True)
    parser.add_argument("--hot", type=Path, help="codes of the hot campaign (--mode hot)")
    parser.add_argument("--mode", choices=("spread", "hot"), default="spread")
    parser.add_argument("--tokenfile", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", default="open", help="order-id prefix, unique per run")
    parser.add_argument("--idem", action="store_true", help="Idempotency-Key on each redeem")
    parser.add_argument("--max-in-flight", type=int, default=4000)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--poisson", action="store_true", help="Poisson arrivals")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop (uvloop, the default: about half asyncio's CPU per request, which "
        "on a small box is CPU the server under test does not get)",
    )
    args = parser.parse_args(argv)

    url = urlsplit(args.url)
    if url.hostname not in LOCAL_HOSTS or url.port is None:
        print(f"error: only http://127.0.0.1:PORT is allowed, got {args.url}", file=sys.stderr)
        return 2
    if args.rate <= 0 or args.duration <= 0:
        print("error: --rate and --duration must be positive", file=sys.stderr)
        return 2
    # every request in flight holds a socket: lift the soft descriptor limit to the hard one
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    codes = _read_lines(args.codes)
    mix = Mix(
        host=f"{url.hostname}:{url.port}",
        token=_read_lines(args.tokenfile)[0],
        codes=codes,
        hot_codes=_read_lines(args.hot) if args.hot else codes,
        run_id=args.run,
        hot=args.mode == "hot",
        idem=args.idem,
    )
    generator = Generator(
        url.hostname,
        url.port,
        mix,
        args.rate,
        args.warmup + args.duration,
        args.max_in_flight,
        args.poisson,
    )
    if args.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            print(
                "error: uvloop is not installed (pip install -e '.[bench]'), or pass "
                "--loop asyncio",
                file=sys.stderr,
            )
            return 2
        start = uvloop.run(generator.run(args.grace))
    else:
        start = asyncio.run(generator.run(args.grace))
    lags = sorted(generator.lags) or [0.0]
    with args.out.open("w") as out:
        for line in generator.lines:
            out.write(line + "\n")
        out.write(
            f"# openloop start_us={int(start * 1e6)} rate={args.rate} "
            f"scheduled={len(generator.lags)} connections_opened={generator.opened} "
            f"lag_p50_ms={lags[len(lags) // 2] * 1e3:.2f} "
            f"lag_p99_ms={lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3:.2f} "
            f"lag_max_ms={lags[-1] * 1e3:.2f}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
