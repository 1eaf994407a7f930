"""Dispatch benchmark: caduceus' DICOM target against DCMTK's dcmsend, into one storescp.

    .venv/bin/python bench/dispatch.py [--count 500] [--size 512] [--associations 2]

Generates a CT series (512x512 16-bit, about 0.5 MB per image), then sends it to a fresh
DCMTK storescp (TCP_NODELAY=1 in its environment, so the receiver is never the bottleneck):
once with caduceus' DicomSender (what the dispatcher uses: the lean storage SCU in core/net,
file to socket in PDU-sized pieces, TCP_NODELAY) and once with `dcmsend` (what mercure uses),
and prints images/s and the ratio. With --associations N > 1, a third run sends over N
associations at once into a storescp that forks per association.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from caduceus.core.config.models import DicomTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, plugin_for


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def storescp(folder: Path, fork: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-od", str(folder), "+xa", *(["--fork"] if fork else []), str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import socket

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, port


def count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--associations", type=int, default=1)
    args = parser.parse_args()
    senders = ["caduceus", "dcmsend"] + (["parallel"] if args.associations > 1 else [])
    with tempfile.TemporaryDirectory(prefix="caduceus-dispatch-bench-") as scratch_name:
        scratch = Path(scratch_name)
        files = write_series(
            scratch / "series", SeriesSpec(count=args.count, rows=args.size, columns=args.size)
        )
        megabytes = sum(p.stat().st_size for p in files) / 2**20
        results: dict[str, list[float]] = {sender: [] for sender in senders}
        for repeat in range(args.repeats):
            for sender in senders:
                out = scratch / f"out-{sender}-{repeat}"
                process, port = storescp(out, fork=sender == "parallel")
                try:
                    start = time.perf_counter()
                    if sender in ("caduceus", "parallel"):
                        target = DicomTarget(
                            host="127.0.0.1",
                            port=port,
                            called_aet="ANY",
                            associations=args.associations if sender == "parallel" else 1,
                        )
                        report = plugin_for(target).send(files, Shipment("bench"))
                        assert report.complete, list(report.failed.items())[:3]
                    else:
                        subprocess.run(
                            ["dcmsend", "-aec", "ANY", "127.0.0.1", str(port), *map(str, files)],
                            check=True,
                            # Nagle off for dcmsend too, so it is not held back by ACK stalls.
                            env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    elapsed = time.perf_counter() - start
                finally:
                    process.terminate()
                    process.wait(10)
                assert count(out) == len(files), f"{sender}: {count(out)} of {len(files)} arrived"
                results[sender].append(len(files) / elapsed)
                print(
                    f"{sender:8}  run {repeat + 1}: {len(files) / elapsed:7.1f} images/s, "
                    f"{megabytes / elapsed:6.1f} MB/s"
                )
        best = {k: max(v) for k, v in results.items()}
        print(
            f"best of {args.repeats}: caduceus {best['caduceus']:.1f} images/s, dcmsend "
            f"{best['dcmsend']:.1f} images/s, ratio caduceus/dcmsend "
            f"{best['caduceus'] / best['dcmsend']:.2f}"
        )
        if "parallel" in best:
            print(
                f"best of {args.repeats}: caduceus over {args.associations} associations "
                f"{best['parallel']:.1f} images/s, ratio to dcmsend "
                f"{best['parallel'] / best['dcmsend']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
