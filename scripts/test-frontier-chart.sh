#!/usr/bin/env bash
# Tests scripts/frontier-chart.py on tiny TSVs in a temp dir: the SVG parses as XML, has one
# marker (<title> tooltip, class="point") per distinct (model, scheme, method), is byte-identical
# across runs, and malformed inputs exit 2 naming file:line and leave no output (nor temp files).
set -uo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/frontier-chart.py"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
fails=0
ok()   { echo "ok   $1"; }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }
check() { local name="$1"; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }

H=$'model\tscheme\tmethod\tbits_per_weight\tppl\tppl_ratio\tmean_kl\ttop1'
{
  echo "$H"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    m1 int4-g32 rtn 5.637 3.70 1.0747 0.0742 0.8725 \
    m1 int4-g32 gptq 5.637 nan 1.0471 0.0465 0.8963 \
    m1 int4s-g128 rtn 4.946 nan 1.1262 0.1185 0.8409 \
    m1 int3-g64 awq 4.5 nan 1.30 0.2 0.8 \
    m1 int8 rtn 8.5 nan 0.9995 0.0001 0.999 \
    m1 int4-g32 rtn 5.637 3.69 1.0700 0.0700 0.8800 \
    m2 int2-g32 newmethod 3.5 nan 2.5 0.9 0.5 \
    m2 f16 alloc 16 nan 1.0 0 1
} > "$T/a.tsv"
printf '%s\n%s\n' "$H" $'m2\tint4-g128\tgptq\t5.075\tnan\t1.4656\t0.3769\t0.6574' > "$T/b.tsv"
ROWS=8  # 9 data rows; one replaces an earlier (m1, int4-g32, rtn)

python3 "$SCRIPT" -o "$T/out.svg" --title "m1=Model one" "$T/a.tsv" "$T/b.tsv"
check "renders (exit 0)" [ $? -eq 0 -a -s "$T/out.svg" ]
check "parses as XML" python3 -c "import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])" "$T/out.svg"
n=$(grep -o '<title>' "$T/out.svg" | wc -l); check "one <title> per row ($n == $ROWS)" [ "$n" -eq $ROWS ]
n=$(grep -o 'class="point"' "$T/out.svg" | wc -l); check "one marker per row ($n == $ROWS)" [ "$n" -eq $ROWS ]
check "replacement row wins" grep -q 'PPL ratio 1.0700' "$T/out.svg"
check "replaced row gone" bash -c "! grep -q 'PPL ratio 1.0747' '$T/out.svg'"
check "two panels" [ "$(grep -o 'class="panel"' "$T/out.svg" | wc -l)" -eq 2 ]
check "custom title" grep -q '>Model one</text>' "$T/out.svg"
check "non-positive increase marked" grep -q '≤0' "$T/out.svg"
python3 "$SCRIPT" -o "$T/out2.svg" --title "m1=Model one" "$T/a.tsv" "$T/b.tsv"
check "deterministic (same bytes twice)" cmp -s "$T/out.svg" "$T/out2.svg"

# Malformed inputs: exit 2, message names file:line, no output file, no temp file left behind.
bad() {  # name, expected "file:line" substring, tsv content
  local name="$1" where="$2" f="$T/$1.tsv" out="$T/bad-$1.svg"
  printf '%s' "$3" > "$f"
  python3 "$SCRIPT" -o "$out" "$f" 2> "$T/err"
  local rc=$?
  check "$name: exit 2 (got $rc)" [ $rc -eq 2 ]
  check "$name: message names $where" grep -q "$where" "$T/err"
  check "$name: no output" [ ! -e "$out" ]
  echo "     $(cat "$T/err")"
}
bad nonnumeric "nonnumeric.tsv:3" "$H"$'\nm\tint4-g32\trtn\t5.6\tnan\t1.1\t0.1\t0.8\nm\tint4-g128\trtn\tfive\tnan\t1.1\t0.1\t0.8\n'
bad missingcol "missingcol.tsv:1" $'model\tscheme\tmethod\tbits_per_weight\tppl\tppl_ratio\ttop1\nm\tint4-g32\trtn\t5.6\tnan\t1.1\t0.8\n'
bad empty "empty.tsv:1" ""
bad headeronly "headeronly.tsv:2" "$H"$'\n'
bad nanratio "nanratio.tsv:2" "$H"$'\nm\tint4-g32\trtn\t5.6\tnan\tnan\t0.1\t0.8\n'
bad shortrow "shortrow.tsv:2" "$H"$'\nm\tint4-g32\trtn\t5.6\n'
check "no temp files left" [ -z "$(ls -A "$T" | grep '^\.frontier-')" ]

# A failing run leaves an existing output untouched.
cp "$T/out.svg" "$T/keep.svg"
python3 "$SCRIPT" -o "$T/out.svg" "$T/nonnumeric.tsv" 2>/dev/null
check "failed run keeps existing output" cmp -s "$T/out.svg" "$T/keep.svg"

if [ $fails -eq 0 ]; then echo "all frontier-chart tests passed"; else echo "$fails frontier-chart test(s) failed"; exit 1; fi
