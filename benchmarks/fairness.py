"""Fairness benchmark: how long a cheap session waits while an expensive one shares the device.

    python benchmarks/fairness.py                        # tiny model on the CPU
    python benchmarks/fairness.py --expensive-steps 8 --cheap-chunks 2 --repeats 5

A cheap session (the distilled 4-step default) asks for ``--cheap-chunks`` chunks, first alone, then while an
expensive session (``--expensive-steps`` denoising steps per chunk, the server's ``max_denoising_steps``)
streams without pause. The request is ``cheap_chunks + 1`` device jobs (opening the session, then each
chunk). First in first out puts one expensive chunk before each of them (``fifo_estimate_seconds``). The
device worker shares device *time* instead (start-time fair queuing), so while the cheap session has a job
queued it goes first; it still waits for the expensive chunk in progress when it arrives, and for any that
starts while it has nothing queued (between its jobs the worker does not idle). ``fair_bound_seconds`` is
alone + one expensive chunk, the best a non-preemptive schedule can do. Prints one JSON line with the
cheap request's median seconds alone and beside the expensive session, and the expensive chunk's median
denoise seconds. Timings on a shared CPU are rough: the render thread and the device thread compete for
cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import grpc
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim.v1 import streaming_pb2_grpc as pb_grpc

from tokentrim_server.loading.model import ModelSpec, load_model
from tokentrim_server.server.background import BackgroundServer
from tokentrim_server.server.requests import MAX_SEED

GENERATE_TIMEOUT_SECONDS = 600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="frame height and width in pixels (tiny model)")
    parser.add_argument("--cheap-chunks", type=int, default=2)
    parser.add_argument("--expensive-steps", type=int, default=8, help="denoising steps of the expensive session")
    parser.add_argument("--repeats", type=int, default=5, help="cheap requests per condition (the median is kept)")
    return parser


def steps(count: int) -> list[int]:
    """``count`` strictly decreasing timesteps in (0, 1000]."""
    return [1000 - index * (1000 // (count + 1)) for index in range(count)]


def cheap_request(stub, args: argparse.Namespace, seed: int) -> float:
    """Seconds from start to the last of ``--cheap-chunks`` chunks."""
    start = pb.StartSession(prompt="a cheap session", seed=seed % MAX_SEED, chunks=args.cheap_chunks,
                            height=args.size, width=args.size, initial_credits=args.cheap_chunks)
    began = time.perf_counter()
    for _ in stub.Generate(iter([pb.GenerateRequest(start=start)]), timeout=GENERATE_TIMEOUT_SECONDS):
        pass
    return time.perf_counter() - began


def stream_expensive(stub, args: argparse.Namespace, stop: threading.Event, chunk_seconds: list[float]) -> None:
    options = {"denoising_steps": steps(args.expensive_steps)}
    start = pb.StartSession(prompt="an expensive session", seed=1, chunks=0, height=args.size, width=args.size,
                            initial_credits=16)
    start.pipeline_options.update(options)
    grants = threading.Semaphore(0)

    def messages():
        yield pb.GenerateRequest(start=start)
        while not stop.is_set():
            if grants.acquire(timeout=0.1):
                yield pb.GenerateRequest(grant_credits=pb.GrantCredits(chunks=1))
        yield pb.GenerateRequest(stop=pb.StopSession())

    for response in stub.Generate(messages(), timeout=GENERATE_TIMEOUT_SECONDS):
        if response.WhichOneof("response") == "chunk":
            chunk_seconds.append(response.chunk.timings.denoise_seconds)
            grants.release()  # keep it busy: always credit for the next chunk


def main() -> None:
    args = build_parser().parse_args()
    bundle = load_model(ModelSpec(model="tiny"))
    flags = ["--max-sessions", "4", "--max-denoising-steps", str(max(args.expensive_steps, 4)),
             "--max-height", str(args.size), "--max-width", str(args.size)]
    with BackgroundServer(flags, bundle) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.StreamingServiceStub(channel)
        cheap_request(stub, args, 0)  # warm the process (allocator, kernels)
        alone = [cheap_request(stub, args, seed) for seed in range(args.repeats)]
        stop, expensive_chunks = threading.Event(), []
        streamer = threading.Thread(target=stream_expensive, args=(stub, args, stop, expensive_chunks))
        streamer.start()
        while len(expensive_chunks) < 2:  # the expensive session is running
            time.sleep(0.05)
        beside = [cheap_request(stub, args, seed) for seed in range(args.repeats)]
        stop.set()
        streamer.join()
    expensive = statistics.median(expensive_chunks)
    print(json.dumps({
        "benchmark": "fairness", "size": args.size, "cheap_chunks": args.cheap_chunks,
        "expensive_steps": args.expensive_steps, "cheap_alone_seconds": round(statistics.median(alone), 3),
        "cheap_beside_expensive_seconds": round(statistics.median(beside), 3),
        "expensive_chunk_seconds": round(expensive, 3),
        "fair_bound_seconds": round(statistics.median(alone) + expensive, 3),
        "fifo_estimate_seconds": round(statistics.median(alone) + (args.cheap_chunks + 1) * expensive, 3),
    }))


if __name__ == "__main__":
    main()
