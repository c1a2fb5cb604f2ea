#!/usr/bin/env bash
# funcs.sh LABEL: the worker's inclusive Ir for the functions on the changed paths.
f=$(ls /tmp/mcg/$1/cg.* | sort -t. -k2 -n | tail -1)
callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null \
  | grep -E '^ *[0-9,]+ \([ 0-9.]+%\)  .*\[/work/wt/m-bin/' \
  | grep -E ':foreman::worker::accept::.*::(accept|accept_from|admit|limit_per_ip) |handshake::.*::(try_head|http_response) |codec::(decode_own|reframe) |foreman::api::owns |dispatch ' \
  | sed -E 's/^ *([0-9,]+) \([ 0-9.]+%\)  ([^:]*):(.*) \[.*$/\1\t\3/' \
  | awk -v l=$1 -F'\t' '{print l"\t"$1"\t"$2}'
