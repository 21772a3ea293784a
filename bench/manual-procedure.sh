#!/usr/bin/env bash
# The vendor's manual procedure ("Manual recovery: change user IDs with strict security
# policies", ITRS Analytics), executed literally as an operator pasting its steps one after the
# other: its kubectl commands, in its order, nothing in parallel that the manual runs one by one.
# It is the baseline that bench/window.ts measures runas-migrate against.
#
#   bench/manual-procedure.sh NAMESPACE TARGET_UID TARGET_GID
#
# kubectl on PATH, KUBECONFIG set. Optional environment:
#   CONSTRAINTS        Gatekeeper constraints to exclude the namespace from, as kind/name
#                      ["k8spspcapabilities/drop-all k8spspallowedusers/allowed-user-ranges"]
#   TABLESPACES        timescale.timeseriesDiskCount [2]
#   VERSION            platform version tag of the Job images [2.17.0]
#   SETTLE_SECONDS     the manual's "sleep 60" before waiting for the platform [60]
#   HELM_WAIT          whether to wait for the rollout after the security context change, as the
#                      manual's `helm upgrade --wait` does [true]. With real databases that wait
#                      cannot succeed: the upgraded pods run as the new IDs on files the Jobs have
#                      not changed yet, so they crash until the end (false: go on, as an operator
#                      must)
#   JOB_TIMEOUT        the manual's `kubectl wait` timeout for each Job [600s]
#   JOB_NODE_SELECTOR  key=value added to each Job's pod (where the Jobs may run) []
#   JOB_TOLERATION_KEY key of a NoSchedule toleration added to each Job's pod []
#
# Where the manual cannot be followed to the letter, the deviation is commented at that step:
# `helm upgrade` becomes the equivalent `kubectl patch` (the values the manual sets), a
# constraint without an excludedNamespaces list gets one (the manual's `add .../-` fails there)
# and loses it again at the restore, and the Jobs are deleted at the end.
#
# All command output goes to stderr; stdout carries only these lines, for the measurement:
#   first-policy-change <epoch seconds>   just before the namespace is relabelled
#   last-policy-restore <epoch seconds>   just after the last constraint patch of the restore
set -euo pipefail

NS=${1:?usage: manual-procedure.sh NAMESPACE TARGET_UID TARGET_GID}
TARGET_UID=${2:?target uid}
TARGET_GID=${3:?target gid}
CONSTRAINTS=${CONSTRAINTS:-k8spspcapabilities/drop-all k8spspallowedusers/allowed-user-ranges}
TABLESPACES=${TABLESPACES:-2}
VERSION=${VERSION:-2.17.0}
SETTLE_SECONDS=${SETTLE_SECONDS:-60}
JOB_TIMEOUT=${JOB_TIMEOUT:-600s}
JOB_NODE_SELECTOR=${JOB_NODE_SELECTOR:-}
JOB_TOLERATION_KEY=${JOB_TOLERATION_KEY:-}
HELM_WAIT=${HELM_WAIT:-true}

exec 3>&1 1>&2
started=$EPOCHREALTIME
step() { printf '[manual +%ss] %s\n' "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')" "$*"; }
mark() { printf '%s %s\n' "$1" "$EPOCHREALTIME" >&3; }
manifests=$(mktemp -d)
trap 'rm -rf "$manifests"' EXIT

# The operator notes the replica counts to scale back to ("use your original replica count").
PG_REPLICAS=$(kubectl get statefulset pgplatform -n "$NS" -o jsonpath='{.spec.replicas}')
TS_REPLICAS=$(kubectl get statefulset timescale -n "$NS" -o jsonpath='{.spec.replicas}')

# --- Update security context configuration -------------------------------------------------
# `helm upgrade iax itrs/iax-platform --values values.yaml --wait` with the manual's values; the
# test bed has no Helm release, so the same pod securityContext is patched in and `--wait` is
# the rollout wait.
step "update the security context to ${TARGET_UID}:${TARGET_GID}"
patch=$(printf '{"spec":{"template":{"spec":{"securityContext":{"runAsUser":%s,"runAsGroup":%s,"supplementalGroups":[%s],"fsGroup":%s,"fsGroupChangePolicy":"OnRootMismatch"}}}}}' \
  "$TARGET_UID" "$TARGET_GID" "$TARGET_GID" "$TARGET_GID")
