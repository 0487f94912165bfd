#!/bin/sh
# Entry of the pods of a multi-node stage (deployments/work-pools/kubernetes-gpu-multinode.json, an
# Indexed Job): pod 0 runs the Prefect flow run, which launches the stage as machine 0; pods 1..
# follow it (r1flow/multinode.py): they run the stage spec machine 0 publishes in the store.
set -eu
export R1FLOW_MACHINE_RANK="${JOB_COMPLETION_INDEX:?not an Indexed Job pod}"
if [ "$R1FLOW_MACHINE_RANK" = 0 ]; then
  exec "$@"
fi
exec python -m r1flow.multinode
