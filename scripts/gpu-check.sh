#!/usr/bin/env bash
# Check Nano-SLM's CUDA path on one GPU in under 8 minutes, and measure it:
#   1. the CUDA tests (pytest -m cuda: bf16 and float16 steps against the float32 CPU step, KV cache, compile,
#      CUDA<->CPU checkpoints, resume, one-process torchrun with NCCL); none may fail or skip (bf16 aside on a GPU
#      without it)
#   2. nanoslm bench --json for params.yaml and for the GPU preset params-gpu.yaml: tokens/s, MFU against the
#      measured matmul peak, peak CUDA memory
#   3. a short training run of params-gpu.yaml on the shared sample: validation bits/byte against minutes
# Without a GPU, --dry-run runs what a CPU can (CI runs it): the CUDA tests must be collected and skip, the bench
# flags used here must exist, params-gpu.yaml must validate, and the download stage must read the data.
#
# usage: scripts/gpu-check.sh [--dry-run] [--data DIR] [--out DIR]
#   --data  the stories to train on (default ../shared/data/tinystories, beside the repo)
#   --out   where reports go (default $OUT if set, else a new temporary directory)
# Python: $PYTHON, else .venv/bin/python (make install), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dry=0 data=../shared/data/tinystories out=${OUT:-}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --data) data=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "gpu-check: unknown argument $1 (usage: scripts/gpu-check.sh [--dry-run] [--data DIR] [--out DIR])" >&2
       exit 2 ;;
  esac
  shift
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS
say() { echo "== gpu-check [$((SECONDS - start))s] $*"; }
fail() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
nanoslm() { "$PYTHON" -m nanoslm.cli "$@"; }
"$PYTHON" -c "import nanoslm, torch" || fail "$PYTHON cannot import nanoslm and torch: run make install first"

if [ "$dry" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # a dry run never uses a GPU, even where there is one
  say "dry run (no GPU work) with $PYTHON, reports in $out"
else
  "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
    || fail "torch sees no CUDA GPU here; without one, run scripts/gpu-check.sh --dry-run"
  say "on $("$PYTHON" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, compute \
capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"); reports in $out"
fi

# ---- what the real run depends on, checked first (seconds) ----
say "params-gpu.yaml"
"$PYTHON" - <<'PY' || fail "params-gpu.yaml does not validate"
from nanoslm.config import load_params
from nanoslm.model import GPT
p = load_params("params-gpu.yaml")
m, t = p.model, p.train
n = GPT(m).num_params()
print(f"params-gpu.yaml: {m.n_layer} layers x {m.n_embd}, block {m.block_size}, {n / 1e6:.1f}M params, "
      f"{t.batch_size * t.grad_accum_steps * m.block_size:,} tokens/step, {t.max_iters} steps, {t.optimizer}, "
      f"device {p.hardware.device}, dtype {p.hardware.dtype}")
PY
say "nanoslm bench flags"
help=$(nanoslm bench --help) || fail "nanoslm bench --help failed"
for flag in --params --only --json --steps; do
  grep -q -- "$flag" <<<"$help" || fail "nanoslm bench has no $flag flag any more: update scripts/gpu-check.sh"
done
echo "nanoslm bench has --params --only --json --steps"

work=$out/run
if [ ! -d "$data" ] && [ "$dry" = 1 ]; then  # CI without the sample: the rest still runs
  say "no stories at $data: the real run would stop here (give them with --data DIR); download check skipped"
  data=
elif [ ! -d "$data" ]; then
  fail "no stories at $data; give the shared sample with --data DIR"
fi
stage() { (cd "$work" && "$PYTHON" -P "$repo/stages/$1" "${@:2}"); }
if [ -n "$data" ]; then  # the run's params.yaml: params-gpu.yaml on these stories; its download stage reads them
  data=$(cd "$data" && pwd)
  rm -rf "$work" && mkdir -p "$work"
  "$PYTHON" - "$data" "$work/params.yaml" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params-gpu.yaml"))
params["data"].update(source=sys.argv[1], max_train_stories=None, max_val_stories=None)
yaml.safe_dump(params, open(sys.argv[2], "w"), sort_keys=False)
PY
  say "download stage on $data"
  stage download.py data/raw 2>&1 | grep -v "stories/s" || true
  [ -s "$work/data/raw/train.txt" ] && [ -s "$work/data/raw/validation.txt" ] \
    || fail "the download stage could not read $data"
fi

# ---- 1. the CUDA tests ----
say "CUDA tests (pytest -m cuda)"
set +e
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/ --junitxml="$out/cuda-tests.xml" \
  -o junit_family=xunit1 2>&1 | tail -25
set -e
"$PYTHON" - "$out/cuda-tests.xml" "$dry" <<'PY' || fail "the CUDA tests (see above and $out/cuda-tests.xml)"
import sys, xml.etree.ElementTree as ET
cases = ET.parse(sys.argv[1]).getroot().iter("testcase")
results = {f"{c.get('classname')}::{c.get('name')}": ([x.tag, x.get("message", "")] for x in c)
           for c in cases}
results = {k: next((r for r in v if r[0] in ("skipped", "failure", "error")), ["passed", ""])
           for k, v in results.items()}
bad = {k: v for k, v in results.items() if v[0] in ("failure", "error")}
skipped = {k: v[1] for k, v in results.items() if v[0] == "skipped"}
if sys.argv[2] == "1":  # dry: every one collected, and every one skipped for want of a GPU
    ok = results and len(skipped) == len(results) and all("needs a CUDA GPU" in m for m in skipped.values())
