"""Server load: requests/s and p50/p99 latency under 1, 8 and 32 concurrent clients on loopback,
with micro-batching on and off.

Each setting starts `captioner serve` in its own process, sends a few warm-up requests, then lets
N clients post Flickr8k JPEGs (as the web page does: multipart upload) until `--requests` answers
or `--seconds` have passed, whichever comes first. The clients share the machine's cores with the
server, as a load generator on the same host does.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

import httpx
from _common import header, median, model_source, percentile, sample_images

SERVE = "import sys; from captioner.cli import main; sys.exit(main())"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str | None, batching: bool, port: int) -> subprocess.Popen:
    command = [sys.executable, "-c", SERVE, "serve", "--port", str(port)]
    command += ["--batching" if batching else "--no-batching"]
    if model:
        command += ["--model", model]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.2)
        if server.poll() is not None:
            break
    server.kill()
    raise RuntimeError("the server did not come up")


async def load(
    url: str, images: list[bytes], form: dict[str, str], clients: int, requests: int, seconds: float
) -> tuple[list[float], int, float]:
    """Latencies of the answered requests, the error count, and the wall time."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker(offset: int) -> None:
            nonlocal errors, sent
            while sent < requests and time.perf_counter() < deadline:
                image = images[(sent + offset) % len(images)]
                sent += 1
                began = time.perf_counter()
                try:
                    reply = await client.post(url, files={"file": ("photo.jpg", image)}, data=form)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - began)
                else:
                    errors += 1

        await asyncio.gather(*(worker(i) for i in range(clients)))
        return latencies, errors, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model folder (default: the bundled model)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=128, help="answers per setting, at most")
    parser.add_argument("--seconds", type=float, default=30, help="time per setting, at most")
    parser.add_argument("--num-beams", type=int, help="num_beams sent (default: the model's)")
    parser.add_argument("--attention", action=argparse.BooleanOptionalAction, default=False)
    args = parser.parse_args()
    header("Server load, loopback")

    images = sample_images(16)
    form = {"attention": str(args.attention).lower()}
    if args.num_beams:
        form["num_beams"] = str(args.num_beams)
    print(f"form fields: {form}; at most {args.requests} requests or {args.seconds:g} s per row\n")
    print(
        f"{'batching':9s} {'clients':>7s} {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}"
    )
    rates: dict[tuple[bool, int], float] = {}
    for batching in (False, True):
        port = free_port()
        server = start_server(model_source(args.model), batching, port)
        url = f"http://127.0.0.1:{port}/api/caption"
        try:
            asyncio.run(load(url, images, form, 2, 8, 60))  # warm-up
            for clients in args.clients:
                latencies, errors, wall = asyncio.run(
                    load(url, images, form, clients, args.requests, args.seconds)
                )
                rates[batching, clients] = len(latencies) / wall
                print(
                    f"{'on' if batching else 'off':9s} {clients:7d} {len(latencies) / wall:7.1f} "
                    f"{median(latencies) * 1000:8.1f} {percentile(latencies, 99) * 1000:8.1f} "
                    f"{errors:6d}"
                )
        finally:
            server.terminate()
            server.wait(30)
    print()
    for clients in args.clients:
        ratio = rates[True, clients] / rates[False, clients]
        print(f"{clients} clients: micro-batching gives x{ratio:.2f} the requests/s")


if __name__ == "__main__":
    main()
