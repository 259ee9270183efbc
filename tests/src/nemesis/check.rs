//! The checker: once every fault has healed and the system has converged,
//! what was acknowledged is compared with what the system ended with. Each
//! rule returns its violations, each naming the member whose ledger lines
//! show it.
use std::collections::{HashMap, HashSet};

use memberflow_contract::proto::task::v1::{
    ListTasksRequest, task_service_client::TaskServiceClient,
};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

use super::ledger::{Answer, Entry};

/// One broken rule.
#[derive(Debug, Clone)]
pub struct Violation {
    pub rule: &'static str,
    pub member: Option<Uuid>,
    pub detail: String,
}

fn violation(rule: &'static str, member: Option<Uuid>, detail: String) -> Violation {
    Violation {
        rule,
        member,
        detail,
    }
}

/// A member row as both sides compare it: version, nickname, region,
/// deleted, role, suspension reason ('' when not suspended).
type Row = (i64, String, String, bool, String, String);

async fn rows(pool: &PgPool, sql: &'static str) -> sqlx::Result<HashMap<Uuid, Row>> {
    let all: Vec<(Uuid, i64, String, String, bool, String, String)> =
        sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(all
        .into_iter()
        .map(|(id, v, n, r, d, role, why)| (id, (v, n, r, d, role, why)))
        .collect())
}

/// The operations a suspended member is refused: at auth from the
/// suspension's commit on, at task within [`super::suspension_bound`].
/// (DeleteAccount is not among them: a suspended member may still leave.)
const REFUSED_AT_AUTH: [&str; 5] = [
    "Login",
    "Refresh",
    "UpdateProfile",
    "ChangePassword",
    "Logout",
];
const REFUSED_AT_TASK: [&str; 1] = ["CreateTask"];

/// A call that succeeded for a member after an acknowledged suspension of
/// theirs, and before any reinstatement could have allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Late {
    pub member: Uuid,
    /// The ledger lines of the suspension and of the call.
    pub suspension: usize,
    pub call: usize,
    pub at_task: bool,
    /// How long after the suspension's answer the call started.
    pub after_ms: u128,
}

/// Every [`Late`] call in `ledger`. A call counts when it started after the
/// suspension's answer arrived, and no ReinstateMember that was not
/// refused started between that answer and the call's end. (One admin
/// makes the permission changes, in sequence, so a reinstatement of the
/// same member is either before the suspension or after its answer.)
pub fn late_after_suspension(ledger: &[Entry]) -> Vec<Late> {
    let mut out = Vec::new();
    for a in ledger
        .iter()
        .filter(|a| a.op == "SuspendMember" && a.answer.is_ok())
    {
        let member = a.member;
        let lifted = |until: u128| {
            ledger.iter().any(|r| {
                r.member == member
                    && r.op == "ReinstateMember"
                    && !matches!(r.answer, Answer::Refused(_))
                    && r.start_ms >= a.end_ms
                    && r.start_ms < until
            })
        };
        for c in ledger.iter().filter(|c| {
            c.member == member
                && c.answer.is_ok()
                && c.start_ms > a.end_ms
                && (REFUSED_AT_AUTH.contains(&c.op) || REFUSED_AT_TASK.contains(&c.op))
        }) {
            if !lifted(c.end_ms) {
                out.push(Late {
                    member: member.expect("a suspension names its member"),
                    suspension: a.n,
                    call: c.n,
                    at_task: REFUSED_AT_TASK.contains(&c.op),
                    after_ms: c.start_ms - a.end_ms,
                });
            }
        }
    }
    out
}

/// Whether ledger entry `e` is a permission change that may have ended
/// the member's sessions: SuspendMember or SetRole, not refused.
fn may_end_sessions(e: &Entry) -> bool {
    matches!(e.op, "SuspendMember" | "SetRole") && !matches!(e.answer, Answer::Refused(_))
}