else:  # a GPU: none fails, and only bf16 may skip (on a GPU without it)
    ok = results and not bad and all("no bf16 tensor cores" in m for m in skipped.values())
print(f"{len(results)} CUDA tests: {len(results) - len(skipped) - len(bad)} passed, {len(skipped)} skipped, "
      f"{len(bad)} failed")
for k, m in skipped.items():
    print(f"  skipped {k}: {m}")
sys.exit(0 if ok else 1)
PY

# ---- 2. bench: the default params and the GPU preset ----
bench_report() {  # the JSON's headline figures
  "$PYTHON" - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, s = r["train"], r["sample"]
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {r['device']} {r['dtype']}, {r['model']['params'] / 1e6:.1f}M params; "
      f"train {t['tokens_per_sec']:,.0f} tok/s, MFU {100 * r['mfu']:.1f}% of a measured {r['peak_tflops']:.1f} "
      f"TFLOP/s, peak CUDA {t.get('peak_cuda_gb', 0):.2f} GB, compiled {t['compile']}; "
      f"sampling {s['tokens_per_sec']:,.0f} tok/s (KV cache {s['kv_cache_speedup']:.1f}x)")
PY
}
for preset in params.yaml params-gpu.yaml; do
  cmd=(nanoslm bench --params "$preset" --only train,sample --json)
  if [ "$dry" = 1 ]; then
    say "would run: ${cmd[*]}"
    continue
  fi
  say "${cmd[*]}"
  timeout 150 "$PYTHON" -m nanoslm.cli bench --params "$preset" --only train,sample --json \
    >"$out/bench-${preset%.yaml}.json" || fail "nanoslm bench --params $preset"
  bench_report "$out/bench-${preset%.yaml}.json" | tee -a "$out/summary.txt"
done

# ---- 3. a short training run of the GPU preset on the shared sample ----
if [ "$dry" = 1 ]; then
  say "would run in $work: the tokenize, train and evaluate stages on params-gpu.yaml"
  rm -rf "$work"
  say "dry run ok"
  exit 0
fi
say "tokenize stage"
stage tokenize_stories.py data/raw data/tokens || fail "the tokenize stage"
budget=$((450 - (SECONDS - start)))  # what is left of 7.5 minutes; then SIGINT stops it (Ctrl-C: best.pt is saved)
budget=$((budget < 60 ? 60 : budget > 240 ? 240 : budget))
say "train stage (params-gpu.yaml, stopped after ${budget}s at the latest), then evaluate"
# dvclive's TSVs carry no time: the watcher notes when each validation point appears, in wall-clock minutes
"$PYTHON" - "$PYTHON" "$repo/stages/train.py" "$work" "$budget" <<'PY' || fail "the train stage"
import signal, subprocess, sys, time
python, script, work, budget = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
bpb = f"{work}/dvclive/plots/metrics/val/bpb.tsv"
log = open(f"{work}/train.log", "w")
proc = subprocess.Popen([python, "-P", script, "data/tokens", "models", "dvclive", "plots/loss.png"], cwd=work,
                        stdout=log, stderr=subprocess.STDOUT)
start, seen, points = time.monotonic(), 0, []
while True:
    done = proc.poll() is not None
    try:
        rows = open(bpb).read().splitlines()[1:]
    except OSError:
        rows = []
    for row in rows[seen:]:
        step, value = row.split("\t")
        points.append(((time.monotonic() - start) / 60, int(step), float(value)))
    seen = len(rows)
    if done:
        break
    if time.monotonic() - start > budget and proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        budget = float("inf")
    time.sleep(0.5)
print(open(f"{work}/train.log").read().replace("\r", "\n").splitlines()[-1])
with open(f"{work}/bpb-minutes.tsv", "w") as f:
    f.write("minutes\tstep\tbpb\n" + "".join(f"{m:.3f}\t{s}\t{b}\n" for m, s, b in points))
sys.exit(0 if proc.returncode in (0, 130) and len(points) >= 2 else 1)
PY
stage evaluate.py models/best.pt data/tokens metrics/eval.json || fail "the evaluate stage"
"$PYTHON" - "$work" <<'PY' | tee -a "$out/summary.txt"
import csv, json, sys
work = sys.argv[1]
rows = list(csv.DictReader(open(f"{work}/bpb-minutes.tsv"), delimiter="\t"))
print("validation bits/byte against wall-clock minutes since the train stage started (params-gpu.yaml, shared "
      "sample; the first point comes after start-up and compile):")
print("  minutes  step  val bpb")
for r in rows:
    print(f"  {float(r['minutes']):7.2f}  {int(r['step']):4d}  {float(r['bpb']):.4f}")
first, last = rows[0], rows[-1]
minutes = float(last["minutes"]) - float(first["minutes"])
drop = float(first["bpb"]) - float(last["bpb"])
exact = json.load(open(f"{work}/metrics/eval.json"))["bits_per_byte"]
print(f"  {drop:.3f} bits/byte lower in {minutes:.2f} min of training ({drop / max(minutes, 1e-9):.3f} per minute); "
      f"best.pt scores {exact:.4f} bits/byte on the whole validation split")
PY
say "done in $((SECONDS - start))s; reports in $out (summary.txt, cuda-tests.xml, bench-*.json, run/)"
