//! TLS on both gRPC servers and mutual TLS for task → auth, with
//! certificates made by the test (rcgen): auth accepts only clients whose
//! certificate its CA signed; task reaches auth over mTLS for its public
//! keys; plaintext and foreign certificates are refused.
use memberflow_runtime::startup::Service as _;
use std::{path::PathBuf, time::Duration};

use memberflow_contract::proto::{
    auth::v1::{self as auth_pb, auth_service_client::AuthServiceClient},
    task::v1 as pb,
};
use memberflow_runtime::tls::ClientTls;
use memberflow_tests::{
    apps::{Running, auth_settings, task_settings, wait_serving},
    env::TestEnv,
    eventually,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use task::ConsistencyMode;
use tonic::transport::Channel;
use uuid::Uuid;

/// PEM files in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("memberflow-tls-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    }

    /// A CA, written as `<name>-ca.pem`.
    fn ca(&self, name: &str) -> (CertifiedIssuer<'static, KeyPair>, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let path = self.write(&format!("{name}-ca.pem"), &ca.pem());
        (ca, path)
    }

    /// A certificate for `localhost` signed by `ca`: (cert path, key path).
    fn leaf(&self, name: &str, ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, ca).unwrap();
        (
            self.write(&format!("{name}.pem"), &cert.pem()),
            self.write(&format!("{name}.key"), &key.serialize_pem()),
        )
    }
}

async fn channel(tls: &ClientTls, addr: &str) -> Result<Channel, tonic::transport::Error> {
    tls.endpoint("test", addr)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

#[tokio::test]
async fn tls_servers_and_mutual_tls_from_task_to_auth() {
    let mut env = TestEnv::new();
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("memberflow");
    let (rogue_ca, _) = pki.ca("rogue");
    let (auth_cert, auth_key) = pki.leaf("auth", &ca);
    let (task_cert, task_key) = pki.leaf("task", &ca);
    let (client_cert, client_key) = pki.leaf("client", &ca);
    let (rogue_cert, rogue_key) = pki.leaf("rogue-client", &rogue_ca);

    let mut s = auth_settings(&mut env);
    s.base.server.tls.cert_path = auth_cert;
    s.base.server.tls.key_path = auth_key;
    s.base.server.tls.client_ca_path = ca_path.clone();
    let app = auth::Application::build(s).await.unwrap();
    let auth_addr = format!("https://localhost:{}", app.local_addr().port());
    let _auth = Running::start(app.local_addr(), move |t| app.run_until_stopped(t));

    let trusted = ClientTls {
        ca_path: ca_path.clone(),
        cert_path: client_cert,
        key_path: client_key,
        domain: String::new(),
    };
    let auth_channel = eventually("auth accepts TLS", Duration::from_secs(30), || {
        let (tls, addr) = (trusted.clone(), auth_addr.clone());
        async move { channel(&tls, &addr).await.ok() }
    })
    .await;
    wait_serving(auth_channel.clone(), auth::SERVICE_NAME).await;

    // Refused: plaintext, no client certificate, a certificate from another CA.
    let plain = format!("http://127.0.0.1:{}", auth_addr.rsplit(':').next().unwrap());
    let no_cert = ClientTls {
        ca_path: ca_path.clone(),
        ..Default::default()
    };
    let foreign = ClientTls {
        ca_path: ca_path.clone(),
        cert_path: rogue_cert,
        key_path: rogue_key,
        domain: String::new(),
    };
    for (what, tls, addr) in [
        ("plaintext", ClientTls::default(), plain.as_str()),
        ("no client certificate", no_cert, auth_addr.as_str()),
        ("a foreign certificate", foreign, auth_addr.as_str()),
    ] {
        let refused = match channel(&tls, addr).await {
            Err(_) => true,
            Ok(ch) => AuthServiceClient::new(ch)
                .get_public_keys(auth_pb::GetPublicKeysRequest {})
                .await
                .is_err(),
        };
        assert!(refused, "{what} was accepted");
    }

    // task: TLS on its own port, mTLS to auth, and no configured public key,
    // so verifying a token needs GetPublicKeys over mTLS.
    let mut ts = task_settings(&mut env, ConsistencyMode::ReadThrough, &auth_addr);
    ts.token.public_keys = String::new();
    ts.base.server.tls.cert_path = task_cert.clone();
    ts.base.server.tls.key_path = task_key.clone();
    ts.auth.tls = ClientTls {
        ca_path: ca_path.clone(),
        cert_path: task_cert,
        key_path: task_key,
        domain: String::new(),
    };
    let app = task::Application::build(ts).await.unwrap();
    let task_addr = format!("https://localhost:{}", app.local_addr().port());
    let _task = Running::start(app.local_addr(), move |t| app.run_until_stopped(t));
    let server_only = ClientTls {
        ca_path,
        ..Default::default()
    };
    let task_channel = eventually("task accepts TLS", Duration::from_secs(30), || {
        let (tls, addr) = (server_only.clone(), task_addr.clone());
        async move { channel(&tls, &addr).await.ok() }
    })
    .await;
    wait_serving(task_channel.clone(), task::SERVICE_NAME).await;

    let mut auth = AuthServiceClient::new(auth_channel);
    auth.sign_up(auth_pb::SignUpRequest {
        email: "tls@example.com".into(),
        password: "correct horse battery".into(),
        nickname: "Tee".into(),
        region: "Asia/Seoul".into(),
    })
    .await
    .unwrap();
    let token = auth
        .login(auth_pb::LoginRequest {
            email: "tls@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let mut tasks = memberflow_client::TaskClient::new(task_channel, &token).unwrap();
    tasks
        .create_task(pb::CreateTaskRequest {
            request_id: Uuid::new_v4().to_string(),
            title: "over TLS".into(),
            due_local: "2026-12-24T18:00".into(),
            consistency_token: String::new(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn sslmode_in_the_database_url_encrypts_the_connection() {
    let mut env = TestEnv::new();
    let mut s = auth_settings(&mut env);
    let url = env.database_url("auth");
    let name = url.rsplit('/').next().unwrap().to_owned();
    s.database =
        memberflow_runtime::db::DatabaseSettings::with_url(&format!("{url}?sslmode=require"));
    let mut auth = memberflow_tests::apps::spawn_auth(s).await;
    auth.client
        .sign_up(auth_pb::SignUpRequest {
            email: "ssl@example.com".into(),
            password: "correct horse battery".into(),
            nickname: "Ess".into(),
            region: "Asia/Seoul".into(),
        })
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", memberflow_tests::env::pg_base()))
        .await
        .unwrap();
    let (all, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.datname = $1",
    )
    .bind(&name)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(
        all > 0 && all == encrypted,
        "{encrypted} of {all} connections use TLS"
    );
}
