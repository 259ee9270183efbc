#!/bin/sh
# compose's rabbitmq-init: creates one user per service and one for the
# operator through the management API, as the bootstrap administrator
# (RABBITMQ_USER), with the rights docs/security.md prints ("Least
# privilege"). The patterns are contract/src/topology.rs::rights,
# JSON-escaped; tests/tests/privilege.rs checks that they stay the same.
# Passwords go into JSON as they are: use hex (`openssl rand -hex 16`).
set -eu
api="http://rabbitmq:15672/api"
call() {
  curl -fsS -u "$RABBITMQ_USER:$RABBITMQ_PASSWORD" \
    -H 'content-type: application/json' -X "$1" "$api/$2" ${3:+-d "$3"}
}
i=0
until call GET overview >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 60 ] || { echo "management API not reachable at $api" >&2; exit 1; }
  sleep 1
done

user() { call PUT "users/$1" "{\"password\":\"$2\",\"tags\":\"\"}"; }
user memberflow-auth "$RABBITMQ_AUTH_PASSWORD"
user memberflow-task "$RABBITMQ_TASK_PASSWORD"
user memberflow-admin "$RABBITMQ_ADMIN_PASSWORD"

call PUT permissions/%2F/memberflow-auth \
  '{"configure":"^(member\\.events|member\\.erasures|auth\\.member-erasures(\\.dlx|\\.dlq)?)$","write":"^(member\\.events|auth\\.member-erasures(\\.dlx|\\.dlq)?)$","read":"^(member\\.erasures|auth\\.member-erasures(\\.dlx)?)$"}'
call PUT topic-permissions/%2F/memberflow-auth \
  '{"exchange":"member.events","write":"^member\\.","read":"^$"}'
call PUT topic-permissions/%2F/memberflow-auth \
  '{"exchange":"member.erasures","write":"^$","read":"^member\\.erased$"}'
call PUT permissions/%2F/memberflow-task \
  '{"configure":"^(member\\.events|member\\.erasures|task\\.member-events(\\.dlx|\\.dlq)?)$","write":"^(member\\.erasures|task\\.member-events(\\.dlx|\\.dlq)?)$","read":"^(member\\.events|task\\.member-events(\\.dlx)?)$"}'
call PUT topic-permissions/%2F/memberflow-task \
  '{"exchange":"member.events","write":"^$","read":"^member\\."}'
call PUT topic-permissions/%2F/memberflow-task \
  '{"exchange":"member.erasures","write":"^member\\.erased$","read":"^$"}'
call PUT permissions/%2F/memberflow-admin \
  '{"configure":"^$","write":"^amq\\.default$","read":"^task\\.member-events\\.dlq$"}'
echo "created memberflow-auth, memberflow-task and memberflow-admin on vhost /"
