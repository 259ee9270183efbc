//! The exact input rules, through gRPC: every bad value gets
//! INVALID_ARGUMENT with a field violation naming it (beside any other bad
//! field), and changes nothing; one email address is one account however it
//! is spelled.
use memberflow_contract::proto::{auth::v1 as auth_pb, task::v1 as pb};
use memberflow_tests::fixtures::signup;
use memberflow_tests::system::spawn_task_alone;
use memberflow_tests::{
    apps::{auth_settings, mint_token, spawn_auth},
    env::TestEnv,
};
use task::ConsistencyMode;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use uuid::Uuid;

/// `(field, description)` of each BadRequest violation.
fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn nicknames_and_emails_follow_the_text_rules() {
    let mut env = TestEnv::new();
    let mut auth = spawn_auth(auth_settings(&mut env)).await;
    let db = env.pool("auth").await;
    let bad_nicknames = [
        ("a\0b", "control"),
        ("esc\u{1b}[2J", "control"),
        ("two\nlines", "control"),
        ("\u{200B}\u{200D}", "visible"),
        ("evil\u{202E}gnp.exe", "bidirectional"),
        ("\u{2066}x\u{2069}", "bidirectional"),
    ];
    for (nickname, says) in bad_nicknames {
        let err = auth
            .client
            .sign_up(auth_pb::SignUpRequest {
                nickname: nickname.into(),
                ..signup("ann@example.com")
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{nickname:?}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "nickname");
        assert!(v[0].1.contains(says), "{nickname:?}: {}", v[0].1);
    }
    // NFC before the length check: 32 decomposed "é" are 32 characters.
    let decomposed = "e\u{301}".repeat(32);
    let m = auth
        .client
        .sign_up(auth_pb::SignUpRequest {
            nickname: decomposed.clone(),
            ..signup("nfc@example.com")
        })
        .await
        .unwrap()
        .into_inner()
        .member
        .unwrap();
    assert_eq!(m.nickname, "é".repeat(32));

    // One address, several spellings: one account.
    auth.client
        .sign_up(auth_pb::SignUpRequest {
            nickname: "U".into(),
            ..signup("u@bücher.de")
        })
        .await
        .unwrap();
    for same in ["u@xn--bcher-kva.de", "U@BÜCHER.de", "ｕ＠ｂüｃｈｅｒ．ｄｅ"] {
        let err = auth
            .client
            .sign_up(auth_pb::SignUpRequest {
                nickname: "U".into(),
                ..signup(same)
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{same}");
        auth.client
            .login(auth_pb::LoginRequest {
                email: same.into(),
                password: "correct horse battery".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("login as {same}: {e:?}"));
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT email FROM members ORDER BY email")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(stored, ["nfc@example.com", "u@xn--bcher-kva.de"]);
}

#[tokio::test]
async fn titles_and_due_times_follow_the_rules_and_every_bad_field_is_named() {
    let mut env = TestEnv::new();
    let task = spawn_task_alone(&mut env, ConsistencyMode::NotReady).await;
    let db = env.pool("task").await;
    let token = mint_token(Uuid::now_v7(), chrono::Duration::minutes(5));
    let mut client = task.client(&token);
    let create = |title: &str, due: &str| pb::CreateTaskRequest {
        request_id: Uuid::new_v4().to_string(),
        title: title.into(),
        due_local: due.into(),
        consistency_token: String::new(),
    };
    /// Title, due_local, and each expected (field, words of its description).
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 8] = [
        // NUL was INTERNAL, and left out when another field was bad too.
        ("a\0b", "2026-12-01T09:00", &[("title", "control")]),
        (
            "a\0b",
            "2026-02-30T09:00",
            &[
                ("title", "control"),
                ("due_local", "2026-02-30 is not a calendar date"),
            ],
        ),
        ("line\nbreak", "2026-12-01T09:00", &[("title", "control")]),
        ("\u{1b}", "2026-12-01T09:00", &[("title", "control")]),
        (
            "\u{FEFF}\u{200B}",
            "2026-12-01T09:00",
            &[("title", "visible")],
        ),
        (
            "x\u{202E}y",
            "2026-12-01T09:00",
            &[("title", "bidirectional")],
        ),
        ("ok", "0001-01-01T00:00", &[("due_local", "1900 to 2200")]),
        ("ok", "9999-12-31T23:59", &[("due_local", "1900 to 2200")]),
    ];
    for (title, due, expected) in cases {
        let err = client.create_task(create(title, due)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{title:?} {due}");
        let got = violations(&err);
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for ((field, description), (want_field, says)) in got.iter().zip(expected) {
            assert_eq!(field, want_field);
            assert!(description.contains(says), "{field}: {description}");
        }
    }
    let tasks: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(tasks, 0, "bad input changes nothing");
}
