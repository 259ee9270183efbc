//! `auth.v1.AuthService`: proto ↔ domain conversion and the RPC handlers.
use std::sync::Arc;

use chrono::{Duration, Utc};
use memberflow_contract::consistency::ConsistencyToken;
use memberflow_contract::digest::{self, parse_bound};
use memberflow_contract::proto::auth::v1::{self as pb, auth_service_server::AuthService};
use memberflow_contract::time::timestamp;
use memberflow_contract::token::{PublicKey, Signer, Verified, Verifier};
use memberflow_runtime::error::Failure;
use memberflow_runtime::error::Violations;
use memberflow_runtime::grpc::SERVICE_TOKEN_HEADER;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Error,
    domain::{Email, Member, NewMember, Nickname, Password, ProfileChange, Region},
    outbox::{
        EventKind,
        write::{self, Enqueue, Outbox},
    },
    password::Hasher,
    repo,
    sessions::{
        Lifetimes, RefreshToken,
        decide::{Refresh, decide},
        store::{self, NewSession},
    },
    throttle::LoginThrottle,
};

/// The RPC handlers and what they need.
#[derive(Clone)]
pub struct AuthApi {
    pub(crate) pool: PgPool,
    pub(crate) hasher: Hasher,
    /// Signs access tokens; only auth holds it.
    pub(crate) signer: Signer,
    /// Checks tokens against every key auth accepts.
    pub(crate) verifier: Verifier,
    /// What GetPublicKeys serves: the signer's key first.
    pub(crate) public_keys: Arc<[PublicKey]>,
    pub(crate) token_ttl: Duration,
    /// How long sessions and refresh tokens live.
    pub(crate) lifetimes: Lifetimes,
    pub(crate) service_token: SecretString,
    /// Wakes the outbox relay after each commit.
    /// Every write that emits an event goes through it.
    pub(crate) outbox: Outbox,
    /// The services whose receipts complete an erasure
    /// (`erasure.expected_services`).
    pub(crate) erasure_expected: Arc<[String]>,
    /// Login and ChangePassword attempts per account and per peer.
    pub(crate) throttle: LoginThrottle,
}

impl TryFrom<pb::SignUpRequest> for NewMember {
    type Error = Violations;

    fn try_from(req: pb::SignUpRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let email = v.check("email", Email::parse(&req.email));
        let password = v.check("password", Password::parse(&req.password));
        let nickname = v.check("nickname", Nickname::parse(&req.nickname));
        let region = v.check("region", Region::parse(&req.region));
        v.finish()?;
        Ok(Self {
            email: email.expect("checked"),
            password: password.expect("checked"),
            nickname: nickname.expect("checked"),
            region: region.expect("checked"),
        })
    }
}

impl TryFrom<pb::UpdateProfileRequest> for ProfileChange {
    type Error = Violations;

    fn try_from(req: pb::UpdateProfileRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let nickname = req
            .nickname
            .as_deref()
            .and_then(|n| v.check("nickname", Nickname::parse(n)));
        let region = req
            .region
            .as_deref()
            .and_then(|r| v.check("region", Region::parse(r)));
        if req.nickname.is_none() && req.region.is_none() {
            v.add("nickname", "set nickname, region or both");
            v.add("region", "set nickname, region or both");
        }
        v.finish()?;
        Ok(Self { nickname, region })
    }
}

impl From<Member> for pb::Member {
    fn from(m: Member) -> Self {
        Self {
            id: m.id.to_string(),
            email: m.email,
            nickname: m.nickname,
            region: m.region,
            version: m.version,
            created_at: Some(timestamp(m.created_at)),
            updated_at: Some(timestamp(m.updated_at)),
        }
    }
}

impl AuthApi {
    async fn sign_up(&self, new: NewMember) -> Result<Member, Error> {
        // Hash before opening the transaction: it takes milliseconds of CPU.
        let hash = self.hasher.hash(&new.password).await?;
        let (member, event_id) = write::sign_up(&self.outbox, &new, &hash)
            .await
            .map_err(|e| {
                if repo::on_constraint(&e, repo::EMAIL_UNIQUE) {
                    Error::EmailTaken
                } else {
                    e.into()
                }
            })?;
        tracing::Span::current()
            .record("member_id", tracing::field::display(member.id))
            .record("event_id", tracing::field::display(event_id));
        Ok(member)
    }

