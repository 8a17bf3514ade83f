#!/usr/bin/env bash
# GPU check: build the extension with its CUDA kernels, run the GPU tests,
# then print the benchmark tables and the speed targets, each with its measured
# value and met or not (bench/scripts/summarize.py). Meant for a fresh CUDA
# machine with torch, triton, nvcc, ninja, pytest, hypothesis and
# pytest-benchmark installed and no network. Each part has its own timeout
# (tests 200 s, bench 150 s, compiled 240 s, host 180 s, step 240 s; the build
# about 30 s): the default parts fit in 6 minutes. Logs go to RESULTS_DIR (at
# most 8 files: env.log, build.log, tests.log, bench.log, bench*.json, tables.md).
#   bash bench/gpu_check.sh RESULTS_DIR [PART ...]
# PARTs: tests bench compiled host (the default, in this order) and step, which
# runs only when named: the whole training step under torch.compile compiles a
# CNN's forward and backward twice, too slow to share the 6-minute budget. The
# environment, the build and the copy bandwidth always run; a rerun with the
# parts a cut-off run missed (each part prints its start time) appends to
# bench.log and leaves the other parts' files alone. `step` times all five
# variants of the step (bare host, reference and fast, eager and compiled) in
# one run, so that its comparison holds on its own.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh RESULTS_DIR [tests] [bench] [compiled] [host] [step]}
shift
parts=" ${*:-tests bench compiled host} "
for p in $parts; do
  case $p in tests | host | bench | compiled | step) ;; *) echo "unknown part: $p (tests bench compiled host step)"; exit 2 ;; esac
done
want() { [[ $parts == *" $1 "* ]]; }
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s)"; }
status=0

step "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
  nvcc --version | tail -1
} 2>&1 | tee "$out/env.log"

step "build (pip install --no-build-isolation -e .)"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
if ! "$PY" -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1
fi
"$PY" -m kasmina_fast info | tee -a "$out/env.log"

step "copy bandwidth (the floor's yardstick)"
bw=$("$PY" - <<'PY'
import torch
x = torch.empty(2**28, dtype=torch.float32, device="cuda")  # 1 GiB
y = torch.empty_like(x)
for _ in range(3):
    y.copy_(x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(20):
    s.record(); y.copy_(x); e.record(); e.synchronize(); times.append(s.elapsed_time(e) / 1e3)
times.sort()
print(f"{2 * x.numel() * 4 / times[len(times) // 2] / 1e9:.0f}")
PY
)
echo "device-to-device copy: $bw GB/s (read + write)" | tee -a "$out/env.log"

if want tests; then
step "GPU tests"
# (-v: one line per test in tests.log, so a run cut by the timeout still names its
# failures; --durations: what to trim if it is cut)
# (valve's isolate variants change one term of d_host: the CPU runs them all, the GPU the joint ones)
timeout 240 "$PY" -m pytest tests/ops tests/test_backends.py -v -p no:cacheprovider \
  -k "(cuda or triton) and not (test_valve_matches_reference and isolate)" \
  --durations=20 2>&1 | tee "$out/tests.log" | grep -E " (FAILED|ERROR)|^(FAILED|ERROR)|passed|failed" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU TESTS FAILED (see $out/tests.log)"; status=1; }
fi

if want bench; then
step "benchmarks: fused backends vs eager reference, small-slot chains"
timeout 150 "$PY" -m pytest bench -q -p no:cacheprovider -k "not compiled and not overhead and not graft" \
  --benchmark-json="$out/bench.json" >>"$out/bench.log" 2>&1 || { tail -20 "$out/bench.log"; status=1; }
fi

# (two runs: a run cut by its timeout writes no JSON, and the registrations come first)
if want compiled; then
step "benchmarks: torch.compile of the fast ops (cuda and triton backends)"
timeout 150 "$PY" -m pytest bench -q -p no:cacheprovider -k "compiled_fast" \
  --benchmark-json="$out/bench_compiled.json" >>"$out/bench.log" 2>&1 || { tail -5 "$out/bench.log"; status=1; }
step "benchmarks: torch.compile of the reference"
timeout 90 "$PY" -m pytest bench -q -p no:cacheprovider -k "compiled_reference" \
  --benchmark-json="$out/bench_compiled_ref.json" >>"$out/bench.log" 2>&1 || { tail -5 "$out/bench.log"; status=1; }
fi

if want host; then
step "host time per step, by layer (cProfile of tiny steps; full table in bench.log)"
timeout 60 "$PY" -m bench.scripts.host_breakdown --backends reference,cuda,triton --steps 300 \
  >>"$out/bench.log" 2>&1 || status=1
grep -A6 "^==" "$out/bench.log"

step "device time per kernel, learnable blend [256,64,32,32] fp32 (profiler; full table in bench.log)"
for b in cuda triton; do
  timeout 60 "$PY" -m bench.scripts.profile_step --backend "$b" --steps 30 >>"$out/bench.log" 2>&1 || status=1
done
grep -E "^(blend|host time)|kasmina|blend_|sumsq|Memset" "$out/bench.log" | head -24
fi

if want step; then
step "benchmarks: the whole training step, eager and compiled (CNNHost + gated seed + telemetry)"
timeout 240 "$PY" -m pytest bench/test_bench_step.py -q -p no:cacheprovider \
  --benchmark-json="$out/bench_step.json" >>"$out/bench.log" 2>&1 || { tail -5 "$out/bench.log"; status=1; }
fi

step "tables"
files=$(ls "$out"/bench.json "$out"/bench_compiled.json "$out"/bench_compiled_ref.json "$out"/bench_step.json 2>/dev/null)
[ -n "$files" ] && "$PY" -m bench.scripts.summarize $files --bw "$bw" | tee "$out/tables.md"
step "done (status $status)"
exit $status
