//! The clients: each owns its members and issues SignUp, UpdateProfile,
//! ChangePassword, Logout, Refresh, CreateTask and DeleteAccount at random
//! (from its own seed), against either instance of each service, recording
//! every call in the ledger. A CreateTask whose answer is ambiguous is sent
//! again with the same `request_id`. Beside them an admin ([`admin`])
//! suspends, reinstates and changes the role of the members the clients
//! signed up; a member told it is suspended may delete its account with
//! email and password. Every access token the clients are given goes into
//! the [`Tokens`] book, for the checker. During a
//! [`super::faults::Fault::Cancels`] window a share of SignUp,
//! UpdateProfile and CreateTask calls is cut mid-flight by a deadline of a
//! few milliseconds.
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use memberflow_contract::proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    task::v1::{self as task_pb, task_service_client::TaskServiceClient},
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Request, transport::Channel};
use uuid::Uuid;

use super::{
    faults::CANCEL_DEADLINE_MS,
    ledger::{Answer, Ledger},
};

/// Each call's deadline.
const CALL: Duration = Duration::from_secs(3);
/// Attempts of one CreateTask request id while its answers are ambiguous.
const CREATE_ATTEMPTS: usize = 4;

/// A member a client owns.
struct Member {
    id: Uuid,
    email: String,
    password: String,
    /// The current session's access token and refresh token.
    access: Option<String>,
    refresh: Option<String>,
    /// Every access token the current session was given (Login, each
    /// Refresh): an acknowledged Logout must end them all.
    session: Vec<String>,
    /// Its last Login was refused as suspended: it may delete the account
    /// with email and password, as a suspended member can.
    suspended: bool,
}

/// Whether `answer` ended the session it was made with: a token refused
/// (revoked, expired) or a member refused (suspended). The client logs in
/// again, which a suspended member is refused.
fn ends_session(answer: &Answer) -> bool {
    matches!(answer, Answer::Refused(e)
        if e.starts_with("Unauthenticated") || e.starts_with("PermissionDenied"))
}

/// What a client hands the checker besides the ledger: tokens that an
/// acknowledged Logout, ChangePassword or DeleteAccount must have ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (member, access token, the ledger entry that ended it).
    pub must_refuse: Vec<(Uuid, String, usize)>,
}

/// Every access token a client was given: its member, the token, and when
/// the call that issued it ended (ledger milliseconds). A permission change
/// acknowledged after that must have ended it.
#[derive(Clone, Debug, Default)]
pub struct Tokens(Arc<std::sync::Mutex<Vec<(Uuid, String, u128)>>>);

impl Tokens {
    fn issued(&self, member: Uuid, token: &str, ledger: &Ledger) {
        self.0
            .lock()
            .expect("tokens poisoned")
            .push((member, token.to_owned(), ledger.now_ms()));
    }

    /// Every token so far.
    pub fn all(&self) -> Vec<(Uuid, String, u128)> {
        self.0.lock().expect("tokens poisoned").clone()
    }
}

/// Every access token of `m`'s current session, ended by ledger entry `n`;
/// the session is over.
fn ended(m: &mut Member, n: usize) -> Vec<(Uuid, String, usize)> {
    m.access = None;
    m.refresh = None;
    std::mem::take(&mut m.session)
        .into_iter()
        .map(|t| (m.id, t, n))
        .collect()
}

/// The services' endpoints, both instances of each.
#[derive(Clone)]
pub struct Endpoints {
    pub auth: Vec<Channel>,
    pub task: Vec<Channel>,
}

fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(CALL);
    if let Ok(value) = format!("Bearer {token}").parse() {
        req.metadata_mut().insert("authorization", value);
    }
    req
}

fn plain<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(CALL);
    req
}

/// The share (percent) of SignUp, UpdateProfile and CreateTask calls that
/// the clients cut with a short deadline: set for a
/// [`super::faults::Fault::Cancels`] window, 0 outside one.
#[derive(Clone, Debug, Default)]
pub struct Cancels(Arc<AtomicU32>);

impl Cancels {
    pub fn set(&self, share: u32) {
        self.0.store(share, Ordering::SeqCst);
    }
}

/// One client's draws of short deadlines, from an RNG of its own, so that
/// the operations it picks are still those of its seed.
struct Deadlines {
    share: Cancels,
    rng: StdRng,
}

impl Deadlines {
    /// A deadline of a few milliseconds for the next call, if the window
    /// cuts it.
    fn next(&mut self) -> Option<Duration> {
        let share = self.share.0.load(Ordering::SeqCst);
        (share > 0 && self.rng.random_range(0..100) < share)
            .then(|| Duration::from_millis(self.rng.random_range(CANCEL_DEADLINE_MS)))
    }
}

