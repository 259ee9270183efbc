//! What the logs may never hold, whatever an operator sets `RUST_LOG` to.
//!
//! lapin logs every message the broker returns at WARN with its whole body;
//! a MemberChanged's body holds the member's nickname. The services hold
//! that target back on every layer (`runtime/src/telemetry.rs`,
//! `LAPIN_RETURNS`), so `RUST_LOG=info,lapin=warn` cannot lift it.
use std::time::Duration;

use memberflow_contract::proto::auth::v1::{
    self as auth_pb, auth_service_client::AuthServiceClient,
};
use memberflow_tests::{
    env::TestEnv,
    eventually,
    fixtures::signup,
    process::{ServiceProcess, auth_vars, service_exe},
};

const WAIT: Duration = Duration::from_secs(30);
const NICKNAME: &str = "Zephyrine";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returned_message_body_never_reaches_the_log_whatever_rust_log_says() {
    let mut env = TestEnv::new();
    let vars = auth_vars(&mut env);
    // An operator who wants to see more of lapin.
    let auth = ServiceProcess::start_with_env(
        &service_exe(),
        "auth",
        &vars,
        &[("RUST_LOG", "info,lapin=warn")],
    )
    .await;
    // No queue is bound in this vhost: the broker returns every event the
    // relay publishes (NO_ROUTE), and the relay keeps retrying it.
    AuthServiceClient::new(auth.channel.clone())
        .sign_up(auth_pb::SignUpRequest {
            nickname: NICKNAME.into(),
            ..signup("zephyrine@example.com")
        })
        .await
        .expect("sign up");
    eventually("the relay to report the unroutable event", WAIT, || {
        let log = auth.log_text();
        async move {
            log.contains("nothing in the outbox is routable")
                .then_some(())
        }
    })
    .await;
    let log = auth.log_text();
    // The nickname as Debug prints a body: decimal bytes.
    let as_bytes = NICKNAME
        .bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for leak in ["Server returned us a message", NICKNAME, as_bytes.as_str()] {
        assert!(!log.contains(leak), "the log holds {leak:?}:\n{log}");
    }
    auth.kill().await;
}
