"""Server benchmarks: (1) the server's overhead over generating in process, (2) concurrent sessions.

    python benchmarks/server.py                                   # tiny model on the CPU
    python benchmarks/server.py --size 1.3b --random-weights --device cuda --height 480 --width 832
    python benchmarks/server.py --repeats 0 --threads 1 --concurrency 1,2,4,8 --batching on,off \
        --encodings latents,jpeg --admission-sessions 8          # the scheduler matrix (issue #18)

(1) runs the same session (prompt, seed, chunks, JPEG frames) twice: in process (the device session
stepped, decoded and encoded in a plain loop) and through a real server on localhost with the Python
client, and prints ``overhead_ratio`` = server seconds / in-process seconds (target <= 1.05). The server
overlaps decoding with the next chunk's denoising, so it can come out below 1.
(2) runs 1, 2, 4 and 8 sessions at once, with the scheduler's batching on (``--max-batch-sessions 8``) and off
(``1``), with latent and JPEG output, and prints, per run: total chunks and frames per second, p50/p95 chunk
latency (the server's: queue wait + denoise + decode + encode), p50 time to first chunk seen by the client,
the real-time factor (seconds of video received per second, mean and worst session), what a viewer playing
each session at 16 frames/s after a 0.5 s pre-buffer would see (stalls, stall seconds, deadline misses; the
client's own arrival times through the engine's playout clock), Jain's fairness index over the sessions'
frame rates and over their stall seconds (1: even), and KV-cache memory per session. Clients take chunks as
fast as they come (one credit back per chunk, two outstanding). ``--admission-sessions N`` adds a run of N
sessions with real-time admission on (the refused count, and the admitted sessions' stalls); each session
count's runs go after a one-chunk warm-up session, which also gives admission its first measurement.
After the runs, ``throughput_ratio`` lines give each batching/encoding's total throughput at every session
count over one session's. Every result is one JSON line. ``--size 1.3b`` uses random prompt embeddings (no
UMT5 weights here).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time

import grpc
import torch
from engine import SIZES, build_bundle
from tokentrim.v1 import streaming_pb2 as pb
from tokentrim_client import NO_RETRIES, Client, ClientError

from tokentrim_server.engine.generation import GenerationSession
from tokentrim_server.engine.playout import PlayoutClock
from tokentrim_server.loading.model import ModelBundle, ModelSpec, load_model
from tokentrim_server.server.background import BackgroundServer
from tokentrim_server.server.config import load_config
from tokentrim_server.server.encoding import jpeg_frames
from tokentrim_server.server.requests import RequestValidator

PROMPT = "a red car drives along the beach at sunset"
VIDEO_FPS = 16.0
PREBUFFER_SECONDS = 0.5  # the server's default playout_prebuffer_seconds
BATCHING = {"on": 8, "off": 1}  # --max-batch-sessions
ENCODINGS = {"latents": pb.ENCODING_LATENTS, "jpeg": pb.ENCODING_JPEG}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for --size 1.3b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=8, help="chunks per session (default: %(default)s)")
    parser.add_argument("--policy", default="none", help="cache policy of every session")
    parser.add_argument("--concurrency", default="1,2,4,8", help="comma-separated session counts")
    parser.add_argument("--batching", default="on,off", help="comma-separated: on (8 sessions a batch), off")
    parser.add_argument("--encodings", default="latents,jpeg", help="comma-separated: latents, jpeg")
    parser.add_argument("--admission-sessions", type=int, default=0,
                        help="sessions of the real-time admission run (batching on, JPEG; 0: no such run)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="overhead runs per side; the best is kept (0: skip the overhead benchmark)")
    return parser


def load_bundle(args: argparse.Namespace) -> ModelBundle:
    if args.size == "tiny":
        dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
        return load_model(ModelSpec(model="tiny", device=args.device, dtype=dtype,
                                    attention_backend=args.attention_backend, compile=args.compile))
    return build_bundle(args)


def server_flags(args: argparse.Namespace, sessions: int, batch: int = 8, realtime: bool = False) -> list[str]:
    return ["--max-sessions", str(sessions), "--default-policy", args.policy, "--cache-budget", "64GiB",
            "--max-height", str(args.height), "--max-width", str(args.width), "--max-batch-sessions", str(batch),
            "--realtime-admission" if realtime else "--no-realtime-admission"]


def in_process_seconds(args: argparse.Namespace, bundle: ModelBundle) -> float:
    """The session generated in a plain loop, with the server's own validation building the plan."""
    config = load_config(server_flags(args, 1), {})
    validator = RequestValidator(config, bundle, bundle.default_size, 64 * 2**30)
    planned = validator.plan(pb.StartSession(prompt=PROMPT, seed=0, chunks=args.chunks, height=args.height,
                                             width=args.width))
    device = bundle.transformer.device
    started = time.perf_counter()
    session = GenerationSession(bundle, planned.plan)
    for _ in range(args.chunks):
        step = session.step()
        jpeg_frames(session.decode(step), planned.jpeg_quality)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed


