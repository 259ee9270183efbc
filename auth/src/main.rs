#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memberflow_runtime::startup::main::<auth::Application>(
        "The auth service: members, access tokens and the outbox relay.",
    )
    .await
}