kubectl patch statefulset pgplatform -n "$NS" --type strategic -p "$patch"
kubectl patch statefulset timescale -n "$NS" --type strategic -p "$patch"
if [ "$HELM_WAIT" = true ]; then
  kubectl rollout status statefulset/pgplatform -n "$NS" --timeout=600s
  kubectl rollout status statefulset/timescale -n "$NS" --timeout=600s
fi

# --- Temporarily relax security policies ---------------------------------------------------
step "relax Pod Security Admission"
mark first-policy-change
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=privileged --overwrite
kubectl get namespace "$NS" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}'
echo

step "exclude ${NS} from the Gatekeeper constraints"
kubectl get constraints -A
created_lists=()
for constraint in $CONSTRAINTS; do
  kind=${constraint%%/*} name=${constraint#*/}
  if ! kubectl patch "$kind" "$name" --type=json -p="[
    {
      \"op\": \"add\",
      \"path\": \"/spec/match/excludedNamespaces/-\",
      \"value\": \"$NS\"
    }
  ]"; then
    # The manual's `add .../-` fails when the constraint has no excludedNamespaces list yet:
    # the operator creates the list, and takes it away again at the restore.
    kubectl patch "$kind" "$name" --type=json \
      -p="[{\"op\": \"add\", \"path\": \"/spec/match/excludedNamespaces\", \"value\": [\"$NS\"]}]"
    created_lists+=("$constraint")
  fi
done
kubectl get constraints -o yaml | grep -A 5 excludedNamespaces

# --- Run ownership migration jobs ------------------------------------------------------------
step "write the Job manifests"
placement() {
  if [ -n "$JOB_NODE_SELECTOR" ]; then
    printf '      nodeSelector:\n        %s: "%s"\n' "${JOB_NODE_SELECTOR%%=*}" "${JOB_NODE_SELECTOR#*=}"
  fi
  if [ -n "$JOB_TOLERATION_KEY" ]; then
    printf '      tolerations:\n      - key: %s\n        operator: Exists\n        effect: NoSchedule\n' "$JOB_TOLERATION_KEY"
  fi
}

# postgres-migration-job-<i>.yaml, the manual's manifest with its placeholders filled in.
postgres_job() {
  local i=$1
  cat <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: postgres-ownership-migration-$i
  namespace: $NS
  annotations:
    iax.itrsgroup.com/delete-after-install: "true"
spec:
  backoffLimit: 3
  activeDeadlineSeconds: 21600
  template:
    metadata:
      labels:
        iax.itrsgroup.com/pre-upgrade-job: "true"
    spec:
      restartPolicy: Never
$(placement)
      securityContext:
        runAsUser: 0
        runAsGroup: 0
      containers:
      - name: fix-ownership
        image: proxy.itrsgroup.com/proxy/itrs-analytics/docker.itrsgroup.com/iax/postgres:$VERSION
        imagePullPolicy: IfNotPresent
        securityContext:
          runAsNonRoot: false
          allowPrivilegeEscalation: false
          capabilities:
            add:
            - CHOWN
            - FOWNER
            - DAC_OVERRIDE
            - DAC_READ_SEARCH
            drop:
            - ALL
          seccompProfile:
            type: RuntimeDefault
        env:
        - name: TARGET_UID
          value: "$TARGET_UID"
        - name: TARGET_GID
          value: "$TARGET_GID"
        - name: REPLICA_INDEX
          value: "$i"
        command:
        - /bin/bash
        - -c
        - |
          set -e

          echo "Starting ownership migration for PostgreSQL replica \${REPLICA_INDEX}"
          echo "Target ownership: \${TARGET_UID}:\${TARGET_GID}"

          PGDATA="/var/lib/postgresql/data"

          # Check if data directory is empty (fresh install, skip migration)
          if [ ! -d "\${PGDATA}" ] || [ -z "\$(ls -A \${PGDATA} 2>/dev/null)" ]; then
            echo "Data directory is empty - skipping migration (fresh install)"
            exit 0
          fi

          # Get current ownership of PGDATA
          CURRENT_UID=\$(stat -c '%u' "\${PGDATA}")
          CURRENT_GID=\$(stat -c '%g' "\${PGDATA}")

          echo "Current PGDATA ownership: \${CURRENT_UID}:\${CURRENT_GID}"

          # Check if migration is needed
          if [ "\${CURRENT_UID}" = "\${TARGET_UID}" ] && [ "\${CURRENT_GID}" = "\${TARGET_GID}" ]; then
            echo "Ownership already correct - skipping migration"
            exit 0
          else
            echo "Migration required from \${CURRENT_UID}:\${CURRENT_GID} to \${TARGET_UID}:\${TARGET_GID}"
            echo "Changing ownership (may take several minutes for large databases)..."
            chown -R "\${TARGET_UID}:\${TARGET_GID}" "\${PGDATA}"
            echo "Migration completed"
          fi

          echo ""
          echo "Migration completed successfully for replica \${REPLICA_INDEX}"
          echo "Final ownership: \$(stat -c '%u:%g' \${PGDATA})"
          echo "Note: Permissions will be fixed by the pod startup script"
        volumeMounts:
        - name: pgdata
          mountPath: /var/lib/postgresql
      volumes:
      - name: pgdata
        persistentVolumeClaim:
          claimName: data-pgplatform-$i
YAML
}