/// Makes `call` (built from a request that went through [`cut`]) with the
/// deadline `short`, if any: the client stops waiting and drops the call
/// (HTTP/2 RST_STREAM, so the server drops its handler) when it passes. A
/// call cut so is CANCELLED: it may or may not have taken effect.
async fn within<T>(
    short: Option<Duration>,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    let Some(deadline) = short else {
        return call.await;
    };
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::cancelled(format!(
                "the client cut the call at its {} ms deadline",
                deadline.as_millis()
            )))
        })
}

/// `req` with the deadline `short`, if any, sent along as `grpc-timeout`:
/// the server gives up at the same moment (DEADLINE_EXCEEDED), whichever
/// side notices first.
fn cut<T>(mut req: Request<T>, short: Option<Duration>) -> Request<T> {
    if let Some(deadline) = short {
        req.set_timeout(deadline);
    }
    req
}

/// Runs client `k` until `stop`; returns the tokens it saw ended.
pub async fn client(
    k: usize,
    seed: u64,
    endpoints: Endpoints,
    cancels: Cancels,
    ledger: Ledger,
    tokens: Tokens,
    stop: tokio_util::sync::CancellationToken,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(k as u64));
    let mut deadlines = Deadlines {
        share: cancels,
        rng: StdRng::seed_from_u64(seed.wrapping_mul(37).wrapping_add(k as u64)),
    };
    let mut members: Vec<Member> = Vec::new();
    let mut out = Outcome::default();
    let mut signups = 0usize;
    while !stop.is_cancelled() {
        let auth = AuthServiceClient::new(
            endpoints.auth[rng.random_range(0..endpoints.auth.len())].clone(),
        );
        let task = TaskServiceClient::new(
            endpoints.task[rng.random_range(0..endpoints.task.len())].clone(),
        );
        if members.is_empty() || rng.random_bool(0.1) {
            signups += 1;
            if let Some(m) = sign_up(k, signups, auth, &ledger, &mut deadlines).await {
                members.push(m);
            }
            continue;
        }
        let i = rng.random_range(0..members.len());
        if members[i].password.is_empty() {
            // An ambiguous ChangePassword: its password is unknown.
            members.swap_remove(i);
            continue;
        }
        if members[i].access.is_none() {
            if members[i].suspended && rng.random_bool(0.2) {
                let (_, gone) = delete_account(k, &mut members[i], auth, &ledger).await;
                if gone {
                    members.swap_remove(i);
                }
                continue;
            }
            log_in(k, &mut members[i], auth, &ledger, &tokens).await;
            continue;
        }
        let roll = rng.random_range(0..100);
        let ended = match roll {
            0..30 => {
                let salt = rng.random();
                update_profile(k, &mut members[i], auth, &ledger, salt, &mut deadlines).await;
                Vec::new()
            }
            30..65 => {
                create_task(k, &mut members[i], task, &ledger, &mut deadlines).await;
                Vec::new()
            }
            65..75 => {
                refresh(k, &mut members[i], auth, &ledger, &tokens).await;
                Vec::new()
            }
            75..84 => logout(k, &mut members[i], auth, &ledger).await,
            84..92 => change_password(k, &mut members[i], auth, &ledger, &tokens).await,
            _ => {
                let (ended, gone) = delete_account(k, &mut members[i], auth, &ledger).await;
                if gone {
                    members.swap_remove(i);
                }
                ended
            }
        };
        out.must_refuse.extend(ended);
    }
    out
}

async fn sign_up(
    k: usize,
    n: usize,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
    deadlines: &mut Deadlines,
) -> Option<Member> {
    let email = format!("nemesis-{k}-{n}@example.com");
    let password = format!("password {k} {n} one");
    let nickname = format!("n{k}x{n}");
    let short = deadlines.next();
    let start = ledger.now_ms();
    let request = cut(
        plain(auth_pb::SignUpRequest {
            email: email.clone(),
            password: password.clone(),
            nickname: nickname.clone(),
            region: "Asia/Seoul".into(),
        }),
        short,
    );
    let answer = within(short, auth.sign_up(request)).await;
    match answer {
        Ok(r) => {
            let id: Uuid = r.into_inner().member?.id.parse().ok()?;
            ledger.record(
                k,
                "SignUp",
                Some(id),
                nickname,
                Answer::Ok,
                email.clone(),
                start,
            );
            Some(Member {
                id,
                email,
                password,
                access: None,
                refresh: None,
                session: Vec::new(),
                suspended: false,
            })
        }
        Err(s) => {
            ledger.record(k, "SignUp", None, nickname, Answer::of(&s), email, start);
            None
        }
    }
}

