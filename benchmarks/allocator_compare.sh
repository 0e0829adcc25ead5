#!/usr/bin/env bash
# JAX Noise2Atom train step under glibc, mimalloc and jemalloc, one process each (JAX only), with the
# process's page faults and kernel time: bash benchmarks/allocator_compare.sh [glibc mimalloc jemalloc]
set -uo pipefail
cd "$(dirname "$0")/.."
MIENV=$(python -c "from jaxdn.allocator import MIMALLOC_ENV as e; print(' '.join(f'{k}={v}' for k, v in e.items()))")
MI=$(python -c "from jaxdn.allocator import mimalloc_library as m; print(m() or '')")
JE=$(python -c "from jaxdn.allocator import jemalloc_library as j; print(j() or '')")
names=("$@"); [[ $# -eq 0 ]] && names=(glibc mimalloc jemalloc)
for name in "${names[@]}"; do
  case $name in glibc) P="";; mimalloc) P=$MI;; jemalloc) P=$JE;; *) echo "unknown $name"; exit 2;; esac
  if [[ $name != glibc && -z $P ]]; then echo "=== $name: not installed"; continue; fi
  echo "=== $name"
  # the settings jaxdn.allocator gives each allocator
  env JAXDN_ALLOCATOR=system LD_PRELOAD=$P MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 $MIENV \
    /usr/bin/time -f "wall %e user %U sys %S minflt %R maxrss %M" \
    python benchmarks/noise2atom_bench.py speed --variants paper:fastgrad,small --rounds 1 --steps 2 2>&1 | tail -12
done