# The manual's commented tablespace section, uncommented once per tablespace as it instructs.
tablespace_script() {
  local t
  for t in $(seq 1 "$TABLESPACES"); do
    cat <<SH
          TABLESPACE="/var/lib/postgresql/tablespaces/timeseries_tablespace_$t"
          echo "Processing tablespace volume $t: \${TABLESPACE}"
          if [ ! -d "\${TABLESPACE}/data" ] || [ -z "\$(ls -A \${TABLESPACE}/data 2>/dev/null)" ]; then
            echo "Tablespace $t is empty - skipping"
          else
            CURRENT_UID=\$(stat -c '%u' "\${TABLESPACE}/data")
            CURRENT_GID=\$(stat -c '%g' "\${TABLESPACE}/data")
            echo "Current ownership: \${CURRENT_UID}:\${CURRENT_GID}"
            if [ "\${CURRENT_UID}" != "\${TARGET_UID}" ] || [ "\${CURRENT_GID}" != "\${TARGET_GID}" ]; then
              echo "Migration required from \${CURRENT_UID}:\${CURRENT_GID} to \${TARGET_UID}:\${TARGET_GID}"
              MIGRATION_NEEDED=true
              echo "Changing tablespace $t ownership..."
              chown -R "\${TARGET_UID}:\${TARGET_GID}" "\${TABLESPACE}"
              echo "Tablespace $t migration completed"
            else
              echo "Ownership already correct"
            fi
          fi
          echo ""
SH
  done
}

