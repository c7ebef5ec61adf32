#!/bin/sh
# The device's /sbin/app-restart, ferryd's restart_command: stops the application and starts
# it from the current deployment, in a session of its own. vmtest/src/guest.rs fills in the
# path of the current deployment's link (the placeholder in the `setsid` line: `current_link`
# in ferryd.toml, e.g. /var/lib/ferry/current).
[ -f /run/app.pid ] && kill "$(cat /run/app.pid)" 2>/dev/null
rm -f /run/app.alive
setsid sh @CURRENT@/app/run </dev/null >/dev/null 2>&1 &
echo $! > /run/app.pid