/// auth's members and the replica's, as compared.
pub async fn members(
    auth_db: &PgPool,
    task_db: &PgPool,
) -> sqlx::Result<(HashMap<Uuid, Row>, HashMap<Uuid, Row>)> {
    Ok((
        rows(
            auth_db,
            "SELECT id, version, coalesce(nickname, ''), coalesce(region, ''),
                    deleted_at IS NOT NULL, role, coalesce(suspended_reason, '')
               FROM members",
        )
        .await?,
        rows(
            task_db,
            "SELECT id, version, nickname, region, deleted_at IS NOT NULL, role,
                    coalesce(suspended_reason, '')
               FROM members",
        )
        .await?,
    ))
}

/// Whether the system has converged: both outboxes empty, the replica
/// equal to auth, and every erasure complete.
pub async fn converged(auth_db: &PgPool, task_db: &PgPool) -> sqlx::Result<bool> {
    let (a, t) = members(auth_db, task_db).await?;
    let in_auth: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(auth_db)
        .await?;
    let in_task: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(task_db)
        .await?;
    let outboxes = in_auth + in_task;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasures WHERE completed_at IS NULL")
            .fetch_one(auth_db)
            .await?;
    Ok(a == t && outboxes == 0 && pending == 0)
}

/// Every rule over the ledger and the end state. `tokens` is every access
/// token the clients were given ([`super::load::Tokens`]); `bound` is how
/// long after an acknowledged suspension task may still serve the member.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    ledger: &[Entry],
    must_refuse: &[(Uuid, String, usize)],
    tokens: &[(Uuid, String, u128)],
    bound: std::time::Duration,
    auth_db: &PgPool,
    task_db: &PgPool,
    task_instances: &[Channel],
    dead_letters: u32,
) -> sqlx::Result<Vec<Violation>> {
    let mut out = Vec::new();
    let (auth, replica) = members(auth_db, task_db).await?;
    let by_member = |id: Uuid| ledger.iter().filter(move |e| e.member == Some(id));

    // 1. Every member auth has is in the replica at auth's state, and every
    // acknowledged signup and profile change is auth's state, or was
    // superseded only by a later ambiguous change or a deletion.
    for (id, row) in &auth {
        if replica.get(id) != Some(row) {
            out.push(violation(
                "replica equals auth",
                Some(*id),
                format!("auth {row:?}, replica {:?}", replica.get(id)),
            ));
        }
    }
    for e in ledger
        .iter()
        .filter(|e| e.op == "SignUp" && e.answer.is_ok())
    {
        let id = e.member.expect("an acked signup has an id");
        let Some(row) = auth.get(&id) else {
            out.push(violation(
                "acked signup kept",
                Some(id),
                "not in auth".into(),
            ));
            continue;
        };
        if row.3 {
            let deleted = by_member(id)
                .any(|d| d.op == "DeleteAccount" && !matches!(d.answer, Answer::Refused(_)));
            if !deleted {
                out.push(violation(
                    "no deletion without DeleteAccount",
                    Some(id),
                    format!("{row:?}"),
                ));
            }
            continue;
        }
        // The nicknames auth may hold: the last acknowledged one, or one
        // from an ambiguous change after it.
        let mut allowed: Vec<&str> = vec![e.args.as_str()];
        for u in by_member(id).filter(|u| u.op == "UpdateProfile") {
            match &u.answer {
                Answer::Ok => allowed = vec![u.args.as_str()],
                Answer::Ambiguous(_) => allowed.push(u.args.as_str()),
                Answer::Refused(_) => {}
            }
        }
        if !allowed.contains(&row.1.as_str()) {
            out.push(violation(
                "acked profile kept",
                Some(id),
                format!("auth holds {:?}, allowed {allowed:?}", row.1),
            ));
        }
    }

    // 1b. A SignUp without an answer (cut, timed out, unavailable) made
    // at most one member, as asked; a refused one made none. No member's
    // version counts more changes than its UpdateProfile and ChangePassword
    // calls that were not refused: none was applied twice.
    let emails: Vec<(String, Uuid, String, bool)> = sqlx::query_as(
        "SELECT email, id, coalesce(nickname, ''), deleted_at IS NOT NULL
           FROM members WHERE email IS NOT NULL",
    )
    .fetch_all(auth_db)
    .await?;
    let mut by_email: HashMap<&str, Vec<(Uuid, &str, bool)>> = HashMap::new();
    for (email, id, nickname, deleted) in &emails {
        by_email
            .entry(email.as_str())
            .or_default()
            .push((*id, nickname.as_str(), *deleted));
    }
    for e in ledger.iter().filter(|e| e.op == "SignUp") {
        let made = by_email
            .get(e.result.as_str())
            .map_or(&[][..], Vec::as_slice);
        let broken = match &e.answer {
            Answer::Ok => false,
            Answer::Refused(_) => !made.is_empty(),
            Answer::Ambiguous(_) => {
                made.len() > 1 || made.iter().any(|(_, n, d)| *n != e.args || *d)
            }
        };
        if broken {
            out.push(violation(
                "an unanswered SignUp took effect at most once, as asked",
                made.first().map(|m| m.0),
                format!("ledger line {}: {:?} made {made:?}", e.n, e.answer),
            ));
        }
    }
    for e in ledger
        .iter()
        .filter(|e| e.op == "SignUp" && e.answer.is_ok())
    {
        let id = e.member.expect("an acked signup has an id");
        let Some(row) = auth.get(&id).filter(|r| !r.3) else {
            continue;
        };
        let changes = by_member(id)
            .filter(|u| {
                matches!(
                    u.op,
                    "UpdateProfile"
                        | "ChangePassword"
                        | "SuspendMember"
                        | "ReinstateMember"
                        | "SetRole"
                )
            })
            .filter(|u| !matches!(u.answer, Answer::Refused(_)))
            .count();
        if row.0 > 1 + changes as i64 {
            out.push(violation(
                "no change applied twice",
                Some(id),
                format!("version {} after {changes} change(s) not refused", row.0),
            ));
        }
    }

    // 2. No acknowledged CreateTask lost, none made twice.
    let tasks: Vec<(Uuid, Uuid, Uuid)> =
        sqlx::query_as("SELECT id, member_id, request_id FROM tasks")
            .fetch_all(task_db)
            .await?;
    let mut per_request: HashMap<(Uuid, Uuid), Vec<Uuid>> = HashMap::new();
    for (id, member, request) in &tasks {
        per_request
            .entry((*member, *request))
            .or_default()
            .push(*id);
    }
    for ((member, request), ids) in &per_request {
        if ids.len() > 1 {
            out.push(violation(
                "one task per request_id",
                Some(*member),
                format!("{request}: {ids:?}"),
            ));
        }
    }
    for e in ledger
        .iter()
        .filter(|e| e.op == "CreateTask" && e.answer.is_ok())
    {
        let member = e.member.expect("a member");
        if auth.get(&member).is_some_and(|r| r.3) {
            continue; // deleted since: its tasks are gone by design
        }
        let request: Uuid = e.args.parse().expect("a request id");
        let kept = per_request
            .get(&(member, request))
            .is_some_and(|ids| ids.iter().any(|id| id.to_string() == e.result));
        if !kept {
            out.push(violation(
                "acked task kept",
                Some(member),
                format!("request {request}, task {}", e.result),
            ));
        }
    }

    // 3. Every access token of a session ended by an acknowledged Logout,
    // ChangePassword or DeleteAccount, and every token issued before an
    // acknowledged SuspendMember or SetRole that changed the member, is
    // refused by every task instance.
    let mut ended: Vec<(Uuid, String, usize)> = must_refuse.to_vec();
    for a in ledger.iter().filter(|a| {
        matches!(a.op, "SuspendMember" | "SetRole")
            && a.answer.is_ok()
            && a.result.starts_with("changed")
    }) {
        ended.extend(
            tokens
                .iter()
                .filter(|(m, _, issued)| Some(*m) == a.member && *issued < a.start_ms)
                .map(|(m, t, _)| (*m, t.clone(), a.n)),
        );
    }
    let mut seen = HashSet::new();
    ended.retain(|(_, t, _)| seen.insert(t.clone()));
    for ((member, token, n), task) in ended
        .iter()
        .flat_map(|t| task_instances.iter().map(move |c| (t, c)))
    {
        let mut client = TaskServiceClient::new(task.clone());
        let mut refused = None;
        for _ in 0..5 {
            let mut req = tonic::Request::new(ListTasksRequest::default());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ascii"),
            );
            match client.list_tasks(req).await {
                Ok(_) => refused = Some(false),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => refused = Some(true),
            }
            break;
        }
        if refused != Some(true) {
            out.push(violation(
                "an ended session's token is refused",
                Some(*member),
                format!(
                    "task answered {refused:?} to the token ended by ledger line {n} (claims {})",
                    claims(token)
                ),
            ));
        }
    }

    // 3b. A token is refused as revoked only if a ChangePassword (not
    // refused) came after it was issued: a member's newest token, from an
    // acknowledged Login, Refresh or ChangePassword, is fresh. (A client
    // keeps one member's calls in sequence, so its ledger order is the
    // order the calls were made in.)
    let mut members_seen: Vec<Uuid> = ledger.iter().filter_map(|e| e.member).collect();
    members_seen.sort();
    members_seen.dedup();
    // The admin's changes run beside the member's client, so they are
    // placed by time: one that ended after the token was asked for and
    // started before the refusal ended may have revoked it.
    for id in members_seen {
        let mut revoked_since_issued = true;
        let mut asked_at = 0;
        let admin_revoked = |from: u128, until: u128| {
            by_member(id).any(|x| may_end_sessions(x) && x.end_ms > from && x.start_ms < until)
        };
        for e in by_member(id) {
            match (e.op, &e.answer) {
                ("Login" | "Refresh" | "ChangePassword", Answer::Ok) => {
                    revoked_since_issued = false;
                    asked_at = e.start_ms;
                }
                ("ChangePassword", Answer::Ambiguous(_)) => revoked_since_issued = true,
                (_, Answer::Refused(why))
                    if why.contains("was revoked")
                        && !revoked_since_issued
                        && !admin_revoked(asked_at, e.end_ms) =>
                {
                    out.push(violation(
                        "a fresh token is not refused as revoked",
                        Some(id),
                        format!("ledger line {}: {} refused: {why}", e.n, e.op),
                    ));
                    break;
                }
                _ => {}
            }
        }
    }

    // 3c. No call succeeds for a suspended member: at auth from the
    // suspension's answer on, at task after `bound`.
    for late in late_after_suspension(ledger) {
        let allowed = if late.at_task { bound.as_millis() } else { 0 };
        if late.after_ms > allowed {
            out.push(violation(
                "a suspended member is refused within the bound",
                Some(late.member),
                format!(
                    "ledger line {} succeeded {} ms after the suspension of line {} \
                     answered (bound {allowed} ms)",
                    late.call, late.after_ms, late.suspension
                ),
            ));
        }
    }

    // 3d. No access token carries a role: the role is decided from auth's
    // row and task's replica, so no token can carry one the member lost.
    for (member, token, _) in tokens {
        let carries = serde_json::from_str::<serde_json::Value>(&claims(token))
            .map_or(true, |c| c.get("role").is_some());
        if carries {
            out.push(violation(
                "no token carries a role",
                Some(*member),
                format!("claims {}", claims(token)),
            ));
            break;
        }
    }

    // 4. No deleted member has data anywhere.
    let deleted: HashSet<Uuid> = auth
        .iter()
        .filter(|(_, r)| r.3)
        .map(|(id, _)| *id)
        .collect();
    for id in &deleted {
        let (email, nickname): (String, String) = sqlx::query_as(
            "SELECT coalesce(email, ''), coalesce(nickname, '') FROM members WHERE id = $1",
        )
        .bind(id)
        .fetch_one(auth_db)
        .await?;
        let tasks_left = tasks.iter().filter(|(_, m, _)| m == id).count();
        if !email.is_empty() || !nickname.is_empty() || tasks_left > 0 {
            out.push(violation(
                "a deleted member has no data",
                Some(*id),
                format!("email {email:?}, nickname {nickname:?}, {tasks_left} task(s)"),
            ));
        }
    }

    // 5. Outboxes and DLQs empty; parked rows only with their reason.
    for (name, pool) in [("auth", auth_db), ("task", task_db)] {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?;
        if left > 0 {
            out.push(violation(
                "the outbox drains",
                None,
                format!("{name}: {left} row(s) left"),
            ));
        }
        let unexplained: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox_parked WHERE coalesce(last_error, '') = ''",
        )
        .fetch_one(pool)
        .await?;
        if unexplained > 0 {
            out.push(violation(
                "parked rows have a reason",
                None,
                format!("{name}: {unexplained}"),
            ));
        }
    }
    if dead_letters > 0 {
        out.push(violation(
            "the DLQs are empty",
            None,
            format!("{dead_letters} message(s)"),
        ));
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasures WHERE completed_at IS NULL")
            .fetch_one(auth_db)
            .await?;
    if pending > 0 {
        out.push(violation(
            "every erasure completes",
            None,
            format!("{pending} pending"),
        ));
    }
    Ok(out)
}