# timescale-migration-job-<i>.yaml, the manual's manifest with its placeholders filled in.
timescale_job() {
  local i=$1 t
  cat <<YAML
apiVersion: batch/v1
kind: Job
metadata:
  name: timescale-ownership-migration-$i
  namespace: $NS
  annotations:
    iax.itrsgroup.com/delete-after-install: "true"
spec:
  backoffLimit: 3
  activeDeadlineSeconds: 21600
  template:
    metadata:
      labels:
        iax.itrsgroup.com/pre-upgrade-job: "true"
    spec:
      restartPolicy: Never
$(placement)
      securityContext:
        runAsUser: 0
        runAsGroup: 0
      containers:
      - name: fix-ownership
        image: proxy.itrsgroup.com/proxy/itrs-analytics/docker.itrsgroup.com/iax/timescale:$VERSION
        imagePullPolicy: IfNotPresent
        securityContext:
          runAsNonRoot: false
          allowPrivilegeEscalation: false
          capabilities:
            add:
            - CHOWN
            - FOWNER
            - DAC_OVERRIDE
            - DAC_READ_SEARCH
            drop:
            - ALL
          seccompProfile:
            type: RuntimeDefault
        env:
        - name: TARGET_UID
          value: "$TARGET_UID"
        - name: TARGET_GID
          value: "$TARGET_GID"
        - name: REPLICA_INDEX
          value: "$i"
        command:
        - /bin/bash
        - -c
        - |
          set -e

          echo "Starting ownership migration for TimescaleDB replica \${REPLICA_INDEX}"
          echo "Target ownership: \${TARGET_UID}:\${TARGET_GID}"
          echo ""

          MIGRATION_NEEDED=false

          # Process data volume
          PGDATA="/var/lib/postgresql/data"
          echo "Processing data volume: \${PGDATA}"

          if [ ! -d "\${PGDATA}" ] || [ -z "\$(ls -A \${PGDATA} 2>/dev/null)" ]; then
            echo "Data directory is empty - skipping (fresh install)"
          else
            # Get current ownership
            CURRENT_UID=\$(stat -c '%u' "\${PGDATA}")
            CURRENT_GID=\$(stat -c '%g' "\${PGDATA}")
            echo "Current ownership: \${CURRENT_UID}:\${CURRENT_GID}"

            if [ "\${CURRENT_UID}" = "\${TARGET_UID}" ] && [ "\${CURRENT_GID}" = "\${TARGET_GID}" ]; then
              echo "Ownership already correct"
            else
              echo "Migration required from \${CURRENT_UID}:\${CURRENT_GID} to \${TARGET_UID}:\${TARGET_GID}"
              echo "Changing ownership (may take several minutes for large databases)..."
              MIGRATION_NEEDED=true
              chown -R "\${TARGET_UID}:\${TARGET_GID}" "\${PGDATA}"
              echo "Data volume migration completed"
            fi
          fi
          echo ""

          # Process WAL volume
          PGWAL="/var/lib/postgresql/wal/pg_wal"
          echo "Processing WAL volume: \${PGWAL}"

          if [ ! -d "\${PGWAL}" ] || [ -z "\$(ls -A \${PGWAL} 2>/dev/null)" ]; then
            echo "WAL directory is empty - skipping (fresh install)"
          else
            # Get current ownership
            CURRENT_UID=\$(stat -c '%u' "\${PGWAL}")
            CURRENT_GID=\$(stat -c '%g' "\${PGWAL}")
            echo "Current ownership: \${CURRENT_UID}:\${CURRENT_GID}"

            if [ "\${CURRENT_UID}" = "\${TARGET_UID}" ] && [ "\${CURRENT_GID}" = "\${TARGET_GID}" ]; then
              echo "Ownership already correct"
            else
              echo "Migration required from \${CURRENT_UID}:\${CURRENT_GID} to \${TARGET_UID}:\${TARGET_GID}"
              MIGRATION_NEEDED=true

              echo "Changing WAL ownership (this is fast)..."
              chown -R "\${TARGET_UID}:\${TARGET_GID}" "\${PGWAL}"
              echo "WAL volume migration completed"
            fi
          fi
          echo ""

$(tablespace_script)

          if [ "\${MIGRATION_NEEDED}" = "false" ]; then
            echo "No migration needed for replica \${REPLICA_INDEX}"
          else
            echo "Replica \${REPLICA_INDEX} migrated successfully"
          fi
          echo "Note: Permissions will be fixed by the pod startup script"
        volumeMounts:
        - name: tsdata
          mountPath: /var/lib/postgresql
        - name: tswal
          mountPath: /var/lib/postgresql/wal
YAML
  for t in $(seq 1 "$TABLESPACES"); do
    printf '        - name: tablespace-%s\n          mountPath: /var/lib/postgresql/tablespaces/timeseries_tablespace_%s\n' "$t" "$t"
  done
  cat <<YAML
      volumes:
      - name: tsdata
        persistentVolumeClaim:
          claimName: timescale-ha-data-timescale-$i
      - name: tswal
        persistentVolumeClaim:
          claimName: timescale-ha-wal-timescale-$i
YAML
  for t in $(seq 1 "$TABLESPACES"); do
    printf '      - name: tablespace-%s\n        persistentVolumeClaim:\n          claimName: timescale-ha-tablespace-data-%s-timescale-%s\n' "$t" "$t" "$i"
  done
}

for ((i = 0; i < PG_REPLICAS; i++)); do postgres_job "$i" >"$manifests/postgres-migration-job-$i.yaml"; done
for ((i = 0; i < TS_REPLICAS; i++)); do timescale_job "$i" >"$manifests/timescale-migration-job-$i.yaml"; done

step "apply the Jobs"
for ((i = 0; i < PG_REPLICAS; i++)); do kubectl apply -f "$manifests/postgres-migration-job-$i.yaml"; done
for ((i = 0; i < TS_REPLICAS; i++)); do kubectl apply -f "$manifests/timescale-migration-job-$i.yaml"; done

step "wait for the Jobs to complete"
for ((i = 0; i < PG_REPLICAS; i++)); do
  kubectl wait --for=condition=complete --timeout="$JOB_TIMEOUT" "job/postgres-ownership-migration-$i" -n "$NS"
done
for ((i = 0; i < TS_REPLICAS; i++)); do
  kubectl wait --for=condition=complete --timeout="$JOB_TIMEOUT" "job/timescale-ownership-migration-$i" -n "$NS"
done

