#!/usr/bin/env bash
# The ownership Job's script: gives every entry of the given volumes, their roots included, to
# TARGET_UID:TARGET_GID, proves that nothing is left with another owner, and reports a one-line
# JSON summary on stdout and in the termination message. The Job runs it as
#
#   /bin/bash -c "<this file>" fix-ownership MOUNT_PATH...
#
# as root with only CHOWN, FOWNER and DAC_OVERRIDE. bash, coreutils and findutils only: what the
# database image has; BusyBox's find, chown and date do too (Alpine images), in walks that cost
# more since its find cannot print a character per entry. Environment: TARGET_UID, TARGET_GID;
# TERMINATION_LOG [/dev/termination-log].
#
# Idempotent: only what is not yet uid:gid is changed, so a re-run after an interruption finishes
# the work. Each volume is counted, changed and then proven by a walk after the change. With
# several CPUs its top-level entries are shared among up to `nproc` (max 8) workers, never more
# workers than entries; all count first, then each changes and proves its own share.
set -uo pipefail
shopt -s lastpipe
uid="$TARGET_UID"
gid="$TARGET_GID"
termination_log=${TERMINATION_LOG:-/dev/termination-log}
# Nanoseconds since the epoch: bash's own clock, else date's (BusyBox's has no %N).
now_ns() {
  local t
  if [ -n "${EPOCHREALTIME:-}" ]; then
    t=${EPOCHREALTIME/[.,]/}
    echo "${t}000"
  else
    t=$(date +%s%N)
    if [[ $t =~ ^[0-9]+$ ]]; then echo "$t"; else echo "$(date +%s)000000000"; fi
  fi
}
start=$(now_ns)
status=0
total_scanned=0
total_changed=0
declare -A result
# One field of the JSON summary (paths are the StatefulSet's mount paths).
esc() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  printf '%s' "${s//$'\r'/\\r}"
}
# A path as a find -path pattern that matches only itself.
literal() {
  local s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in '*' | '?' | '[' | ']' | \\) out+="\\$c" ;; *) out+=$c ;; esac
  done
  printf '%s' "$out"
}
workers=$(nproc 2>/dev/null) || workers=1
if ! [[ $workers =~ ^[0-9]+$ ]] || [ "$workers" -lt 1 ]; then workers=1; elif [ "$workers" -gt 8 ]; then workers=8; fi
# -user and -group take numeric IDs in GNU and BusyBox find alike (BusyBox has no -uid, -gid).
wrong=(\( ! -user "$uid" -o ! -group "$gid" \))
prune=()
# GNU find prints one character per entry (-printf); BusyBox's prints whole names, NUL-ended.
# Probed on the first volume, walking nothing (-maxdepth 0).
printf_find=""
probe_find() {
  if [ -z "$printf_find" ]; then
    if find "$1" -maxdepth 0 -printf '' >/dev/null 2>&1; then printf_find=yes; else printf_find=no; fi
  fi
}
# How many entries find lists under the start points and conditions it is given.
count_entries() {
  if [ "$printf_find" = yes ]; then
    find "$@" -printf c | wc -c
  else
    find "$@" -print0 | tr -cd '\0' | wc -c
  fi
}

