#!/usr/bin/env bash
# Install a single-node SLURM (Debian's slurm-wlm and munge) for the `slurm` tests; called by .ci/run.
# Never fails the build: where apt is unavailable (or we are not root) it says so and the slurm tests skip.
set -u
if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    echo "slurm_setup: slurm-wlm and munge already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm_setup: apt-get not available; the slurm tests will be skipped"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm_setup: not root; cannot install slurm-wlm/munge; the slurm tests will be skipped"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/tmp/slurm_setup.log 2>&1; then
    echo "slurm_setup: installed $(slurmctld -V 2>/dev/null)"
else
    echo "slurm_setup: apt-get install slurm-wlm munge failed (see /tmp/slurm_setup.log); the slurm tests will be skipped"
fi
exit 0