def video_frames(chunk: pb.Chunk) -> int:
    """The chunk's video frames (a latent chunk decodes into 1 + 4 (F - 1) frames first, then 4 F)."""
    if chunk.encoding != pb.ENCODING_LATENTS:
        return chunk.frame_count
    return 1 + 4 * (chunk.frame_count - 1) if chunk.index == 0 else 4 * chunk.frame_count


def run_session(target: str, args: argparse.Namespace, seed: int, out: dict, encoding: str = "jpeg") -> None:
    """One client session; records its chunk latencies, time to first chunk, cache sizes and what a viewer
    playing it in real time would see in ``out`` (``refused`` when the server turned it away)."""
    started = time.perf_counter()
    viewer = PlayoutClock(VIDEO_FPS, PREBUFFER_SECONDS)
    latencies, cache_bytes, first, frames = [], [], None, 0
    try:
        with Client(target, retries=NO_RETRIES) as client, client.session(
            PROMPT, seed=seed, chunks=args.chunks, height=args.height, width=args.width, encoding=encoding
        ) as session:
            for chunk in session:
                viewer.deliver(video_frames(chunk.message))
                if first is None:
                    first = time.perf_counter() - started
                timings = chunk.message.timings
                latencies.append(timings.queue_wait_seconds + timings.denoise_seconds + timings.decode_seconds
                                 + timings.encode_seconds + timings.prompt_change_seconds)
                cache_bytes.append(chunk.message.cache_report.cache_bytes_after)
                frames += video_frames(chunk.message)
            reserved = session.started.cache_budget_bytes
    except ClientError as error:
        if error.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        out.update(refused=True)
        return
    seconds = time.perf_counter() - started
    out.update(seconds=seconds, latencies=latencies, first=first, reserved=reserved, peak_cache=max(cache_bytes),
               frames=frames, realtime_factor=viewer.realtime_factor(), stalls=viewer.stalls,
               stall_seconds=viewer.stall_seconds, deadline_misses=viewer.deadline_misses, refused=False)


def jain(values: list[float]) -> float:
    """Jain's fairness index: 1 when every value is equal, 1/n when one takes everything (1 for all zeros)."""
    squares = sum(value * value for value in values)
    return sum(values) ** 2 / (len(values) * squares) if squares > 0 else 1.0


def overhead(args: argparse.Namespace, bundle: ModelBundle) -> dict:
    """Alternate in-process and served runs (so machine noise hits both alike) and keep each side's best."""
    in_process, served = [], []
    with BackgroundServer(server_flags(args, 1), bundle) as server:
        for _ in range(args.repeats):
            in_process.append(in_process_seconds(args, bundle))
            result: dict = {}
            run_session(server.target, args, 0, result)
            served.append(result["seconds"])
    return {"benchmark": "server_overhead", "size": args.size, "device": args.device, "height": args.height,
            "width": args.width, "chunks": args.chunks, "repeats": args.repeats,
            "in_process_seconds": min(in_process), "server_seconds": min(served),
            "overhead_ratio": min(served) / min(in_process)}