    async fn update_profile(
        &self,
        caller: Verified,
        change: ProfileChange,
    ) -> Result<Member, Error> {
        let member_id = caller.member_id;
        let mut tx = self.outbox.begin().await?;
        let current = self.lock_caller(&mut tx, caller).await?;
        let Some(member) = repo::update_profile(&mut tx, member_id, &change).await? else {
            // Nothing really changes: same version, no event.
            return Ok(current);
        };
        let event_id = tx.enqueue(EventKind::Updated, &member).await?;
        tx.commit().await?;
        tracing::Span::current().record("event_id", tracing::field::display(event_id));
        Ok(member)
    }

    /// The caller's member row, locked, if their token is still valid: auth
    /// refuses a token from before a Logout or ChangePassword at once.
    async fn lock_caller(
        &self,
        tx: &mut sqlx::PgConnection,
        caller: Verified,
    ) -> Result<Member, Error> {
        // No live row: the member deleted their account (a token is only
        // ever signed for a member that existed), so the token is refused.
        let member = repo::lock_member(tx, caller.member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        check_caller(tx, caller, &member).await?;
        Ok(member)
    }

    /// Ends every session of the caller but `keep`, and with `password`
    /// (old hash, new hash) changes their password, writing
    /// MemberSessionsRevoked in the same transaction. With `keep`, the
    /// caller's session continues with new tokens, issued in it.
    async fn revoke_sessions(
        &self,
        caller: Verified,
        password: Option<(&str, &str)>,
        keep: Option<&str>,
    ) -> Result<(Member, Option<Issued>), Error> {
        let mut tx = self.outbox.begin().await?;
        self.lock_caller(&mut tx, caller).await?;
        let member = repo::revoke_sessions(&mut tx, caller.member_id, password)
            .await?
            .ok_or(Error::ConcurrentChange)?;
        let now = Utc::now();
        let kept = keep.and(caller.session);
        store::end_all(&mut tx, caller.member_id, kept, now).await?;
        let issued = match (keep, kept) {
            (None, _) => None,
            // The caller's session goes on, with a refresh token the old
            // one's holder (if it was stolen) does not have.
            (Some(_), Some(session)) => {
                let refresh = RefreshToken::generate();
                let access_expires_at = now + self.token_ttl;
                store::rotate(&mut tx, session, &refresh.hash(), now, access_expires_at).await?;
                Some(self.issue(&member, session, refresh, access_expires_at))
            }
            // A token from before sessions: the caller gets a new one.
            (Some(client), None) => Some(self.start_session(&mut tx, &member, client).await?),
        };
        let event_id = tx.enqueue(EventKind::SessionsRevoked, &member).await?;
        tx.commit().await?;
        tracing::Span::current().record("event_id", tracing::field::display(event_id));
        Ok((member, issued))
    }

    /// Ends the caller's own session, or session `id` of theirs, writing
    /// MemberSessionEnded in the same transaction. `None` when the member has
    /// no session `id`; an ended session stays ended, and no event is
    /// written again.
    async fn end_session(&self, caller: Verified, id: Uuid) -> Result<Option<Member>, Error> {
        let mut tx = self.outbox.begin().await?;
        let member = self.lock_caller(&mut tx, caller).await?;
        let Some(ended) = store::end(&mut tx, caller.member_id, id, Utc::now()).await? else {
            return Ok(store::exists(&mut tx, caller.member_id, id)
                .await?
                .then_some(member));
        };
        let event_id = tx.enqueue_session_ended(&member, &ended).await?;
        tx.commit().await?;
        tracing::Span::current().record("event_id", tracing::field::display(event_id));
        Ok(Some(member))
    }

    /// A new session for `member` (a Login), written in `conn`, and its first
    /// tokens.
    async fn start_session(
        &self,
        conn: &mut sqlx::PgConnection,
        member: &Member,
        client: &str,
    ) -> Result<Issued, Error> {
        let now = Utc::now();
        let refresh = RefreshToken::generate();
        let session = NewSession {
            id: Uuid::new_v4(),
            member_id: member.id,
            client,
            now,
            expires_at: now + self.lifetimes.absolute,
            access_expires_at: now + self.token_ttl,
        };
        store::create(conn, &session, &refresh.hash()).await?;
        Ok(self.issue(member, session.id, refresh, session.access_expires_at))
    }

    /// Signs an access token for `member` in `session`.
    fn issue(
        &self,
        member: &Member,
        session: Uuid,
        refresh: RefreshToken,
        expires_at: chrono::DateTime<Utc>,
    ) -> Issued {
        Issued {
            access_token: self.signer.issue_in_session(
                member.id,
                member.version,
                session,
                expires_at,
            ),
            expires_at,
            refresh_token: refresh.into_string(),
            session_id: session,
        }
    }

    /// Refresh: rotates the presented token, or refuses it as
    /// [`decide`] says. Reuse ends the session and commits that before
    /// answering.
    async fn refresh(
        &self,
        presented: RefreshToken,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Issued, Error> {
        let hash = presented.hash();
        let owner = store::owner_of(&self.pool, &hash).await?;
        let account = owner.map_or_else(
            || "session:unknown".to_owned(),
            |(s, _)| format!("session:{s}"),
        );
        self.throttle.attempt(&account, peer)?;
        let Some((session, member_id)) = owner else {
            return Err(refresh_refused(Refresh::Unknown));
        };
        tracing::Span::current().record("member_id", tracing::field::display(member_id));
        let mut tx = self.outbox.begin().await?;
        // Member before session, as Logout locks them: a share lock, so
        // refreshes of one member's sessions do not wait on each other.
        // No live row: the account was deleted (its sessions with it).
        let member = repo::share_lock_member(&mut tx, member_id)
            .await?
            .ok_or_else(|| Failure::Unauthenticated(DELETED.into()))?;
        let found = store::lock_for_refresh(&mut tx, session, &hash).await?;
        let now = Utc::now();
        match decide(found, now, self.lifetimes) {
            Refresh::Valid => {
                let refresh = RefreshToken::generate();
                let expires_at = now + self.token_ttl;
                store::rotate(&mut tx, session, &refresh.hash(), now, expires_at).await?;
                tx.commit().await?;
                Ok(self.issue(&member, session, refresh, expires_at))
            }
            Refresh::Reuse => {
                if let Some(ended) = store::end(&mut tx, member_id, session, now).await? {
                    let event_id = tx.enqueue_session_ended(&member, &ended).await?;
                    tx.commit().await?;
                    tracing::Span::current().record("event_id", tracing::field::display(event_id));
                    tracing::warn!("a rotated refresh token was presented again: session ended");
                }
                Err(refresh_refused(Refresh::Reuse))
            }
            other => Err(refresh_refused(other)),
        }
    }

    /// Turns the caller into a tombstone, removes their pending and parked
    /// events and writes MemberDeleted, in one transaction. The lock taken
    /// first orders it with a concurrent UpdateProfile: whichever commits
    /// second sees the other (an UpdateProfile after it finds no member).
    async fn delete_account(&self, caller: Verified, hash: &str) -> Result<repo::Tombstone, Error> {
        let mut tx = self.outbox.begin().await?;
        self.lock_caller(&mut tx, caller).await?;
        let tombstone = repo::delete_member(&mut tx, caller.member_id, hash)
            .await?
            .ok_or(Error::ConcurrentChange)?;
        let event_id = tx.enqueue_deleted(&tombstone).await?;
        crate::erasure::record(&mut tx, &tombstone, &self.erasure_expected).await?;
        tx.commit().await?;
        tracing::Span::current().record("event_id", tracing::field::display(event_id));
        Ok(tombstone)
    }

    /// The caller of a member RPC, from their bearer token.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<Verified, Error> {
        let caller = memberflow_runtime::grpc::authenticate(&self.verifier, req.metadata())?;
        tracing::Span::current().record("member_id", tracing::field::display(caller.member_id));
        Ok(caller)
    }

    fn authenticate_service<T>(&self, req: &Request<T>) -> Result<(), Error> {
        let presented = req
            .metadata()
            .get(SERVICE_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Failure::Unauthenticated(format!("missing {SERVICE_TOKEN_HEADER}")))?;
        // Constant time: the comparison must not reveal how much matched.
        let expected = self.service_token.expose_secret().as_bytes();
        if bool::from(presented.as_bytes().ct_eq(expected)) {
            Ok(())
        } else {
            Err(Failure::Unauthenticated("invalid service credential".into()).into())
        }
    }
}

/// The tokens of a session after a Login, Refresh or ChangePassword.
struct Issued {
    access_token: String,
    expires_at: chrono::DateTime<Utc>,
    refresh_token: String,
    session_id: Uuid,
}

/// Refuses the caller's token if the member's sessions were all ended after
/// it was issued, or its own session was ended.
async fn check_caller(
    conn: &mut sqlx::PgConnection,
    caller: Verified,
    member: &Member,
) -> Result<(), Error> {
    if caller.revoked_by(&member.sessions()) {
        return Err(Failure::Unauthenticated(REVOKED.into()).into());
    }
    if let Some(session) = caller.session
        && store::has_ended(conn, session).await?
    {
        return Err(Failure::Unauthenticated(SESSION_ENDED.into()).into());
    }
    Ok(())
}

/// What a refused refresh answers: ABORTED for a retry within the grace,
/// UNAUTHENTICATED otherwise.
fn refresh_refused(why: Refresh) -> Error {
    let failure = match why {
        Refresh::RotatedWithinGrace => return Error::RefreshRetried,
        Refresh::Reuse => Failure::Unauthenticated(
            "the refresh token was already used: the session has ended; log in again".into(),
        ),
        Refresh::ExpiredAbsolute | Refresh::ExpiredIdle => {
            Failure::Unauthenticated("the session has expired; log in again".into())
        }
        Refresh::Ended | Refresh::Unknown | Refresh::Valid => Failure::Unauthenticated(
            "the refresh token is not valid (unknown or ended); log in again".into(),
        ),
    };
    failure.into()
}

/// The `user-agent` a Login came with, as a session's `client`: at most
/// [`MAX_CLIENT_CHARS`] characters.
fn client_of<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(MAX_CLIENT_CHARS)
        .collect()
}

