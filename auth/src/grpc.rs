//! `auth.v1.AuthService`: proto ↔ domain conversion and the RPC handlers.
use std::sync::Arc;

use memberflow_contract::consistency::ConsistencyToken;
use memberflow_contract::digest::{self, parse_bound};
use memberflow_contract::proto::auth::v1::{self as pb, auth_service_server::AuthService};
use memberflow_contract::time::timestamp;
use memberflow_contract::token::{PublicKey, Verified, Verifier};
use memberflow_runtime::error::Failure;
use memberflow_runtime::error::Violations;
use memberflow_runtime::grpc::SERVICE_TOKEN_HEADER;
use memberflow_runtime::unit::{CallSlot, Units};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    Error,
    domain::{
        AccessChange, Email, Member, NewMember, Nickname, Password, ProfileChange, Region, Role,
        SuspensionReason,
    },
    password::Admitted,
    repo,
    sessions::RefreshToken,
    usecases::{Auth, Deleting, login::LoginAttempt},
};

/// The RPC handlers: each decodes and authorises, runs its use case as a
/// unit of work ([`Units::run`]), and encodes the answer. They hold no pool:
/// database work reaches PostgreSQL only through a unit.
#[derive(Clone)]
pub struct AuthApi {
    /// The use cases.
    pub(crate) auth: Auth,
    pub(crate) units: Units,
    /// Checks tokens against every key auth accepts.
    pub(crate) verifier: Verifier,
    /// What GetPublicKeys serves: the signer's key first.
    pub(crate) public_keys: Arc<[PublicKey]>,
    pub(crate) service_token: SecretString,
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
    /// A place in the hashing queue for a call that checks or hashes a
    /// password, taken before it waits for a unit's place: a full queue
    /// refuses at once (RESOURCE_EXHAUSTED), and nothing is charged to the
    /// account. Admission, like the concurrency limit, not a rule.
    fn hashing_place(&self) -> Result<Admitted, Status> {
        Ok(self.auth.hasher.admit()?)
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
        let slot = CallSlot::of(&request);
        let new = NewMember::try_from(request.into_inner()).map_err(Error::from)?;
        let admitted = self.hashing_place()?;
        let use_case = self.auth.clone().sign_up(new, admitted);
        let member = self.units.run(slot, use_case).await?;
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
        let slot = CallSlot::of(&request);
        let peer = request.remote_addr().map(|a| a.ip());
        let client = client_of(&request);
        let req = request.into_inner();
        let attempt = LoginAttempt {
            email: req.email,
            password: req.password,
            peer,
            client,
        };
        let admitted = self.hashing_place()?;
        let use_case = self.auth.clone().login(attempt, admitted);
        let issued = self.units.run(slot, use_case).await?;
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
        let slot = CallSlot::of(&request);
        let peer = request.remote_addr().map(|a| a.ip());
        let presented = RefreshToken::presented(request.into_inner().refresh_token);
        let issued = self
            .units
            .run(slot, self.auth.clone().refresh(presented, peer))
            .await?;
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
        let sessions = self
            .units
            .run(
                CallSlot::of(&request),
                self.auth.clone().list_sessions(caller),
            )
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: sessions
                .into_iter()
                .map(|s| pb::Session {
                    current: s.current,
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
        let slot = CallSlot::of(&request);
        let mut v = Violations::default();
        let id = v.check(
            "session_id",
            Uuid::parse_str(&request.into_inner().session_id).map_err(|_| "must be a session id"),
        );
        v.finish().map_err(Error::from)?;
        let id = id.expect("checked");
        let member = self
            .units
            .run(slot, self.auth.clone().revoke_session(caller, id))
            .await?;
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
        let slot = CallSlot::of(&request);
        let raw = request.into_inner().member_id;
        let mut v = Violations::default();
        let id = v.check("member_id", Uuid::parse_str(&raw));
        v.finish().map_err(Error::from)?;
        let id = id.expect("checked");
        tracing::Span::current().record("member_id", tracing::field::display(id));
        let member = self
            .units
            .run(slot, self.auth.clone().get_member(id))
            .await?;
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
        let slot = CallSlot::of(&request);
        let change = ProfileChange::try_from(request.into_inner()).map_err(Error::from)?;
        let member = self
            .units
            .run(slot, self.auth.clone().update_profile(caller, change))
            .await?;
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
        let slot = CallSlot::of(&request);
        let q = MemberQuery::try_from(request.into_inner()).map_err(Error::from)?;
        let (auth, units) = (self.auth.clone(), self.units.clone());
        // Keyset paging: each page starts after the last id sent, so the
        // stream reads each member once and a reader can resume anywhere.
        // Each page is a unit of work of its own.
        let pages = futures::stream::try_unfold(Some(q.after), move |after| {
            let (auth, units, slot) = (auth.clone(), units.clone(), slot.clone());
            let ids = q.ids.clone();
            async move {
                let Some(after) = after else { return Ok(None) };
                let rows = units
                    .run(slot, auth.members_page(after, q.until, ids, q.page_size))
                    .await
                    .map_err(Status::from)?;
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
        let slot = CallSlot::of(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let after = v.check("after_id", parse_bound(&req.after_id, digest::FIRST));
        let until = v.check("until_id", parse_bound(&req.until_id, digest::LAST));
        if !(0..=1024).contains(&req.buckets) {
            v.add("buckets", "must be 0 (the default, 64) to 1024");
        }
        v.finish().map_err(Error::from)?;
        let buckets = if req.buckets == 0 { 64 } else { req.buckets };
        let digest = self
            .units
            .run(
                slot,
                self.auth
                    .clone()
                    .digest(after.expect("checked"), until.expect("checked"), buckets),
            )
            .await?;
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
        let slot = CallSlot::of(&request);
        let all = request.into_inner().all_sessions;
        let (member, not_before) = self
            .units
            .run(slot, self.auth.clone().logout(caller, all))
            .await?;
        Ok(Response::new(pb::LogoutResponse {
            not_before: not_before.map(timestamp),
            consistency_token: consistency_token(&member),
        }))
    }

    #[tracing::instrument(name = "ChangePassword", skip_all, fields(member_id, event_id))]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = self.authenticate(&request)?;
        let slot = CallSlot::of(&request);
        let peer = request.remote_addr().map(|a| a.ip());
        let client = client_of(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.current_password.is_empty() {
            v.add("current_password", "must not be empty");
        }
        let new_password = v.check("new_password", Password::parse(&req.new_password));
        v.finish().map_err(Error::from)?;
        let admitted = [self.hashing_place()?, self.hashing_place()?];
        let use_case = self.auth.clone().change_password(
            caller,
            req.current_password,
            new_password.expect("checked"),
            peer,
            client,
            admitted,
        );
        let (member, issued) = self.units.run(slot, use_case).await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            not_before: member.sessions_not_before.map(timestamp),
            consistency_token: consistency_token(&member),
            access_token: issued.access_token,
            refresh_token: issued.refresh_token,
            expires_at: Some(timestamp(issued.expires_at)),
            session_id: issued.session_id.to_string(),
        }))
    }

    #[tracing::instrument(name = "SetRole", skip_all, fields(member_id, event_id))]
    async fn set_role(
        &self,
        request: Request<pb::SetRoleRequest>,
    ) -> Result<Response<pb::SetRoleResponse>, Status> {
        let (member, consistency_token) = self
            .change_access(
                request,
                |r| &r.member_id,
                |r, v| {
                    v.check("role", Role::parse(&r.role))
                        .map(AccessChange::SetRole)
                },
            )
            .await?;
        Ok(Response::new(pb::SetRoleResponse {
            member: Some(member),
            consistency_token,
        }))
    }

    #[tracing::instrument(name = "SuspendMember", skip_all, fields(member_id, event_id))]
    async fn suspend_member(
        &self,
        request: Request<pb::SuspendMemberRequest>,
    ) -> Result<Response<pb::SuspendMemberResponse>, Status> {
        let (member, consistency_token) = self
            .change_access(
                request,
                |r| &r.member_id,
                |r, v| {
                    v.check("reason", SuspensionReason::parse(&r.reason))
                        .map(AccessChange::Suspend)
                },
            )
            .await?;
        Ok(Response::new(pb::SuspendMemberResponse {
            member: Some(member),
            consistency_token,
        }))
    }

    #[tracing::instrument(name = "ReinstateMember", skip_all, fields(member_id, event_id))]
    async fn reinstate_member(
        &self,
        request: Request<pb::ReinstateMemberRequest>,
    ) -> Result<Response<pb::ReinstateMemberResponse>, Status> {
        let (member, consistency_token) = self
            .change_access(
                request,
                |r| &r.member_id,
                |_, _| Some(AccessChange::Reinstate),
            )
            .await?;
        Ok(Response::new(pb::ReinstateMemberResponse {
            member: Some(member),
            consistency_token,
        }))
    }

    #[tracing::instrument(name = "DeleteAccount", skip_all, fields(member_id, event_id))]
    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        // A suspended member cannot log in, so may name the account by
        // email instead of a token; with a token, the token names it.
        let has_token = request.metadata().contains_key("authorization");
        let caller = if has_token || request.get_ref().email.is_empty() {
            Some(self.authenticate(&request)?)
        } else {
            None
        };
        let slot = CallSlot::of(&request);
        let peer = request.remote_addr().map(|a| a.ip());
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.password.is_empty() {
            v.add("password", "must not be empty");
        }
        if caller.is_some() && !req.email.is_empty() {
            v.add(
                "email",
                "only without an access token (the token names the account)",
            );
        }
        v.finish().map_err(Error::from)?;
        let who = match caller {
            Some(caller) => Deleting::Caller(caller),
            None => Deleting::Account { email: req.email },
        };
        let admitted = self.hashing_place()?;
        let use_case = self
            .auth
            .clone()
            .delete_account(who, req.password, peer, admitted);
        let tombstone = self.units.run(slot, use_case).await?;
        Ok(Response::new(pb::DeleteAccountResponse {
            consistency_token: ConsistencyToken {
                member_id: tombstone.id,
                version: tombstone.version,
            }
            .encode(),
        }))
    }
}

impl AuthApi {
    /// Runs an admin's permission change on `member_id` (checked first:
    /// bad input is refused before the caller's role is looked at, and
    /// changes nothing) and answers the member as it is after, with a
    /// consistency token at its version.
    async fn change_access<T>(
        &self,
        request: Request<T>,
        member_id: impl Fn(&T) -> &str,
        change: impl FnOnce(&T, &mut Violations) -> Option<AccessChange>,
    ) -> Result<(pb::MemberState, String), Status> {
        let caller = self.authenticate(&request)?;
        let slot = CallSlot::of(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let target = v.check(
            "member_id",
            Uuid::parse_str(member_id(&req)).map_err(|_| "must be a member id (a UUID)"),
        );
        let change = change(&req, &mut v);
        v.finish().map_err(Error::from)?;
        let use_case = self.auth.clone().change_access(
            caller,
            target.expect("checked"),
            change.expect("checked"),
        );
        let member = self.units.run(slot, use_case).await?;
        Ok((member_state(&member), consistency_token(&member)))
    }
}

/// The replicable state of a live member, as GetMember serves it.
fn member_state(m: &Member) -> pb::MemberState {
    pb::MemberState {
        id: m.id.to_string(),
        nickname: m.nickname.clone(),
        region: m.region.clone(),
        version: m.version,
        updated_at: Some(timestamp(m.updated_at)),
        sessions_not_before: m.sessions_not_before.map(timestamp),
        sessions_version: m.sessions_version,
        deleted: false,
        role: m.role.clone(),
        suspension: crate::outbox::suspension(m),
    }
}

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
            suspension: crate::outbox::pb_suspension(m.suspended_at, m.suspended_reason.as_deref()),
            role: m.role,
        }
    }
}
