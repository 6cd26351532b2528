"""Start-up of the command line against `python -c "import torch"`, and the size of the install.

From one run on one machine, the median seconds of (each a new process):
  import torch          `python -c "import torch"` with this script's interpreter: the peer
  captioner --help
  caption, cold         `captioner caption photo.jpg`: start, load the bundled model, caption
  serve, ready          `captioner serve` until GET /api/health answers
with each one's ratio to `import torch` (issue 23's targets: below 1 for --help and the caption,
below 2 for the server), then the size of the environment the commands ran from (target for a
plain install: at most 300 MB).

    python bench/startup.py                     # the commands of this environment
    make plain-venv PLAIN=/tmp/captioner-plain  # the wheel, `pip install`ed into a fresh venv
    python bench/startup.py --venv /tmp/captioner-plain

The runs take turns (one of each, then again), so that a machine slowing down mid-run weighs
on every command alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_IMAGES = REPO.parent / "shared" / "datasets" / "flickr8k" / "images"
PLAIN_INSTALL_LIMIT_MB = 300
SERVER_START_LIMIT_S = 300  # a server not answering by then is reported as a failure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--venv",
        type=Path,
        help="a venv with captioner installed (e.g. `make plain-venv`); default: this "
        "interpreter's environment",
    )
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be 1 or more, got {args.repeats}")
    prefix = args.venv.resolve() if args.venv else Path(sys.prefix)
    captioner = prefix / "bin" / "captioner"
    if not captioner.is_file():
        parser.error(f"{captioner} does not exist: is captioner installed in {prefix}?")
    # A venv given by path runs as installed: without PYTHONPATH pointing at a checkout.
    env = {k: v for k, v in os.environ.items() if not (args.venv and k == "PYTHONPATH")}

    with tempfile.TemporaryDirectory(prefix="captioner-startup-") as scratch:
        work = Path(scratch)
        photo = sample_photo(work)
        commands: dict[str, Callable[[], float]] = {
            "import torch": lambda: timed([sys.executable, "-c", "import torch"], work, os.environ),
            "captioner --help": lambda: timed([captioner, "--help"], work, env),
            "caption, cold": lambda: timed([captioner, "caption", photo], work, env),
            "serve, ready": lambda: serve_ready(captioner, work, env),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(command())

    header(prefix, photo.name)
    torch_s = statistics.median(times["import torch"])
    print(f"{'command':<18} {'median s':>9} {'min s':>7} {'x import torch':>15}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<18} {median:>9.2f} {min(values):>7.2f} {median / torch_s:>15.2f}")
    size_mb = disk_usage(prefix) / 1e6
    training = [
        name for name in ("torch", "transformers", "lightning") if has_distribution(prefix, name)
    ]
    print()
    print(
        f"environment {prefix}: {size_mb:.0f} MB on disk (du); plain-install target: at most "
        f"{PLAIN_INSTALL_LIMIT_MB} MB; training packages in it: {', '.join(training) or 'none'}"
    )
    largest = sorted(
        ((disk_usage(entry), entry.name) for entry in site_packages(prefix).iterdir()),
        reverse=True,
    )[:8]
    print("largest in site-packages: " + ", ".join(f"{n} {b / 1e6:.0f} MB" for b, n in largest))


def timed(command: list, cwd: Path, env: dict[str, str]) -> float:
    """Seconds `command` took, start to exit; a failed command stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed ({done.returncode}): {done.stderr}")
    return elapsed


def serve_ready(captioner: Path, cwd: Path, env: dict[str, str]) -> float:
    """Seconds from starting `captioner serve` to its first answer from /api/health."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/health"
    started = time.perf_counter()
    server = subprocess.Popen(
        [captioner, "serve", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - started
            except OSError:  # not listening yet, refused, or no answer within the timeout
                pass
            if server.poll() is not None:
                sys.exit(f"captioner serve exited ({server.returncode}): {server.stderr.read()}")
            if time.perf_counter() - started > SERVER_START_LIMIT_S:
                sys.exit(f"captioner serve did not answer {url} in {SERVER_START_LIMIT_S} s")
            time.sleep(0.01)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def sample_photo(folder: Path) -> Path:
    """A Flickr8k photo where the slice is here, else a generated 500x375 JPEG."""
    photos = sorted(FLICKR8K_IMAGES.glob("*.jpg")) if FLICKR8K_IMAGES.is_dir() else []
    path = folder / "photo.jpg"
    if photos:
        path.write_bytes(photos[0].read_bytes())
        return path
    y, x = np.mgrid[0:375, 0:500]
    noise = np.random.default_rng(0).normal(0, 20, (375, 500, 3))
    pixels = np.stack([x * 0.5, y * 0.68, (x + y) * 0.15], axis=-1) + noise
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def disk_usage(folder: Path) -> int:
    """Bytes the files under `folder` take on disk, each hard-linked file once, as `du` counts."""
    if not folder.is_dir():
        return os.lstat(folder).st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def site_packages(prefix: Path) -> Path:
    return next(prefix.glob("lib/python*/site-packages"))


def has_distribution(prefix: Path, name: str) -> bool:
    """Whether a distribution called `name` is installed in the environment at `prefix`."""
    return any(site_packages(prefix).glob(f"{name}-*.dist-info"))


def header(prefix: Path, photo: str) -> None:
    """What a reader needs to rerun and compare: machine, date, interpreters, command."""
    with open("/proc/cpuinfo") as info:
        names = [line.split(":", 1)[1].strip() for line in info if line.startswith("model name")]
    cpu = names[0] if names else platform.machine()
    print("# captioner start-up against import torch")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}")
    print(f"python {platform.python_version()}; import torch with {sys.executable}")
    print(f"captioner from {prefix}; photo {photo}")
    print(f"command: python {' '.join(sys.argv)}")
    print()


if __name__ == "__main__":
    main()