/// Longest `client` kept from a `user-agent`.
const MAX_CLIENT_CHARS: usize = 200;

#[tonic::async_trait]
impl AuthService for AuthApi {
    #[tracing::instrument(name = "SignUp", skip_all, fields(member_id, event_id))]
    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        let new = NewMember::try_from(request.into_inner()).map_err(Error::from)?;
        let member = Self::sign_up(self, new).await?;
        Ok(Response::new(pb::SignUpResponse {
            consistency_token: consistency_token(&member),
            member: Some(member.into()),
        }))
    }

    #[tracing::instrument(name = "Login", skip_all, fields(member_id))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let client = client_of(&request);
        let req = request.into_inner();
        // Malformed input is just a failed login: no hint about what exists.
        let email = Email::parse(&req.email).ok();
        let account = email
            .as_ref()
            .map_or_else(|| req.email.to_lowercase(), |e| e.as_str().to_owned());
        self.throttle.attempt(&account, peer).map_err(Error::from)?;
        let creds = match &email {
            Some(e) => repo::find_credentials(&self.pool, e.as_str())
                .await
                .map_err(Error::from)?,
            None => None,
        };
        let (member, hash) = creds.map_or((None, None), |(m, h)| (Some(m), Some(h)));
        let ok = self.hasher.verify(req.password, hash).await?;
        let member = match (ok, member) {
            (true, Some(member)) => member,
            _ => return Err(Error::BadCredentials.into()),
        };
        tracing::Span::current().record("member_id", tracing::field::display(member.id));
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let issued = self.start_session(&mut conn, &member, &client).await?;
        Ok(Response::new(pb::LoginResponse {
            access_token: issued.access_token,
            expires_at: Some(timestamp(issued.expires_at)),
            refresh_token: issued.refresh_token,
            session_id: issued.session_id.to_string(),
        }))
    }

    #[tracing::instrument(name = "Refresh", skip_all, fields(member_id, event_id))]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let peer = request.remote_addr().map(|a| a.ip());
        let presented = RefreshToken::presented(request.into_inner().refresh_token);
        let issued = Self::refresh(self, presented, peer).await?;
        Ok(Response::new(pb::RefreshResponse {
            access_token: issued.access_token,
            expires_at: Some(timestamp(issued.expires_at)),
            refresh_token: issued.refresh_token,
            session_id: issued.session_id.to_string(),
        }))
    }

    #[tracing::instrument(name = "ListSessions", skip_all, fields(member_id))]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let mut conn = self.pool.acquire().await.map_err(Error::from)?;
        let member = repo::find_member(&mut conn, caller.member_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::from(Failure::Unauthenticated(DELETED.into())))?;
        check_caller(&mut conn, caller, &member).await?;
        let sessions = store::list(
            &mut *conn,
            caller.member_id,
            Utc::now(),
            self.lifetimes.idle,
        )
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| pb::Session {
                    current: caller.session == Some(s.id),
                    session_id: s.id.to_string(),
                    created_at: Some(timestamp(s.created_at)),
                    last_refreshed_at: Some(timestamp(s.last_refreshed_at)),
                    client: s.client,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "RevokeSession", skip_all, fields(member_id, event_id))]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let mut v = Violations::default();
        let id = v.check(
            "session_id",
            Uuid::parse_str(&request.into_inner().session_id).map_err(|_| "must be a session id"),
        );
        v.finish().map_err(Error::from)?;
        let id = id.expect("checked");
        let member = self
            .end_session(caller, id)
            .await?
            .ok_or_else(|| Error::from(Failure::NotFound("no such session".into())))?;
        Ok(Response::new(pb::RevokeSessionResponse {
            consistency_token: consistency_token(&member),
        }))
    }

    #[tracing::instrument(name = "GetMember", skip_all, fields(member_id))]
    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        self.authenticate_service(&request)?;
        let raw = request.into_inner().member_id;
        let mut v = Violations::default();
        let id = v.check("member_id", Uuid::parse_str(&raw));
        v.finish().map_err(Error::from)?;
        let id = id.expect("checked");
        tracing::Span::current().record("member_id", tracing::field::display(id));
        let member = repo::member_states(&self.pool, digest::FIRST, digest::LAST, &[id], 1)
            .await
            .map_err(Error::from)?
            .pop()
            // A tombstone is not a member: nothing a caller could provision.
            .filter(|m| !m.deleted)
            .ok_or_else(|| Failure::NotFound(format!("member {id}")))?;
        Ok(Response::new(pb::GetMemberResponse {
            member: Some(member.into()),
        }))
    }

    #[tracing::instrument(name = "UpdateProfile", skip_all, fields(member_id, event_id))]
    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let change = ProfileChange::try_from(request.into_inner()).map_err(Error::from)?;
        let member = Self::update_profile(self, caller, change).await?;
        Ok(Response::new(pb::UpdateProfileResponse {
            consistency_token: consistency_token(&member),
            member: Some(member.into()),
        }))
    }

    type ListMembersStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::ListMembersResponse, Status>> + Send>,
    >;

    #[tracing::instrument(name = "ListMembers", skip_all)]
    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<Self::ListMembersStream>, Status> {
        self.authenticate_service(&request)?;
        let q = MemberQuery::try_from(request.into_inner()).map_err(Error::from)?;
        let pool = self.pool.clone();
        // Keyset paging: each page starts after the last id sent, so the
        // stream reads each member once and a reader can resume anywhere.
        let pages = futures::stream::try_unfold(Some(q.after), move |after| {
            let pool = pool.clone();
            let ids = q.ids.clone();
            async move {
                let Some(after) = after else { return Ok(None) };
                let rows = repo::member_states(&pool, after, q.until, &ids, q.page_size)
                    .await
                    .map_err(|e| Status::from(Error::from(e)))?;
                if rows.is_empty() {
                    return Ok(None);
                }
                let next = (rows.len() as i64 == q.page_size).then(|| rows[rows.len() - 1].id);
                let page = pb::ListMembersResponse {
                    members: rows.into_iter().map(Into::into).collect(),
                };
                Ok(Some((page, next)))
            }
        });
        Ok(Response::new(Box::pin(pages)))
    }

    #[tracing::instrument(name = "DigestMembers", skip_all)]
    async fn digest_members(
        &self,
        request: Request<pb::DigestMembersRequest>,
    ) -> Result<Response<pb::DigestMembersResponse>, Status> {
        self.authenticate_service(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let after = v.check("after_id", parse_bound(&req.after_id, digest::FIRST));
        let until = v.check("until_id", parse_bound(&req.until_id, digest::LAST));
        if !(0..=1024).contains(&req.buckets) {
            v.add("buckets", "must be 0 (the default, 64) to 1024");
        }
        v.finish().map_err(Error::from)?;
        let buckets = if req.buckets == 0 { 64 } else { req.buckets };
        let digest = repo::digest(
            &self.pool,
            after.expect("checked"),
            until.expect("checked"),
            buckets,
        )
        .await
        .map_err(Error::from)?;
        Ok(Response::new(pb::DigestMembersResponse {
            buckets: digest
                .into_iter()
                .map(|b| pb::MemberBucket {
                    after_id: b.after.to_string(),
                    until_id: b.until.to_string(),
                    count: b.count,
                    hash: b.hash,
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "GetPublicKeys", skip_all)]
    async fn get_public_keys(
        &self,
        _request: Request<pb::GetPublicKeysRequest>,
    ) -> Result<Response<pb::GetPublicKeysResponse>, Status> {
        Ok(Response::new(pb::GetPublicKeysResponse {
            keys: self
                .public_keys
                .iter()
                .map(|k| pb::PublicKey {
                    kid: k.kid().to_owned(),
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    alg: "EdDSA".into(),
                    x: k.x(),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(name = "Logout", skip_all, fields(member_id, event_id))]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let all = request.into_inner().all_sessions;
        // A token without `sid` has no session of its own to end: only
        // ending them all ends it.
        let member = match caller.session {
            Some(session) if !all => {
                let member = self
                    .end_session(caller, session)
                    .await?
                    .ok_or_else(|| Error::from(Failure::Unauthenticated(SESSION_ENDED.into())))?;
                return Ok(Response::new(pb::LogoutResponse {
                    not_before: None,
                    consistency_token: consistency_token(&member),
                }));
            }
            _ => self.revoke_sessions(caller, None, None).await?.0,
        };
        Ok(Response::new(pb::LogoutResponse {
            not_before: member.sessions_not_before.map(timestamp),
            consistency_token: consistency_token(&member),
        }))
    }

    #[tracing::instrument(name = "ChangePassword", skip_all, fields(member_id, event_id))]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let peer = request.remote_addr().map(|a| a.ip());
        let client = client_of(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.current_password.is_empty() {
            v.add("current_password", "must not be empty");
        }
        let new_password = v.check("new_password", Password::parse(&req.new_password));
        v.finish().map_err(Error::from)?;
        let (member, old_hash) = repo::find_with_hash(&self.pool, caller.member_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::from(Failure::Unauthenticated(DELETED.into())))?;
        if caller.revoked_by(&member.sessions()) {
            return Err(Error::from(Failure::Unauthenticated(REVOKED.into())).into());
        }
        self.throttle
            .attempt(&format!("member:{}", caller.member_id), peer)
            .map_err(Error::from)?;
        let ok = self
            .hasher
            .verify(req.current_password, Some(old_hash.clone()))
            .await?;
        if !ok {
            let mut v = Violations::default();
            v.add("current_password", "does not match the member's password");
            return Err(Error::from(v).into());
        }
        let new_hash = self.hasher.hash(&new_password.expect("checked")).await?;
        let (member, issued) = self
            .revoke_sessions(caller, Some((&old_hash, &new_hash)), Some(&client))
            .await?;
        let issued = issued.expect("a kept session is asked for");
        Ok(Response::new(pb::ChangePasswordResponse {
            not_before: member.sessions_not_before.map(timestamp),
            consistency_token: consistency_token(&member),
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_at: Some(timestamp(issued.expires_at)),
            session_id: issued.session_id.to_string(),
        }))
    }

    #[tracing::instrument(name = "DeleteAccount", skip_all, fields(member_id, event_id))]
    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        if req.password.is_empty() {
            let mut v = Violations::default();
            v.add("password", "must not be empty");
            return Err(Error::from(v).into());
        }
        let (member, hash) = repo::find_with_hash(&self.pool, caller.member_id)
            .await
            .map_err(Error::from)?
            .ok_or_else(|| Error::from(Failure::Unauthenticated(DELETED.into())))?;
        if caller.revoked_by(&member.sessions()) {
            return Err(Error::from(Failure::Unauthenticated(REVOKED.into())).into());
        }
        self.throttle
            .attempt(&format!("member:{}", caller.member_id), peer)
            .map_err(Error::from)?;
        if !self.hasher.verify(req.password, Some(hash.clone())).await? {
            let mut v = Violations::default();
            v.add("password", "does not match the member's password");
            return Err(Error::from(v).into());
        }
        let tombstone = self.delete_account(caller, &hash).await?;
        Ok(Response::new(pb::DeleteAccountResponse {
            consistency_token: ConsistencyToken {
                member_id: tombstone.id,
                version: tombstone.version,
            }
            .encode(),
        }))
    }
}

/// What a token of a deleted member gets.
const DELETED: &str = "the account was deleted";

/// What a token from before a Logout or ChangePassword gets.
const REVOKED: &str = "the access token was revoked (logout or password change); log in again";
/// What a token of an ended session gets.
const SESSION_ENDED: &str = "the access token's session has ended (logout); log in again";

/// The token naming the member at the version this write produced.
fn consistency_token(member: &Member) -> String {
    ConsistencyToken {
        member_id: member.id,
        version: member.version,
    }
    .encode()
}

/// A validated ListMembers request.
struct MemberQuery {
    after: Uuid,
    until: Uuid,
    ids: Vec<Uuid>,
    page_size: i64,
}

impl TryFrom<pb::ListMembersRequest> for MemberQuery {
    type Error = Violations;

    fn try_from(req: pb::ListMembersRequest) -> Result<Self, Violations> {
        let mut v = Violations::default();
        let after = v.check("after_id", parse_bound(&req.after_id, digest::FIRST));
        let until = v.check("until_id", parse_bound(&req.until_id, digest::LAST));
        let ids: Vec<Uuid> = req
            .member_ids
            .iter()
            .filter_map(|raw| v.check("member_ids", Uuid::parse_str(raw)))
            .collect();
        if !(0..=5000).contains(&req.page_size) {
            v.add("page_size", "must be 0 (the default, 1000) to 5000");
        }
        v.finish()?;
        Ok(Self {
            after: after.expect("checked"),
            until: until.expect("checked"),
            ids,
            page_size: if req.page_size == 0 {
                1000
            } else {
                i64::from(req.page_size)
            },
        })
    }
}

impl From<repo::MemberState> for pb::MemberState {
    fn from(m: repo::MemberState) -> Self {
        if m.deleted {
            // A tombstone: id and version only.
            return Self {
                id: m.id.to_string(),
                version: m.version,
                deleted: true,
                ..Self::default()
            };
        }
        Self {
            id: m.id.to_string(),
            nickname: m.nickname,
            region: m.region,
            version: m.version,
            updated_at: Some(timestamp(m.updated_at)),
            sessions_not_before: m.sessions_not_before.map(timestamp),
            sessions_version: m.sessions_version,
            deleted: false,
        }
    }
}
