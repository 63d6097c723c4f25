#!/usr/bin/env bash
# The GPU before/after matrix of issues #7 and #18, in ONE device call (about 7-8 minutes on one H100 or H200;
# hard stop at 8.5, so the suite fits 9 minutes by design: a run the time left cannot hold is cut off or skipped).
#
# Wan 2.1 T2V 1.3B architecture with random weights (the speed is the real one), Self Forcing, 832x480,
# local window of 21 latent frames. Runs, most important first (each one is cut off, not the suite, if the
# time left is short):
#   1. bf16 + sdpa, policy none, 1 session            (the baseline of the targets)
#   2. profile_chunk.py of run 1                      (where a chunk's time goes; also a Chrome trace)
#   3. the scheduler matrix through the server (benchmarks/server.py, issue #18): bf16 + sdpa, policy tokentrim,
#      1, 4 and 8 concurrent sessions x batching on/off x latent/JPEG output, 3 chunks each, then 8 sessions
#      under real-time admission (about 2 minutes; the 2-session level of the CPU matrix is left out for time)
#   4. fp32 + sdpa, policy none, 1 session            ("before": the reference precision)
#   5. bf16 + sdpa, policy tokentrim, 1 session
#   6. the CUDA checks of tests/test_overlap_paths.py (side-stream rendering, pinned noise: same numbers)
#   7. bf16 + sdpa, policy none, 4 sessions round-robin in one thread (no overlap: the "before" of run 3)
#   8. bf16 + flash / xformers, policy none           (each only if its package imports)
#   9. bf16 + sdpa + compile, policy none, 1 session  (torch.compile; its warm-up session compiles)
#  10. bf16 + sdpa + compile, policy tokentrim, 4 sessions
# Results: one JSON object per run, with a "run" name, in $OUT/results.jsonl (profile: $OUT/profile.json,
# $OUT/chunk_trace.json.gz for chrome://tracing or ui.perfetto.dev); logs in $OUT/log.txt; versions and GPU in $OUT/env.txt. Fill benchmarks/RESULTS.md
# from them.
#
# Prerequisites. The device image has torch (CUDA), triton, transformers, numpy, pillow, protobuf, grpcio and
# safetensors, but not diffusers; nothing can be downloaded there. Nothing is pip-installed into the image: the
# repository's source folders go on PYTHONPATH and the cache-policy entry points are written as package
# metadata under /tmp. Before the device call, here (network needed, .whl/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 protobuf==7.36.2 grpcio==1.85.1 grpcio-health-checking==1.85.1 \
#       grpcio-reflection==1.85.1
#
# (protobuf: the generated API code needs a runtime >= 7.35.1, which the image may lack; the generated gRPC code
# needs grpcio >= 1.85.1, and the server its health and reflection services, which the image lacks; about 15 MB).
# Then the call:
#
#   run(command="bash benchmarks/gpu_suite.sh", carry=[".whl"], timeout_s=600)
#
# Environment: OUT (default out/gpu_suite), PYTHON (default python3), SUITE_SECONDS (default 510), SUITE_COMMON
# (replaces the model/size arguments, e.g. "--size tiny --device cpu --height 32 --width 32 --pipeline
# self_forcing" to try the plumbing on a CPU; the dtypes of the matrix still apply).
set -uo pipefail

OUT=${OUT:-out/gpu_suite}
PYTHON=${PYTHON:-python3}
SUITE_SECONDS=${SUITE_SECONDS:-510}
DEADLINE=$((SECONDS + SUITE_SECONDS))
mkdir -p "$OUT"
LOG="$OUT/log.txt"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- environment, without installing
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
META=/tmp/tokentrim-metadata
"$PYTHON" - "$META" <<'EOF' || exit 1
"""Write dist-info folders holding the entry points of the core and the TokenTrim plugin (no pip needed)."""
import pathlib, sys, tomllib

root = pathlib.Path(sys.argv[1])
for project in ("pyproject.toml", "plugins/tokentrim/pyproject.toml"):
    spec = tomllib.loads(pathlib.Path(project).read_text())["project"]
    folder = root / f"{spec['name'].replace('-', '_')}-{spec['version']}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {spec['name']}\nVersion: {spec['version']}\n")
    groups = spec.get("entry-points", {})
    (folder / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )
EOF
export PYTHONPATH=$PWD:$PWD/proto/python:$PWD/clients/python:$PWD/plugins/tokentrim:$META${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$PYTHON" - <<'EOF'
import importlib.util, torch, diffusers, transformers
from tokentrim_server.policies import policy_names
from tokentrim_server.server.encoding import jpeg_frames  # the profile's JPEG stage: needs the proto runtime
from tokentrim_server.server.app import TokentrimServer  # run 5: grpcio, health and reflection
from tokentrim_client import Client  # run 5: the Python client
print("torch", torch.__version__, "cuda", torch.version.cuda, "diffusers", diffusers.__version__,
      "transformers", transformers.__version__)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "policies", policy_names())
