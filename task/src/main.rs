#[tokio::main]
async fn main() -> anyhow::Result<()> {
    memberflow_runtime::startup::main::<task::Application>(
        "The task service: the member replica and members' tasks.",
    )
    .await
}
