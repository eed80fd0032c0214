"""Run the fake provider standalone: ``python -m tests.fake_provider --port 9000``."""

from __future__ import annotations

import argparse
import threading

from .server import FakeProvider


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fake_provider", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds between stream events")
    args = parser.parse_args()
    fake = FakeProvider(delay=args.delay).start(port=args.port)
    print(f"fake provider listening on {fake.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