async fn log_in(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
    tokens: &Tokens,
) {
    let start = ledger.now_ms();
    let answer = auth
        .login(plain(auth_pb::LoginRequest {
            email: m.email.clone(),
            password: m.password.clone(),
        }))
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            tokens.issued(m.id, &r.access_token, ledger);
            m.suspended = false;
            m.session = vec![r.access_token.clone()];
            m.access = Some(r.access_token);
            m.refresh = Some(r.refresh_token);
            ledger.record(
                k,
                "Login",
                Some(m.id),
                String::new(),
                Answer::Ok,
                r.session_id,
                start,
            );
        }
        Err(s) => {
            m.suspended = s.message().contains("suspended");
            ledger.record(
                k,
                "Login",
                Some(m.id),
                String::new(),
                Answer::of(&s),
                String::new(),
                start,
            );
        }
    }
}

async fn update_profile(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
    salt: u16,
    deadlines: &mut Deadlines,
) {
    let nickname = format!("p{salt}");
    let short = deadlines.next();
    let start = ledger.now_ms();
    let token = m.access.clone().unwrap_or_default();
    let request = cut(
        bearer(
            auth_pb::UpdateProfileRequest {
                nickname: Some(nickname.clone()),
                region: None,
            },
            &token,
        ),
        short,
    );
    let answer = within(short, auth.update_profile(request)).await;
    let (answer, result) = match answer {
        Ok(r) => (
            Answer::Ok,
            r.into_inner()
                .member
                .map(|m| m.version.to_string())
                .unwrap_or_default(),
        ),
        Err(s) => (Answer::of(&s), String::new()),
    };
    if ends_session(&answer) {
        m.access = None;
    }
    ledger.record(
        k,
        "UpdateProfile",
        Some(m.id),
        nickname,
        answer,
        result,
        start,
    );
}