print("flash_attn", importlib.util.find_spec("flash_attn") is not None,
      "xformers", importlib.util.find_spec("xformers") is not None,
      "triton", importlib.util.find_spec("triton") is not None)
EOF
} >"$OUT/env.txt" 2>&1
status=$?
cat "$OUT/env.txt"
if [ $status -ne 0 ]; then
    echo "preflight failed (see above): carry the wheels named at the top of this script" >&2
    exit 1
fi

# ---------------------------------------------------------------- the matrix
# shellcheck disable=SC2206  # SUITE_COMMON is a list of words
COMMON=(${SUITE_COMMON:---size 1.3b --random-weights --device cuda --height 480 --width 832 --pipeline self_forcing})

# bench NAME ARGS...: run benchmarks/engine.py and append its JSON line, tagged with NAME.
bench() {
    local name=$1
    shift
    local left=$((DEADLINE - SECONDS))
    if [ $left -lt 30 ]; then
        echo "{\"run\": \"$name\", \"skipped\": \"suite time limit\"}" >>"$RESULTS"
        return
    fi
    echo "=== $name ($left s left)" | tee -a "$LOG"
    local line
    line=$(timeout "$left" "$PYTHON" benchmarks/engine.py "${COMMON[@]}" "$@" 2>>"$LOG" | tee -a "$LOG" | grep '^{')
    local rc=$?
    if [ -n "$line" ]; then
        echo "{\"run\": \"$name\", ${line#\{}" >>"$RESULTS"
    else
        echo "{\"run\": \"$name\", \"failed\": $rc}" >>"$RESULTS"
    fi
}

bench bf16_sdpa_none --dtype bfloat16 --attention-backend sdpa --chunks 8
left=$((DEADLINE - SECONDS))
echo "=== profile ($left s left)" | tee -a "$LOG"
timeout "$left" "$PYTHON" benchmarks/profile_chunk.py "${COMMON[@]}" --dtype bfloat16 --attention-backend sdpa \
    --chunks 3 --trace "$OUT/chunk_trace.json" 2>>"$LOG" | tee -a "$LOG" | grep '^{' >"$OUT/profile.json"
gzip -f "$OUT/chunk_trace.json"  # tens of MB as text; files coming back from $OUT are limited to 16 MiB
left=$((DEADLINE - SECONDS))
echo "=== served scheduler matrix ($left s left)" | tee -a "$LOG"
# One JSON line per run (and per throughput ratio), tagged; the server takes no --pipeline (its default is Self
# Forcing).
SERVED=()
for ((i = 0; i < ${#COMMON[@]}; i++)); do
    if [ "${COMMON[i]}" = --pipeline ]; then i=$((i + 1)); else SERVED+=("${COMMON[i]}"); fi
done
timeout "$left" "$PYTHON" benchmarks/server.py "${SERVED[@]}" --dtype bfloat16 --attention-backend sdpa \
    --policy tokentrim --chunks 3 --repeats 0 --concurrency 1,4,8 --batching on,off --encodings latents,jpeg \
    --admission-sessions 8 2>>"$LOG" | tee -a "$LOG" | grep '^{' |
    sed 's/^{/{"run": "served_bf16_sdpa_tokentrim", /' >>"$RESULTS"
bench fp32_sdpa_none --dtype float32 --attention-backend sdpa --chunks 3
bench bf16_sdpa_tokentrim --dtype bfloat16 --attention-backend sdpa --policy tokentrim --chunks 8
left=$((DEADLINE - SECONDS))
echo "=== CUDA checks ($left s left)" | tee -a "$LOG"
timeout "$left" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_overlap_paths.py 2>&1 | tee -a "$LOG" |
    tail -1 | sed 's/"/\\"/g; s/.*/{"run": "cuda_checks", "pytest": "&"}/' >>"$RESULTS"
bench bf16_sdpa_none_4sessions --dtype bfloat16 --attention-backend sdpa --sessions 4 --chunks 6
for backend in flash xformers; do
    module=$([ $backend = flash ] && echo flash_attn || echo xformers)
    if "$PYTHON" -c "import $module" 2>/dev/null; then
        bench "bf16_${backend}_none" --dtype bfloat16 --attention-backend $backend --chunks 8
    else
        echo "{\"run\": \"bf16_${backend}_none\", \"skipped\": \"$module not installed\"}" >>"$RESULTS"
    fi
done
# Three warm-up chunks: the first compiles, the third recompiles once for dynamic cache lengths.
bench bf16_sdpa_compile_none --dtype bfloat16 --attention-backend sdpa --compile --warmup 3 --chunks 8
bench bf16_sdpa_compile_tokentrim_4sessions --dtype bfloat16 --attention-backend sdpa --compile --warmup 3 \
    --policy tokentrim --sessions 4 --chunks 6
echo "done in $SECONDS s; results in $RESULTS" | tee -a "$LOG"