/// A token's claims, for a violation's detail.
fn claims(token: &str) -> String {
    use base64::Engine as _;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, op: &'static str, answer: Answer, start_ms: u128, end_ms: u128) -> Entry {
        Entry {
            n,
            client: 0,
            op,
            member: Some(Uuid::nil()),
            args: String::new(),
            answer,
            result: String::new(),
            start_ms,
            end_ms,
        }
    }

    #[test]
    fn a_call_after_a_suspension_is_late_until_a_reinstatement_starts() {
        let ledger = vec![
            entry(0, "CreateTask", Answer::Ok, 0, 5),
            entry(1, "SuspendMember", Answer::Ok, 10, 20),
            // Started before the answer: not counted.
            entry(2, "CreateTask", Answer::Ok, 15, 25),
            entry(3, "CreateTask", Answer::Ok, 30, 35),
            entry(4, "Login", Answer::Ok, 40, 45),
            // Refused, or not refused at all (DeleteAccount): not counted.
            entry(5, "CreateTask", Answer::Refused("x".into()), 50, 55),
            entry(6, "DeleteAccount", Answer::Ok, 50, 55),
            entry(7, "ReinstateMember", Answer::Ambiguous("x".into()), 60, 70),
            // Ended after the reinstatement started: it may have allowed it.
            entry(8, "CreateTask", Answer::Ok, 58, 65),
            entry(9, "Login", Answer::Ok, 80, 85),
        ];
        let late = late_after_suspension(&ledger);
        let calls: Vec<(usize, bool, u128)> = late
            .iter()
            .map(|l| (l.call, l.at_task, l.after_ms))
            .collect();
        assert_eq!(calls, vec![(3, true, 10), (4, false, 20)]);
    }

    #[test]
    fn a_refused_reinstatement_lifts_nothing() {
        let ledger = vec![
            entry(0, "SuspendMember", Answer::Ok, 0, 10),
            entry(1, "ReinstateMember", Answer::Refused("x".into()), 20, 30),
            entry(2, "CreateTask", Answer::Ok, 40, 50),
        ];
        assert_eq!(late_after_suspension(&ledger).len(), 1);
    }
}
