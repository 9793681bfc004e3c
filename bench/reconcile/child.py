"""The reconciler under benchmark, as its own process: one JSON line per delivered update.

  python bench/reconcile/child.py --kubeconfig FILE

Each line is ``{"t": <CLOCK_MONOTONIC seconds>, "backends": ["ip:port", ...]}``, written
from the on_update callback itself. Runs until SIGTERM. Default reconciler settings.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ipvslb import logfmt  # noqa: E402
from ipvslb.endpoints.kube import KubernetesSource, KubeSourceSettings  # noqa: E402
from ipvslb.endpoints.source import Backend  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args()
    logfmt.setup("info")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_update(backends: Sequence[Backend]) -> None:
        now = time.monotonic()
        line = json.dumps({"t": now, "backends": [str(b) for b in backends]})
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    source = KubernetesSource(KubeSourceSettings(kubeconfig=args.kubeconfig))
    source.start(on_update)
    stop.wait()
    source.stop()


if __name__ == "__main__":
    main()
