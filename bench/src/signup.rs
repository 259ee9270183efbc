//! Signups through auth's API, and the same SQL transaction without the
//! service around it (the limit the service is compared against).
use anyhow::Context as _;
use auth::{domain::NewMember, repo};
use memberflow_common::proto::auth::v1::{SignUpRequest, auth_service_client::AuthServiceClient};
use sqlx::PgPool;
use tonic::transport::Channel;
use uuid::Uuid;

/// A valid, unique signup. `tag` keeps runs in one database apart.
pub(crate) fn request(tag: &str, i: usize) -> SignUpRequest {
    SignUpRequest {
        email: format!("{tag}-{i}@bench.example"),
        password: "correct horse battery staple".into(),
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

/// One signup transaction exactly as auth commits it (the member insert and
/// its outbox row, through auth's own repository functions), with no RPC,
/// validation or hashing around it.
pub(crate) async fn raw_transaction(pool: PgPool, req: SignUpRequest) -> anyhow::Result<Uuid> {
    let new = NewMember::try_from(req).map_err(|_| anyhow::anyhow!("invalid signup"))?;
    let (member, _) = repo::insert_member(&pool, &new, STORED_HASH).await?;
    Ok(member.id)
}