async fn create_task(
    k: usize,
    m: &mut Member,
    task: TaskServiceClient<Channel>,
    ledger: &Ledger,
    deadlines: &mut Deadlines,
) {
    let request_id = Uuid::new_v4().to_string();
    let token = m.access.clone().unwrap_or_default();
    for _ in 0..CREATE_ATTEMPTS {
        let short = deadlines.next();
        let start = ledger.now_ms();
        let request = cut(
            bearer(
                task_pb::CreateTaskRequest {
                    request_id: request_id.clone(),
                    title: format!("task of {}", m.id),
                    due_local: "2027-01-15T09:00".into(),
                    consistency_token: String::new(),
                },
                &token,
            ),
            short,
        );
        let answer = within(short, task.clone().create_task(request)).await;
        match answer {
            Ok(r) => {
                let id = r.into_inner().task.map(|t| t.id).unwrap_or_default();
                ledger.record(
                    k,
                    "CreateTask",
                    Some(m.id),
                    request_id,
                    Answer::Ok,
                    id,
                    start,
                );
                return;
            }
            Err(s) => {
                let answer = Answer::of(&s);
                let again = answer.is_ambiguous();
                if ends_session(&answer) {
                    m.access = None;
                }
                ledger.record(
                    k,
                    "CreateTask",
                    Some(m.id),
                    request_id.clone(),
                    answer,
                    String::new(),
                    start,
                );
                if !again {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn refresh(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
    tokens: &Tokens,
) {
    let start = ledger.now_ms();
    let answer = auth
        .refresh(plain(auth_pb::RefreshRequest {
            refresh_token: m.refresh.clone().unwrap_or_default(),
        }))
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            tokens.issued(m.id, &r.access_token, ledger);
            m.session.push(r.access_token.clone());
            m.access = Some(r.access_token);
            m.refresh = Some(r.refresh_token);
            ledger.record(
                k,
                "Refresh",
                Some(m.id),
                String::new(),
                Answer::Ok,
                String::new(),
                start,
            );
        }
        Err(s) => {
            // Ambiguous or refused, the session may be over: log in anew,
            // and leave its tokens unchecked (the session may live on).
            m.access = None;
            m.refresh = None;
            m.session.clear();
            ledger.record(
                k,
                "Refresh",
                Some(m.id),
                String::new(),
                Answer::of(&s),
                String::new(),
                start,
            );
        }
    }
}

/// Logout of the current session: its tokens must be refused once acked.
async fn logout(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
) -> Vec<(Uuid, String, usize)> {
    let start = ledger.now_ms();
    let Some(token) = m.access.clone() else {
        return Vec::new();
    };
    let answer = auth
        .logout(bearer(
            auth_pb::LogoutRequest {
                all_sessions: false,
            },
            &token,
        ))
        .await
        .map(|_| ());
    let answer = answer.map_or_else(|s| Answer::of(&s), |()| Answer::Ok);
    let acked = answer.is_ok();
    let n = ledger.record(
        k,
        "Logout",
        Some(m.id),
        String::new(),
        answer,
        String::new(),
        start,
    );
    // Acked: every token of the session must be refused. Otherwise the
    // session may live on: a new one, and its tokens go unchecked.
    let gone = ended(m, n);
    if acked { gone } else { Vec::new() }
}

/// ChangePassword: every session ends; the answer carries a new one.
async fn change_password(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
    tokens: &Tokens,
) -> Vec<(Uuid, String, usize)> {
    let start = ledger.now_ms();
    let Some(token) = m.access.clone() else {
        return Vec::new();
    };
    let new_password = format!("{} again", m.password);
    let answer = auth
        .change_password(bearer(
            auth_pb::ChangePasswordRequest {
                current_password: m.password.clone(),
                new_password: new_password.clone(),
            },
            &token,
        ))
        .await;
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            tokens.issued(m.id, &r.access_token, ledger);
            let n = ledger.record(
                k,
                "ChangePassword",
                Some(m.id),
                String::new(),
                Answer::Ok,
                String::new(),
                start,
            );
            let gone = ended(m, n);
            m.password = new_password;
            m.session = vec![r.access_token.clone()];
            m.access = Some(r.access_token);
            m.refresh = Some(r.refresh_token);
            gone
        }
        Err(s) => {
            let answer = Answer::of(&s);
            if answer.is_ambiguous() {
                // Which password holds now is unknown: the member is left
                // alone from here on (its state is still checked).
                m.password.clear();
            }
            ledger.record(
                k,
                "ChangePassword",
                Some(m.id),
                String::new(),
                answer,
                String::new(),
                start,
            );
            let _ = ended(m, 0);
            Vec::new()
        }
    }
}

/// DeleteAccount: returns the tokens it ended, if acked, and whether the
/// client is done with the member (acked or ambiguous).
async fn delete_account(
    k: usize,
    m: &mut Member,
    mut auth: AuthServiceClient<Channel>,
    ledger: &Ledger,
) -> (Vec<(Uuid, String, usize)>, bool) {
    let start = ledger.now_ms();
    // With the session's token, or (a suspended member has none) with the
    // account's email.
    let request = match &m.access {
        Some(token) => bearer(
            auth_pb::DeleteAccountRequest {
                password: m.password.clone(),
                ..Default::default()
            },
            token,
        ),
        None => plain(auth_pb::DeleteAccountRequest {
            password: m.password.clone(),
            email: m.email.clone(),
        }),
    };
    let answer = auth
        .delete_account(request)
        .await
        .map_or_else(|s| Answer::of(&s), |_| Answer::Ok);
    let (acked, gone) = (answer.is_ok(), !matches!(answer, Answer::Refused(_)));
    let n = ledger.record(
        k,
        "DeleteAccount",
        Some(m.id),
        String::new(),
        answer,
        String::new(),
        start,
    );
    let tokens = if acked { ended(m, n) } else { Vec::new() };
    (tokens, gone)
}

/// The admin's credentials: a member an operator made an admin before the
/// run (`memberflow-admin grant-admin`'s function).
#[derive(Clone, Debug)]
pub struct AdminAccount {
    pub email: String,
    pub password: String,
}

/// What the admin last learnt of a member from an acknowledged answer;
/// `None` after an ambiguous one.
#[derive(Clone, Copy, Debug, Default)]
struct Known {
    admin: Option<bool>,
    suspended: Option<bool>,
}

/// The admin's next permission change for a member it knows as `known`,
/// from a roll in 0..100: suspend one not suspended, reinstate one who is,
/// or give the other role. `(op, argument, certain)`: certain when the
/// admin knows the change changes something (and so ends the sessions).
fn next_change(known: Known, roll: u32) -> (&'static str, &'static str, bool) {
    if roll < 70 {
        match known.suspended {
            Some(true) => ("ReinstateMember", "", true),
            Some(false) => ("SuspendMember", "nemesis: spam reports", true),
            None => ("SuspendMember", "nemesis: spam reports", false),
        }
    } else {
        match known.admin {
            Some(true) => ("SetRole", "member", true),
            Some(false) => ("SetRole", "admin", true),
            None => ("SetRole", "admin", false),
        }
    }
}

/// The admin (client `k`): until `stop`, every 100 to 500 ms, suspends,
/// reinstates or changes the role of a member some client signed up and
/// records it in the ledger, its `result` `changed` when the admin knew the
/// change changed something (see [`next_change`]), else `unsure`.
pub async fn admin(
    k: usize,
    seed: u64,
    endpoints: Endpoints,
    account: AdminAccount,
    ledger: Ledger,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(41).wrapping_add(k as u64));
    let mut known: std::collections::HashMap<Uuid, Known> = std::collections::HashMap::new();
    let mut gone: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    while !stop.is_cancelled() {
        let pause = Duration::from_millis(rng.random_range(100..=500));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        let mut auth = AuthServiceClient::new(
            endpoints.auth[rng.random_range(0..endpoints.auth.len())].clone(),
        );
        let Some(bearer_token) = token.clone() else {
            let answer = auth
                .login(plain(auth_pb::LoginRequest {
                    email: account.email.clone(),
                    password: account.password.clone(),
                }))
                .await;
            token = answer.ok().map(|r| r.into_inner().access_token);
            continue;
        };
        let members: Vec<Uuid> = ledger
            .entries()
            .iter()
            .filter(|e| e.op == "SignUp" && e.answer.is_ok())
            .filter_map(|e| e.member)
            .filter(|id| !gone.contains(id))
            .collect();
        if members.is_empty() {
            continue;
        }
        let id = members[rng.random_range(0..members.len())];
        let now = known.get(&id).copied().unwrap_or(Known {
            admin: Some(false),
            suspended: Some(false),
        });
        let (op, arg, certain) = next_change(now, rng.random_range(0..100));
        let start = ledger.now_ms();
        let member_id = id.to_string();
        let answer = match op {
            "SuspendMember" => auth
                .suspend_member(bearer(
                    auth_pb::SuspendMemberRequest {
                        member_id,
                        reason: arg.to_owned(),
                    },
                    &bearer_token,
                ))
                .await
                .map(|r| r.into_inner().member),
            "ReinstateMember" => auth
                .reinstate_member(bearer(
                    auth_pb::ReinstateMemberRequest { member_id },
                    &bearer_token,
                ))
                .await
                .map(|r| r.into_inner().member),
            _ => auth
                .set_role(bearer(
                    auth_pb::SetRoleRequest {
                        member_id,
                        role: arg.to_owned(),
                    },
                    &bearer_token,
                ))
                .await
                .map(|r| r.into_inner().member),
        };
        let (answer, result) = match answer {
            Ok(state) => {
                let state = state.unwrap_or_default();
                known.insert(
                    id,
                    Known {
                        admin: Some(state.role == "admin"),
                        suspended: Some(state.suspension.is_some()),
                    },
                );
                let how = if certain { "changed" } else { "unsure" };
                (Answer::Ok, format!("{how} v{}", state.version))
            }
            Err(s) => {
                let answer = Answer::of(&s);
                match &answer {
                    Answer::Ambiguous(_) => {
                        known.insert(id, Known::default());
                    }
                    Answer::Refused(_) if s.code() == tonic::Code::Unauthenticated => {
                        token = None;
                    }
                    Answer::Refused(_) => {
                        // Deleted since (NOT_FOUND), or a change refused
                        // for good: leave the member alone.
                        gone.insert(id);
                    }
                    Answer::Ok => {}
                }
                (answer, String::new())
            }
        };
        ledger.record(k, op, Some(id), arg.to_owned(), answer, result, start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_changes_what_it_knows_and_is_unsure_of_what_it_does_not() {
        let member = Known {
            admin: Some(false),
            suspended: Some(false),
        };
        assert_eq!(
            next_change(member, 0),
            ("SuspendMember", "nemesis: spam reports", true)
        );
        let suspended = Known {
            suspended: Some(true),
            ..member
        };
        assert_eq!(next_change(suspended, 69), ("ReinstateMember", "", true));
        assert_eq!(next_change(member, 70), ("SetRole", "admin", true));
        let admin = Known {
            admin: Some(true),
            ..member
        };
        assert_eq!(next_change(admin, 99), ("SetRole", "member", true));
        assert!(!next_change(Known::default(), 0).2);
        assert!(!next_change(Known::default(), 99).2);
    }
}
