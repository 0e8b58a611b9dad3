#!/bin/bash
# usage: ab2.sh ROUNDS FOLDER "label|venv-root|env|args" ...
R=$1; F=$2; shift 2
for r in $(seq $R); do for spec in "$@"; do
 IFS='|' read -r label root envs args <<< "$spec"
 rm -rf ${AB_OUT:-/tmp/ab-out}
 s=$( { env $envs /usr/bin/time -f "%e %U %S %M" $root/.venv/bin/dermsort sort $F --out ${AB_OUT:-/tmp/ab-out} $args >/dev/null 2>/tmp/ab-err; } 2>&1; tail -1 /tmp/ab-err)
 echo "$label: $s"
done; done
