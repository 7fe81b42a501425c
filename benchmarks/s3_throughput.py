#!/usr/bin/env python
"""S3 checkpoint throughput, side by side in one run against one local moto server.

Measures, on the same bytes (a checkpoint of a few large files and several small ones):
  - our upload (commit_checkpoint) and download (fetch_checkpoint, verified),
  - plain ``boto3.client("s3").upload_file`` / ``download_file`` with default settings, file by file,
  - a raw local disk copy of the same files,
  - moto's ingest ceiling: many parallel plain PUTs of the same bytes from memory (and its egress
    ceiling: many parallel plain GETs of those objects),
and prints MB/s and ratios. Not a test: run it by hand, alone on the machine.

    .venv/bin/python benchmarks/s3_throughput.py            # ~500 MB
    .venv/bin/python benchmarks/s3_throughput.py --total-mb 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

MB = 1_000_000
MiB = 1 << 20


@contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    script = Path(sys.executable).parent / "moto_server"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(script), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise SystemExit(f"moto_server exited: see {log_path}")
                time.sleep(0.1)
        yield url
    finally:
        process.kill()
        process.wait()


def point_boto3_at(endpoint: str) -> None:
    """Dummy keys and the endpoint, through the standard variables both clients read."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
    )
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)


def make_checkpoint(directory: Path, total_mb: int, big_files: int, small_files: int) -> list[Path]:
    """``big_files`` files holding 90% of the bytes, ``small_files`` holding the rest."""
    total = total_mb * MB
    big = int(total * 0.9) // big_files
    small = (total - big * big_files) // max(small_files, 1)
    sizes = {f"model-{i + 1:05d}-of-{big_files:05d}.safetensors": big for i in range(big_files)}
    sizes.update({f"extra/shard-{i}.bin": small for i in range(small_files)})
    sizes["config.json"] = 2_000
    block = os.urandom(16 * MiB)  # incompressible; repeated blocks keep generation fast
    for name, size in sizes.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            left = size
            while left > 0:
                handle.write(block[: min(left, len(block))])
                left -= min(left, len(block))
    return sorted(path for path in directory.rglob("*") if path.is_file())


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def empty_bucket(client, bucket: str) -> None:
    """Keeps the server's memory to one copy of the checkpoint between measurements."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def disk_copy(files: list[Path], source: Path, target: Path) -> None:
    for path in files:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)


def plain_upload(client, files: list[Path], source: Path, bucket: str) -> None:
    for path in files:
        client.upload_file(str(path), bucket, f"plain/{path.relative_to(source).as_posix()}")


def plain_download(client, files: list[Path], source: Path, bucket: str, target: Path) -> None:
    for path in files:
        relative = path.relative_to(source).as_posix()
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"plain/{relative}", str(destination))


def parallel_puts(client, data: bytes, count: int, bucket: str, threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"ceiling/{i}", Body=data), range(count)))


def parallel_gets(client, count: int, bucket: str, threads: int) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: client.get_object(Bucket=bucket, Key=f"ceiling/{i}")["Body"].read(), range(count)))


class ServerClock:
    """CPU seconds the moto server has used (Linux /proc): its cost per MB is a steadier figure
    than MB/s when other work shares the machine."""

    def __init__(self, port: int):
        self.pid = self._find(port)

    @staticmethod
    def _find(port: int) -> int | None:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and f"-p\0{port}".encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
        return None

    def seconds(self) -> float:
        if self.pid is None:
            return float("nan")
        fields = (Path("/proc") / str(self.pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(name: str, action: Callable[[], object], clock: ServerClock, into: dict[str, list[tuple[float, float]]]) -> None:
    before = clock.seconds()
    elapsed = timed(action)
    into.setdefault(name, []).append((elapsed, clock.seconds() - before))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mb", type=int, default=500, help="checkpoint size in MB (default 500)")
    parser.add_argument("--big-files", type=int, default=3)
    parser.add_argument("--small-files", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows each figure's median")
    parser.add_argument("--part-mib", type=int, default=None, help="our upload part size (default: S3Tuning's)")
    parser.add_argument("--download-part-mib", type=int, default=None, help="our ranged GET size (default: S3Tuning's)")
    parser.add_argument("--workers", type=int, default=None, help="our part workers (default: S3Tuning's)")
    parser.add_argument("--ceiling-threads", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None, help="where the files go (default: a temp dir)")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
    import boto3
    from alignops.storage import commit_checkpoint, fetch_checkpoint
    from alignops.storage.base import StorageOptions
    from alignops.storage.s3 import S3Store, S3Tuning

    overrides = {
        name: value
        for name, value in (
            ("part_size", args.part_mib and args.part_mib * MiB),
            ("multipart_threshold", args.part_mib and 2 * args.part_mib * MiB),
            ("download_part_size", args.download_part_mib and args.download_part_mib * MiB),
            ("part_workers", args.workers),
        )
        if value
    }
    tuning = S3Tuning(**overrides)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="s3bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "checkpoint"
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        files = make_checkpoint(source, args.total_mb, args.big_files, args.small_files)
        total = sum(path.stat().st_size for path in files)
        part = 8 * MiB
        count = max(1, total // part)
        data = os.urandom(part)
        scale = total / (count * part)  # the ceiling moves count*part bytes: scale its time to `total`
        with moto_server(work / "moto_server.log") as endpoint:
            point_boto3_at(endpoint)
            clock = ServerClock(int(endpoint.rsplit(":", 1)[1]))
            client = boto3.client("s3")  # default settings: the plain baseline
            bucket = "bench"
            client.create_bucket(Bucket=bucket)
            store = S3Store(bucket, "ours", StorageOptions(path_style=True), tuning)
            for round_ in range(args.repeat):
                print(f"round {round_ + 1} of {args.repeat}", file=sys.stderr, flush=True)
                measure("disk copy", lambda: disk_copy(files, source, work / "disk-copy"), clock, samples)
                shutil.rmtree(work / "disk-copy")
                # plain and ours take turns going first, so neither always runs on the other's leftovers
                uploads = [
                    ("plain boto3 upload_file", lambda: plain_upload(client, files, source, bucket)),
                    ("ours upload (commit)", lambda: commit_checkpoint(store, source, "s", step=round_)),
                ]
                downloads = [
                    ("plain boto3 download_file", lambda: plain_download(client, files, source, bucket, work / "plain")),
                    ("ours download (fetch+verify)", lambda: fetch_checkpoint(store, f"s/checkpoint-{round_}", work / "ours")),
                ]
                for name, action in uploads[:: 1 if round_ % 2 == 0 else -1] + downloads[:: 1 if round_ % 2 == 0 else -1]:
                    measure(name, action, clock, samples)
                shutil.rmtree(work / "plain")
                shutil.rmtree(work / "ours")
                empty_bucket(client, bucket)
                measure("moto ceiling: parallel PUTs", lambda: parallel_puts(client, data, count, bucket, args.ceiling_threads), clock, samples)
                measure("moto ceiling: parallel GETs", lambda: parallel_gets(client, count, bucket, args.ceiling_threads), clock, samples)
                empty_bucket(client, bucket)
                for name in ("moto ceiling: parallel PUTs", "moto ceiling: parallel GETs"):
                    elapsed, cpu = samples[name][-1]
                    samples[name][-1] = (elapsed * scale, cpu * scale)
            store.close()
        report(samples, total, len(files), tuning, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def report(samples: dict[str, list[tuple[float, float]]], total: int, nfiles: int, tuning, args) -> None:
    mb = total / MB
    seconds = {name: statistics.median(elapsed for elapsed, _ in runs) for name, runs in samples.items()}
    server = {name: statistics.median(cpu for _, cpu in runs) for name, runs in samples.items()}
    rate = {name: mb / value for name, value in seconds.items()}
    print(f"\ncheckpoint: {mb:.0f} MB in {nfiles} files; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(
        f"ours: {tuning.part_size // MiB} MiB parts from {tuning.multipart_threshold // MiB} MiB, "
        f"{tuning.download_part_size // MiB} MiB ranges, {tuning.part_workers} part workers, "
        f"{tuning.file_workers} file workers; ceiling: {args.ceiling_threads} threads x 8 MiB objects; "
        f"median of {args.repeat} rounds\n"
    )
    print(f"{'measurement':<30} {'seconds':>8} {'MB/s':>8} {'all rounds MB/s':>24} {'moto CPU ms/MB':>15}")
    order = ["disk copy", "plain boto3 upload_file", "ours upload (commit)", "plain boto3 download_file",
             "ours download (fetch+verify)", "moto ceiling: parallel PUTs", "moto ceiling: parallel GETs"]  # fmt: skip
    for name in order:
        runs = samples[name]
        each = " ".join(f"{mb / elapsed:.0f}" for elapsed, _ in runs)
        cpu = "" if name == "disk copy" else f"{1000 * server[name] / mb:.1f}"
        print(f"{name:<30} {seconds[name]:>8.2f} {rate[name]:>8.1f} {each:>24} {cpu:>15}")
    up, down = rate["ours upload (commit)"], rate["ours download (fetch+verify)"]
    print("\nratios (of medians)")
    for label, value in (
        ("upload: ours / plain boto3", up / rate["plain boto3 upload_file"]),
        ("download: ours / plain boto3", down / rate["plain boto3 download_file"]),
        ("upload: ours / moto PUT ceiling", up / rate["moto ceiling: parallel PUTs"]),
        ("download: ours / moto GET ceiling", down / rate["moto ceiling: parallel GETs"]),
        ("upload: ours / disk copy", up / rate["disk copy"]),
        ("download: ours / disk copy", down / rate["disk copy"]),
    ):
        print(f"{label:<36} {value:>6.2f}x")


if __name__ == "__main__":
    main()