# find and chown are only ever given explicit start points: without one, find walks the current
# directory (/ in a container) and chown fails.
have_paths() {
  if [ $# -eq 0 ]; then
    echo "runas-migrate: refused to walk without a path (find would start at the current directory)" >&2
    return 1
  fi
}

# Counts what is not uid:gid under the start points: only themselves with "self", whole subtrees
# with "tree". Prints "changed failed".
count() {
  local how=$1 depth=() changed=0 failed=0
  shift
  have_paths "$@" || { echo "0 1"; return; }
  if [ "$how" = self ]; then depth=(-maxdepth 0); fi
  # Counted with wc, not in bash: bash string work is quadratic on big strings.
  changed=$(count_entries "$@" "${depth[@]}" "${prune[@]}" "${wrong[@]}") || failed=1
  echo "$changed $failed"
}

# Changes the start points ("self") or their subtrees ("tree") when the count found something
# wrong (or failed), then proves in one walk that also counts: one line per entry, an x on the
# wrong ones. Prints "scanned left failed" in a single write, so parallel workers do not interleave.
change() {
  local how=$1 changed=$2 count_failed=$3 depth=() recurse=(-R -P) scanned=0 chars=0 left=0 failed=0
  shift 3
  have_paths "$@" || { echo "0 0 1"; return; }
  if [ "$how" = self ]; then depth=(-maxdepth 0); recurse=(); fi
  if [ "$changed" -ne 0 ] || [ "$count_failed" -ne 0 ]; then
    # -P -h: never follow a symlink, change the link itself.
    chown "${recurse[@]}" -h "$uid:$gid" -- "$@" || failed=1
  fi
  if [ "$printf_find" = yes ]; then
    find "$@" "${depth[@]}" "${prune[@]}" \( "${wrong[@]}" -printf 'x\n' -o -printf '\n' \) | wc -lc | read -r scanned chars || failed=1
    left=$((chars - scanned))
  else
    # Two walks: BusyBox's find cannot mark the wrong entries in one.
    scanned=$(count_entries "$@" "${depth[@]}" "${prune[@]}") || failed=1
    left=$(count_entries "$@" "${depth[@]}" "${prune[@]}" "${wrong[@]}") || failed=1
  fi
  echo "$scanned $left $failed"
}

# The start points of work unit k of the current volume: its root alone, the whole volume, or
# share k of the top-level entries (every shares-th from the k-th on).
unit() {
  local k=$1 i
  case $k in
    root) how=self; paths=("$path") ;;
    all) how=tree; paths=("$path") ;;
    *)
      how=tree; paths=()
      for ((i = k; i < ${#entries[@]}; i += shares)); do paths+=("${entries[i]}"); done
      ;;
  esac
}

# One progress line (a prefix and JSON) per stage of each volume, for the run's live view: which
# volume, and the entries done in the volumes finished so far.
volume=0
progress() {
  echo "runas-migrate-progress {\"volume\":$volume,\"volumes\":${#ordered[@]},\"path\":\"$(esc "$path")\",\"stage\":\"$1\",\"toChange\":${2:-null},\"scanned\":$total_scanned,\"changed\":$total_changed}"
}

# Deepest paths first: a volume mounted inside another is done (and counted) before its parent.
mapfile -t ordered < <(printf '%s\n' "$@" | LC_ALL=C sort -r)
for path in "${ordered[@]}"; do
  volume=$((volume + 1))
  if [[ $path != /* ]]; then
    echo "runas-migrate: $path is not an absolute path" >&2; status=1; continue
  fi
  if [ ! -d "$path" ]; then
    echo "runas-migrate: $path is not a mounted directory" >&2; status=1; continue
  fi
  # Volumes mounted inside this one are counted and proven on their own.
  prune=()
  for other in "$@"; do
    if [ "$other" != "$path" ] && [[ $other == "$path"/* ]]; then prune+=(-path "$(literal "$other")" -prune -o); fi
  done
  entries=()
  listed=true
  probe_find "$path"
  mapfile -d '' -t entries < <(find "$path" -mindepth 1 -maxdepth 1 "${prune[@]}" -print0)
  wait $! || listed=false
  skipped=false
  if [ "$listed" = true ] && [ "${#entries[@]}" -eq 0 ]; then
    # Nothing to walk (fresh install), but the new owner must be able to write in its root.
    skipped=true
    echo "$path: empty volume (fresh install): only its root is given to $uid:$gid"
    units=(root)
  elif [ "$listed" = false ] || [ "${#entries[@]}" -gt 4096 ] || [ "${#entries[@]}" -eq 1 ] || [ "$workers" -eq 1 ]; then
    # Unlisted or too many to pass as arguments, or nothing to share: one walk over it all.
    echo "$path: changing what is not owned by $uid:$gid"
    units=(all)
  else
    shares=$((workers < ${#entries[@]} ? workers : ${#entries[@]}))
    echo "$path: changing what is not owned by $uid:$gid ($shares workers)"
    units=(root)
    for ((k = 0; k < shares; k++)); do units+=("$k"); done
  fi
  progress counting
  # All count before any changes: a hard link in two shares then counts as changed in both.
  counted=()
  count_failed=()
  {
    for j in "${!units[@]}"; do
      unit "${units[j]}"
      { printf '%s %s\n' "$j" "$(count "$how" "${paths[@]}")"; } &
    done
    wait
  } | while read -r j c f; do counted[j]=$c; count_failed[j]=$f; done
  changed=0; scanned=0; left=0; failed=0; reports=0
  for j in "${!units[@]}"; do
    if [ -z "${counted[j]:-}" ]; then failed=1; else changed=$((changed + counted[j])); fi
  done
  progress changing "$changed"
  {
    for j in "${!units[@]}"; do
      unit "${units[j]}"
      change "$how" "${counted[j]:-0}" "${count_failed[j]:-1}" "${paths[@]}" &
    done
    wait
  } | while read -r s l f; do
    scanned=$((scanned + s)); left=$((left + l)); failed=$((failed + f)); reports=$((reports + 1))
  done
  if [ "$reports" -ne "${#units[@]}" ]; then failed=1; fi
  if [ "$failed" -ne 0 ]; then
    echo "runas-migrate: could not change ownership under $path" >&2; status=1
  fi
  if [ "$left" -ne 0 ]; then
    echo "runas-migrate: $left entries under $path are still not owned by $uid:$gid" >&2; status=1
  fi
  echo "$path: $scanned entries, $changed changed"
  total_scanned=$((total_scanned + scanned)); total_changed=$((total_changed + changed))
  progress finished "$changed"
  result[$path]="{\"path\":\"$(esc "$path")\",\"skipped\":$skipped,\"scanned\":$scanned,\"changed\":$changed}"
done
paths_json=""
for path in "$@"; do
  if [ -n "${result[$path]:-}" ]; then paths_json+="${result[$path]},"; fi
done
ms=$((($(now_ns) - start) / 1000000))
ok=true; [ "$status" -eq 0 ] || ok=false
summary="{\"ok\":$ok,\"uid\":$uid,\"gid\":$gid,\"scanned\":$total_scanned,\"changed\":$total_changed,\"seconds\":$((ms / 1000)).$(printf '%03d' $((ms % 1000))),\"paths\":[${paths_json%,}]}"
echo "$summary"
{ echo "$summary" >"$termination_log"; } 2>/dev/null || true
exit "$status"
