"""Run the fake provider standalone: ``python -m tests.fake_provider --port 9000``."""

from __future__ import annotations

import argparse

from tests.background_server import serve_until_interrupted

from .server import FakeProvider


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_provider", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between stream events")
    args = parser.parse_args()
    fake = FakeProvider(delay=args.delay).start(port=args.port)
    serve_until_interrupted("fake provider", fake.url, fake.stop)


if __name__ == "__main__":
    main()
