//! Nagle regression: a successful Login written by the server in several
//! segments (headers, data, trailers) used to wait about 40 ms for the
//! client's delayed ACK, because the servers did not set TCP_NODELAY on
//! accepted sockets. tonic's own client hid it; this one is a plain
//! `TcpStream` speaking h2 that does not set nodelay itself.
use std::time::{Duration, Instant};

use memberflow_contract::proto::auth::v1 as pb;
use memberflow_tests::{
    apps::{auth_settings, spawn_auth},
    env::TestEnv,
};
use prost::Message;

/// One unary gRPC call over `client`; returns its grpc-status and duration.
async fn call(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    path: &str,
    message: &impl Message,
) -> (String, Duration) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let body = message.encode_to_vec();
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(0);
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    let started = Instant::now();
    let ready = client.clone().ready().await.unwrap();
    *client = ready;
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(frame.into(), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    (status, started.elapsed())
}

#[tokio::test]
async fn a_plain_h2_client_sees_a_successful_login_without_a_delayed_ack_stall() {
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    auth.client
        .sign_up(pb::SignUpRequest {
            email: "fast@example.com".into(),
            password: "correct horse battery".into(),
            nickname: "Fast".into(),
            region: "Asia/Seoul".into(),
        })
        .await
        .unwrap();

    // No set_nodelay here, on purpose: the server must not rely on it.
    let tcp = tokio::net::TcpStream::connect(auth.app.addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let login = pb::LoginRequest {
        email: "fast@example.com".into(),
        password: "correct horse battery".into(),
    };
    let mut took = Vec::new();
    for _ in 0..20 {
        let (status, elapsed) = call(&mut client, "/auth.v1.AuthService/Login", &login).await;
        assert_eq!(status, "0", "Login succeeded");
        took.push(elapsed);
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(10),
        "a successful Login took {median:?} at the median (all: {took:?}); a ~40 ms figure is Nagle meeting delayed ACK"
    );
}
