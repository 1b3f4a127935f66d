# Sourced by the GPU pipeline scripts: `run_stage name command...` runs one stage with its log in $LOG/<name>.log,
# skips it when $LOG/<name>.done exists (a relaunch on a warm machine resumes), prints the log's tail on failure and
# returns the command's status; with $STAGE_LOG_COPY set, the log is also copied there. Messages start with [$TAG].
run_stage() {  # name, command...
  local name=$1; shift
  if [ -f "$LOG/$name.done" ]; then echo "[$TAG] $name: done, skipped"; return 0; fi
  echo "[$TAG] $name: start $(date -u +%H:%M:%S)"
  local t0=$SECONDS rc=0
  if "$@" > "$LOG/$name.log" 2>&1; then
    echo "$((SECONDS - t0)) s" > "$LOG/$name.done"; echo "[$TAG] $name: ok in $((SECONDS - t0)) s"
  else
    rc=1; echo "[$TAG] $name: FAILED after $((SECONDS - t0)) s (see $LOG/$name.log)"; tail -30 "$LOG/$name.log"
  fi
  if [ -n "${STAGE_LOG_COPY:-}" ]; then cp "$LOG/$name.log" "$STAGE_LOG_COPY/" 2>/dev/null; fi
  return $rc
}
