#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer + AddressSanitizer) of every reader of untrusted
# bytes: builds one driver (Fuzz/Driver, the targets are Fuzz/Targets), writes the seed
# corpora, then runs each target for SECONDS_PER_TARGET seconds (default 60).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Targets: safetensors st-index config tokenizer gguf llama2c llama2c-tok sentencepiece lmpk gate.
# Corpora grow in .build/fuzz/corpus/<target> (seeds: .build/fuzz/seeds, regenerated
# each run; Fuzz/regressions/<target> are read too). A crash, timeout (>10 s) or RSS
# above 1 GB fails the run; its input is left in .build/fuzz/crashes/<target>/. Minimize:
#   LMFUZZ_TARGET=T .build/fuzz/debug/lmfuzz -minimize_crash=1 -runs=20000 -exact_artifact_path=OUT CRASH
# and commit OUT under Fuzz/regressions/T/ (replayed by FuzzRegressionTests).
set -uo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
shift || true
ALL=(safetensors st-index config tokenizer gguf llama2c llama2c-tok sentencepiece lmpk shard-manifest gate)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
OUT=.build/fuzz
BIN=$OUT/debug/lmfuzz

start=$(date +%s)
echo "fuzz: building $BIN (--sanitize=fuzzer,address)"
LMKIT_FUZZ=1 swift build --build-path "$OUT" --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address --product lmfuzz > "$OUT.build.log" 2>&1
rc=$?
grep -v "warning: Cannot export local symbol" "$OUT.build.log" | tail -3
if [ $rc -ne 0 ]; then echo "fuzz: build failed (log: $OUT.build.log)" >&2; exit 2; fi

SHARED="${LMKIT_SHARED:-$(cd .. && pwd)/shared}"
[ -d "$SHARED/models" ] || SHARED=""
rm -rf "$OUT/seeds"
ASAN_OPTIONS=detect_leaks=0 LMKIT_SHARED="$SHARED" LMFUZZ_MAKE_CORPUS="$OUT/seeds" "$BIN" > /dev/null || { echo "fuzz: seed corpus generation failed" >&2; exit 2; }
echo "fuzz: built and seeded in $(( $(date +%s) - start )) s"

failed=()
printf '%-14s %10s %8s %6s  %s\n' target executions exec/s cov result
for t in "${TARGETS[@]}"; do
  mkdir -p "$OUT/corpus/$t" "$OUT/crashes/$t" "$OUT/logs"
  dirs=("$OUT/corpus/$t" "$OUT/seeds/$t")
  if [ -d "Fuzz/regressions/$t" ]; then
    # Regression inputs join the corpus, except known crashes awaiting a fix (listed in PENDING).
    rm -rf "$OUT/regress/$t"; mkdir -p "$OUT/regress/$t"
    for f in Fuzz/regressions/"$t"/*; do
      n=$(basename "$f")
      [ "$n" = PENDING ] && continue
      if [ -f "Fuzz/regressions/$t/PENDING" ] && grep -q "^$n " "Fuzz/regressions/$t/PENDING"; then
        echo "fuzz: $t: skipping known crash $n (Fuzz/regressions/$t/PENDING)"; continue
      fi
      cp "$f" "$OUT/regress/$t/"
    done
    dirs+=("$OUT/regress/$t")
  fi
  log="$OUT/logs/$t.log"
  scratch=$( [ -d /dev/shm ] && echo /dev/shm || echo "${TMPDIR:-/tmp}" )/lmfuzz-$$-$t
  LMFUZZ_SCRATCH="$scratch" SWIFT_BACKTRACE=enable=no LMFUZZ_TARGET="$t" ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}" "$BIN" \
    -max_total_time="$SECS" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=10 -detect_leaks=0 \
    -print_final_stats=1 -artifact_prefix="$OUT/crashes/$t/" "${dirs[@]}" > "$log" 2>&1
  rc=$?
  rm -rf "$scratch"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  if [ $rc -eq 0 ]; then res=ok; else res="FAILED (exit $rc; log $log; input in $OUT/crashes/$t/)"; failed+=("$t"); fi
  printf '%-14s %10s %8s %6s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "${cov:-?}" "$res"
  if [ $rc -ne 0 ]; then grep -E "ERROR: |SUMMARY|Fatal error|#[0-9]+ 0x" "$log" | head -25; fi
done
echo "fuzz: total $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then echo "fuzz: failures in: ${failed[*]}" >&2; exit 1; fi