def concurrency(args: argparse.Namespace, bundle: ModelBundle, sessions: int, batching: str, encoding: str,
                realtime: bool = False) -> dict:
    with BackgroundServer(server_flags(args, sessions, BATCHING[batching], realtime), bundle) as server:
        run_session(server.target, replace_chunks(args, 1), 99, {}, encoding)  # warm-up
        while server.server.service.admission.sessions:  # its release frees its slot just after its end
            time.sleep(0.01)
        server.server.metrics.batch_size.clear()  # the batches of the timed sessions only
        results: list[dict] = [{} for _ in range(sessions)]
        threads = [threading.Thread(target=run_session, args=(server.target, args, seed, results[seed], encoding))
                   for seed in range(sessions)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        registry = server.server.metrics.registry
        batches = registry.get_sample_value("tokentrim_scheduler_batch_size_sum") or 0.0
        mean_batch = batches / (registry.get_sample_value("tokentrim_scheduler_batch_size_count") or 1.0)
    served = [result for result in results if not result["refused"]]
    latencies = sorted(seconds for result in served for seconds in result["latencies"])
    return {
        "benchmark": "concurrent_sessions", "sessions": sessions, "batching": batching, "encoding": encoding,
        "realtime_admission": realtime, "refused": sessions - len(served), "size": args.size,
        "device": args.device, "height": args.height, "width": args.width, "chunks_per_session": args.chunks,
        "threads": torch.get_num_threads(),
        "total_chunks_per_second": len(served) * args.chunks / wall,
        "total_frames_per_second": sum(result["frames"] for result in served) / wall,
        "p50_chunk_latency_seconds": statistics.median(latencies),
        "p95_chunk_latency_seconds": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "p50_time_to_first_chunk_seconds": statistics.median(result["first"] for result in served),
        "mean_realtime_factor": statistics.mean(result["realtime_factor"] for result in served),
        "min_realtime_factor": min(result["realtime_factor"] for result in served),
        "stalls": sum(result["stalls"] for result in served),
        "stall_seconds": sum(result["stall_seconds"] for result in served),
        "deadline_misses": sum(result["deadline_misses"] for result in served),
        "jain_frames_per_second": jain([result["frames"] / result["seconds"] for result in served]),
        "jain_stall_seconds": jain([result["stall_seconds"] for result in served]),
        "mean_batch_size": mean_batch,
        "cache_reserved_bytes_per_session": served[0]["reserved"],
        "cache_peak_bytes_per_session": max(result["peak_cache"] for result in served),
    }


def throughput_ratios(results: list[dict]) -> list[dict]:
    """Per batching and encoding: each session count's total frames per second over one session's."""
    ratios = []
    for result in results:
        single = next((one for one in results if one["sessions"] == 1 and one["batching"] == result["batching"]
                       and one["encoding"] == result["encoding"]), None)
        if single is not None and result["sessions"] > 1:
            ratios.append({"benchmark": "throughput_ratio", "batching": result["batching"],
                           "encoding": result["encoding"], "sessions": result["sessions"],
                           "ratio": result["total_frames_per_second"] / single["total_frames_per_second"]})
    return ratios


def replace_chunks(args: argparse.Namespace, chunks: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "chunks": chunks})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    bundle = load_bundle(args)
    if args.repeats > 0:
        print(json.dumps(overhead(args, bundle)), flush=True)
    results = []
    for encoding in args.encodings.split(","):
        for batching in args.batching.split(","):
            for sessions in (int(text) for text in args.concurrency.split(",")):
                results.append(concurrency(args, bundle, sessions, batching, encoding))
                print(json.dumps(results[-1]), flush=True)
    for ratio in throughput_ratios(results):
        print(json.dumps(ratio), flush=True)
    if args.admission_sessions > 0:
        print(json.dumps(concurrency(args, bundle, args.admission_sessions, "on", "jpeg", realtime=True)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
