"""A flaky uplink for the demo: a TCP relay on 127.0.0.1 in front of a local endpoint
that can be cut (connections refused) and healed while the agent runs.

    python samples/uplink.py --listen 4600 --to 4567 &
    kill -USR1 $!    # the uplink goes down
    kill -USR2 $!    # it comes back
    kill -TERM $!    # stop

It is the test suite's fault-injecting proxy (tests/fault_proxy.py) behind two signals.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fault_proxy import FaultProxy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True, help="port the agent connects to")
    parser.add_argument("--to", type=int, required=True, help="port of the real endpoint")
    args = parser.parse_args()
    proxy = FaultProxy(args.to, port=args.listen).start()
    done = threading.Event()

    def handle(number: int, frame: FrameType | None) -> None:
        if number == signal.SIGUSR1:
            proxy.set_mode("cut")
        elif number == signal.SIGUSR2:
            proxy.set_mode("pass")
        else:
            done.set()

    for number in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(number, handle)
    while not done.wait(1.0):
        pass
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
