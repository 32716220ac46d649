#!/usr/bin/env bash
# The 1-16 thread curve of issue 5 (item 3) on a machine with more cores than
# this project's 2-core box: the linear layer and the four conv layers, sparse
# vs dense torch at each thread count, in the same process run.
#
# Written for a lent machine without network: its preinstalled python3 holds
# numpy and torch; the build tools this checkout needs (meson-python,
# pyproject-metadata, meson, Cython) come as wheels in ./.whl, fetched where
# pip works with (python version and platform of the target machine):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       meson-python==0.22.1 pyproject-metadata==0.12.1 meson==1.12.1 Cython==3.3.1
# Builds sparseprop, prints `python -m sparseprop info`, runs
#   bench_linear.py --threads 1 2 4 8 16 (sparsity 0.8 0.9 0.95 0.98 0.99)
#   bench_conv.py   --threads 1 2 4 8 16 (four layers, 0.8 0.9 0.95 0.99, auto;
#                    56x56 also with both algorithms)
# and copies the JSON results and the logs to $OUT (default /tmp/many_core).
# PARTS (default "layers") picks what runs after the build: "layers" (the two
# benchmarks above) and/or "e2e": examples/paper_speed.py for BERT-base 97%
# at 2 threads with its profile, then the default models at 16 threads
# (--no-memory; `transformers` must be installed there), JSON in $OUT; and/or
# "wait": the 7x7 conv at 1-16 threads with OMP_WAIT_POLICY unset, =passive
# and =active (how much of a small call's time at many threads is waking the
# OpenMP team), logs only.
# Takes about 2 minutes on 2 cores with THREADS="1 2", under 3 on the 16-core Xeon.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-/tmp/many_core}"
THREADS="${THREADS:-1 2 4 8 16}"
PARTS="${PARTS:-layers}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{ nproc; lscpu; } > "$OUT/lscpu.txt" 2>&1
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/site "$REPO"/.whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
fi
start=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --target /tmp/sp "$REPO" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "# build: $(( $(date +%s) - start )) s"
export PYTHONPATH="/tmp/sp${PYTHONPATH:+:$PYTHONPATH}"
cd /tmp || exit 1
python3 -m sparseprop info 2>&1 | tee "$OUT/info.txt"
python3 -c "import threadpoolctl, torch, sparseprop, pprint; \
pprint.pprint(threadpoolctl.threadpool_info())" > "$OUT/threadpools.txt" 2>&1
if [[ " $PARTS " == *" layers "* ]]; then
    # shellcheck disable=SC2086
    python3 "$REPO/benchmarks/bench_linear.py" --threads $THREADS \
        --sparsities 0.8 0.9 0.95 0.98 0.99 --repeats 7 --out linear_16core 2>&1 | tee "$OUT/linear.log"
    cp "$REPO/benchmarks/results/linear_16core.json" "$OUT/" 2>/dev/null
    # shellcheck disable=SC2086
    python3 "$REPO/benchmarks/bench_conv.py" --threads $THREADS --layers 56x56 \
        --sparsities 0.8 0.9 0.95 0.99 --algorithms auto batch_last over_width --repeats 7 \
        --out conv_16core_56x56 2>&1 | tee "$OUT/conv56.log"
    cp "$REPO/benchmarks/results/conv_16core_56x56.json" "$OUT/" 2>/dev/null
    # shellcheck disable=SC2086
    python3 "$REPO/benchmarks/bench_conv.py" --threads $THREADS --layers 7x7 56x56s2 1x1 \
        --sparsities 0.8 0.9 0.95 0.99 --algorithms auto --repeats 7 \
        --out conv_16core_others 2>&1 | tee "$OUT/conv_others.log"
    cp "$REPO/benchmarks/results/conv_16core_others.json" "$OUT/" 2>/dev/null
fi
if [[ " $PARTS " == *" e2e "* ]]; then
    python3 "$REPO/examples/paper_speed.py" --models bert --sparsities 0.97 --threads 2 \
        --profile --no-memory --json "$OUT/e2e_bert97_2threads.json" 2>&1 | tee "$OUT/e2e_bert.log"
    python3 "$REPO/examples/paper_speed.py" --threads 16 --no-memory \
        --json "$OUT/e2e_16threads.json" 2>&1 | tee "$OUT/e2e_16.log"
fi
if [[ " $PARTS " == *" wait "* ]]; then
    for policy in unset passive active; do
        echo "# OMP_WAIT_POLICY=$policy"
        if [ "$policy" = unset ]; then policy_env=(); else policy_env=(OMP_WAIT_POLICY=$policy); fi
        # shellcheck disable=SC2086
        env "${policy_env[@]}" python3 "$REPO/benchmarks/bench_conv.py" --threads $THREADS \
            --layers 7x7 --sparsities 0.9 0.99 --algorithms auto --repeats 15 --out '' \
            2>&1 | tee "$OUT/wait_$policy.log"
    done
fi
echo "# total: $(( $(date +%s) - start )) s"