step "check the Job logs"
for ((i = 0; i < PG_REPLICAS; i++)); do kubectl logs -n "$NS" "job/postgres-ownership-migration-$i"; done
for ((i = 0; i < TS_REPLICAS; i++)); do kubectl logs -n "$NS" "job/timescale-ownership-migration-$i"; done

# --- Scaling StatefulSets to apply new ownership ---------------------------------------------
step "scale down"
kubectl scale statefulset pgplatform -n "$NS" --replicas=0
kubectl scale statefulset timescale -n "$NS" --replicas=0
kubectl wait --for=delete pod -l app=pgplatform -n "$NS" --timeout=120s
kubectl wait --for=delete pod -l app=timescale -n "$NS" --timeout=120s

step "scale up to ${PG_REPLICAS} and ${TS_REPLICAS}"
kubectl scale statefulset pgplatform -n "$NS" --replicas="$PG_REPLICAS"
kubectl scale statefulset timescale -n "$NS" --replicas="$TS_REPLICAS"

step "wait for the platform (sleep ${SETTLE_SECONDS})"
sleep "$SETTLE_SECONDS"
kubectl wait --timeout=600s iaxplatform/iax-iax-platform --for jsonpath="{.status.status}"=DEPLOYED -n "$NS"

# --- Verify system health --------------------------------------------------------------------
# Each check is run as written; the simulated database pods answer exec and logs with an
# error, which the operator reads and goes on.
step "verify system health"
check() { "$@" || echo "(check failed: $*)"; }
kubectl get pods -n "$NS"
check kubectl exec -n "$NS" pgplatform-0 -c postgres -- stat -c '%u:%g' /var/lib/postgresql/data
check kubectl exec -n "$NS" timescale-0 -c timescale -- stat -c '%u:%g' /var/lib/postgresql/data
check kubectl exec -n "$NS" timescale-0 -c timescale -- stat -c '%u:%g' /var/lib/postgresql/wal/pg_wal
if [ "$TABLESPACES" -gt 0 ]; then
  check kubectl exec -n "$NS" timescale-0 -c timescale -- stat -c '%u:%g' /var/lib/postgresql/tablespaces/timeseries_tablespace_1/data
fi
check kubectl exec -n "$NS" pgplatform-0 -c postgres -- id
check kubectl exec -n "$NS" timescale-0 -c timescale -- id
check kubectl exec -n "$NS" pgplatform-0 -c postgres -- psql -U postgres -c "SELECT 1"
check kubectl exec -n "$NS" timescale-0 -c timescale -- psql -U postgres -c "SELECT 1"
check kubectl logs -n "$NS" pgplatform-0 -c postgres --tail=50
check kubectl logs -n "$NS" timescale-0 -c timescale --tail=50

# --- Re-enable security policies -------------------------------------------------------------
step "restore Pod Security Admission"
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted --overwrite
kubectl get namespace "$NS" -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}'
echo

step "remove ${NS} from the Gatekeeper constraints"
for constraint in $CONSTRAINTS; do
  kind=${constraint%%/*} name=${constraint#*/}
  INDEX=$(kubectl get "$kind" "$name" -o jsonpath='{.spec.match.excludedNamespaces}' | tr ',' '\n' | nl -v 0 | grep -n "$NS" | cut -d: -f1 | head -1)
  # Arrays are 0-indexed, but nl starts at 0, so subtract 1
  kubectl patch "$kind" "$name" --type=json -p="[{\"op\": \"remove\", \"path\": \"/spec/match/excludedNamespaces/$((INDEX - 1))\"}]"
done
for constraint in ${created_lists[@]+"${created_lists[@]}"}; do
  kind=${constraint%%/*} name=${constraint#*/}
  kubectl patch "$kind" "$name" --type=json \
    -p='[{"op": "test", "path": "/spec/match/excludedNamespaces", "value": []}, {"op": "remove", "path": "/spec/match/excludedNamespaces"}]'
done
mark last-policy-restore

step "check the constraints and the pods"
kubectl get constraints -A
kubectl get pods -n "$NS"

# The Jobs carry the platform's delete-after-install annotation; without the platform's
# installer on the test bed they are deleted by hand.
step "delete the Jobs"
for ((i = 0; i < PG_REPLICAS; i++)); do kubectl delete job -n "$NS" "postgres-ownership-migration-$i" --ignore-not-found; done
for ((i = 0; i < TS_REPLICAS; i++)); do kubectl delete job -n "$NS" "timescale-ownership-migration-$i" --ignore-not-found; done
step "done"
