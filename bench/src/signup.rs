//! Signups through auth's API, and the same SQL transaction without the
//! service around it (the limit the service is compared against).
use anyhow::Context as _;
use auth::{
    domain::NewMember,
    outbox::write::{self, Outbox},
};
use memberflow_contract::proto::auth::v1::{SignUpRequest, auth_service_client::AuthServiceClient};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

/// The password of every bench member.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A valid, unique signup. `tag` keeps runs in one database apart.
pub(crate) fn request(tag: &str, i: usize) -> SignUpRequest {
    SignUpRequest {
        email: format!("{tag}-{i}@bench.example"),
        password: PASSWORD.into(),
        nickname: format!("bench {i}"),
        region: "Asia/Seoul".into(),
    }
}

/// Signs one member up and returns its id.
pub(crate) async fn sign_up(
    mut client: AuthServiceClient<Channel>,
    req: SignUpRequest,
) -> anyhow::Result<Uuid> {
    let member = client
        .sign_up(req)
        .await?
        .into_inner()
        .member
        .context("SignUp answered without a member")?;
    Ok(member.id.parse()?)
}

/// A stored Argon2id hash of typical length; the raw transaction stores it
/// as is, since hashing is not part of what it measures.
const STORED_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0YmVuY2g$0M4Ybt2n6a5gFvhbY1W0qgW3q2ZrPj9o4vbzTq8tK3E";

/// One signup exactly as auth commits it (the member and its outbox row in
/// one statement, through auth's own [`write::sign_up`]), with no RPC,
/// validation or hashing around it, and no relay to wake.
pub(crate) async fn raw_transaction(pool: PgPool, req: SignUpRequest) -> anyhow::Result<Uuid> {
    let new = NewMember::try_from(req).map_err(|_| anyhow::anyhow!("invalid signup"))?;
    let outbox = Outbox::without_wake(pool, &auth::outbox::SPEC);
    let (member, _) = write::sign_up(&outbox, &new, STORED_HASH).await?;
    Ok(member.id)
}
