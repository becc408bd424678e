#!/bin/sh
# Test double of the start script of simonsobs/ocs-crossbar: run crossbar
# with the config.json mounted into its node directory.  (OCS's image can
# also fill in a template from OCS_REALM / OCS_PORT / OCS_ADDRESS_ROOT when
# nothing is mounted; the compose site always mounts its config, so this
# double insists on one.)
set -eu
node_dir=/ocs/.crossbar
config="$node_dir/config.json"
if [ ! -r "$config" ]; then
    echo "start-crossbar: no readable $config; mount the site's crossbar config there" >&2
    exit 2
fi
echo "start-crossbar: starting crossbar with $config"
exec crossbar start --cbdir "$node_dir" --config "$config" "$@"
