//! docker-compose.yml cannot be run here (no Docker engine), so the suite
//! parses it and checks what it promises: services, ports, env, healthchecks.
use memberflow_runtime::settings::ServiceSettings as _;
use serde_yaml::Value;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid YAML")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_file_names_every_service_port_and_setting() {
    let c = compose();
    let s = &c["services"];
    for name in ["postgres", "rabbitmq", "auth", "task"] {
        assert!(s[name].is_mapping(), "service {name}");
    }
    assert!(s["postgres"]["healthcheck"]["test"].is_sequence());
    assert!(s["rabbitmq"]["healthcheck"]["test"].is_sequence());
    assert!(
        s["rabbitmq"]["image"]
            .as_str()
            .unwrap()
            .contains("management")
    );
    assert!(strings(&s["rabbitmq"]["ports"]).contains(&"15672:15672".to_owned()));
    assert_eq!(
        strings(&s["auth"]["ports"]),
        vec!["50051:50051", "9091:9091"]
    );
    assert_eq!(
        strings(&s["task"]["ports"]),
        vec!["50052:50052", "9092:9092"]
    );
    // Prometheus scrapes both admin endpoints; Grafana gets the datasource
    // and the dashboard from the repository.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let scrape =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/prometheus.yml")).unwrap();
    assert!(
        scrape.contains("auth:9091") && scrape.contains("task:9092"),
        "{scrape}"
    );
    assert!(strings(&s["prometheus"]["ports"]).contains(&"9090:9090".to_owned()));
    assert!(strings(&s["grafana"]["ports"]).contains(&"3000:3000".to_owned()));
    for volume in strings(&s["prometheus"]["volumes"])
        .into_iter()
        .chain(strings(&s["grafana"]["volumes"]))
    {
        let local = volume.split(':').next().unwrap();
        assert!(
            std::path::Path::new(&format!("{root}/{local}")).exists(),
            "{volume} mounts a missing path"
        );
    }
    for (svc, dockerfile) in [("auth", "auth/Dockerfile"), ("task", "task/Dockerfile")] {
        assert_eq!(s[svc]["build"]["dockerfile"].as_str(), Some(dockerfile));
        let path = format!("{}/../{dockerfile}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.matches("FROM ").count() >= 2,
            "{dockerfile} is multi-stage"
        );
        assert!(
            text.contains("\nUSER "),
            "{dockerfile} runs as a non-root user"
        );
        assert_eq!(
            s[svc]["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy")
        );
    }
    let a = &s["auth"]["environment"];
    for key in [
        "AUTH__SERVER__ADDR",
        "AUTH__DATABASE__URL",
        "AUTH__AMQP__URL",
        "AUTH__TOKEN__SIGNING_KEY",
        "AUTH__TOKEN__SERVICE_TOKEN",
    ] {
        assert!(a[key].is_string(), "{key}");
    }
    let t = &s["task"]["environment"];
    for key in [
        "TASK__SERVER__ADDR",
        "TASK__DATABASE__URL",
        "TASK__AMQP__URL",
        "TASK__AUTH__ADDR",
        "TASK__AUTH__SERVICE_TOKEN",
    ] {
        assert!(t[key].is_string(), "{key}");
    }
    assert_eq!(
        t["TASK__CONSISTENCY__MODE"].as_str(),
        Some("${CONSISTENCY_MODE:-not_ready}"),
        "one variable switches the mode"
    );
    // Secrets come from the environment or .env, and compose refuses to
    // start without them; no file the images copy carries one.
    for (svc, key) in [
        ("auth", "AUTH__TOKEN__SIGNING_KEY"),
        ("auth", "AUTH__TOKEN__SERVICE_TOKEN"),
        ("auth", "AUTH__AMQP__URL"),
        ("task", "TASK__AUTH__SERVICE_TOKEN"),
        ("task", "TASK__AMQP__URL"),
    ] {
        let value = s[svc]["environment"][key].as_str().unwrap();
        assert!(value.contains(":?"), "{key} is required: {value}");
        assert!(!value.contains("guest:guest"), "{key}: {value}");
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for file in ["auth/Dockerfile", "task/Dockerfile"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            !text.contains("development.toml"),
            "{file} copies dev secrets"
        );
    }
    for file in ["base.toml", "production.toml"] {
        let text = std::fs::read_to_string(format!("{root}/config/{file}")).unwrap();
        for known in [
            "MC4CAQAwBQYDK2VwBCIEIOVSUVx4HGcdvzxXuuKP6ZkRcdz8kXh67Rsr+Fgs89hj",
            memberflow_runtime::secrets::DEV_SERVICE_TOKEN,
        ] {
            assert!(!text.contains(known), "config/{file} carries a secret");
        }
    }
}

#[test]
fn each_service_connects_as_its_own_user_and_role() {
    let c = compose();
    let s = &c["services"];
    for (svc, prefix, broker_user, role) in [
        ("auth", "AUTH", "memberflow-auth:", "memberflow_auth:"),
        ("task", "TASK", "memberflow-task:", "memberflow_task:"),
    ] {
        let env = &s[svc]["environment"];
        let amqp = env[format!("{prefix}__AMQP__URL").as_str()]
            .as_str()
            .unwrap();
        let db = env[format!("{prefix}__DATABASE__URL").as_str()]
            .as_str()
            .unwrap();
        assert!(amqp.starts_with(&format!("amqp://{broker_user}")), "{amqp}");
        assert!(db.starts_with(&format!("postgres://{role}")), "{db}");
        assert_eq!(
            s[svc]["depends_on"]["rabbitmq-init"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{svc} starts once its broker user exists"
        );
    }
    let pg = &s["postgres"]["environment"];
    assert!(
        pg["POSTGRES_HOST_AUTH_METHOD"].is_null(),
        "passwords are checked"
    );
    assert!(pg["POSTGRES_PASSWORD"].as_str().unwrap().contains(":?"));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for volume in strings(&s["postgres"]["volumes"])
        .into_iter()
        .chain(strings(&s["rabbitmq-init"]["volumes"]))
    {
        let local = volume.split(':').next().unwrap();
        assert!(
            std::path::Path::new(&format!("{root}/{local}")).exists(),
            "{volume} mounts a missing path"
        );
    }
}

#[test]
fn config_files_load_into_settings() {
    use memberflow_runtime::settings::{Environment, Source};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let source = |environment: &str| {
        let mut s = Source::dir(dir);
        s.vars = Some(
            [
                ("AUTH__ENVIRONMENT".to_owned(), environment.to_owned()),
                ("TASK__ENVIRONMENT".to_owned(), environment.to_owned()),
            ]
            .into(),
        );
        s
    };
    let auth = auth::Settings::load(&source("development")).unwrap();
    assert_eq!(auth.base.environment, Environment::Development);
    assert_eq!(auth.base.server.addr, "127.0.0.1:50051");
    auth.audit().expect("development accepts the dev secrets");
    let task = task::Settings::load(&source("development")).unwrap();
    assert_eq!(task.base.server.addr, "127.0.0.1:50052");
    assert_eq!(task.consistency.mode, task::ConsistencyMode::NotReady);
    assert_eq!(task.auth.addr, "http://127.0.0.1:50051");
    task.audit().expect("development accepts the dev secrets");
    assert_eq!(
        task.reconcile.unknown_rows,
        task::repair::UnknownRows::Report,
        "rows auth does not have are reported by default"
    );

    // Production carries no secret in the files, so start-up is refused,
    // naming the keys to set.
    let auth = auth::Settings::load(&source("production")).unwrap();
    let refused = auth.audit().unwrap_err().to_string();
    assert!(refused.contains("auth.token.signing_key"), "{refused}");
    assert!(refused.contains("auth.token.service_token"), "{refused}");
    let task = task::Settings::load(&source("production")).unwrap();
    let refused = task.audit().unwrap_err().to_string();
    assert!(refused.contains("task.auth.service_token"), "{refused}");
}

#[test]
fn unknown_rows_can_be_removed_from_the_environment() {
    use memberflow_runtime::settings::Source;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let mut source = Source::dir(dir);
    source.vars = Some(
        [
            ("TASK__ENVIRONMENT".to_owned(), "development".to_owned()),
            (
                "TASK__RECONCILE__UNKNOWN_ROWS".to_owned(),
                "remove".to_owned(),
            ),
        ]
        .into(),
    );
    let task = task::Settings::load(&source).unwrap();
    assert_eq!(
        task.reconcile.unknown_rows,
        task::repair::UnknownRows::Remove
    );
    source.vars = Some(
        [
            ("TASK__ENVIRONMENT".to_owned(), "development".to_owned()),
            (
                "TASK__RECONCILE__UNKNOWN_ROWS".to_owned(),
                "delete".to_owned(),
            ),
        ]
        .into(),
    );
    assert!(
        task::Settings::load(&source).is_err(),
        "only report or remove"
    );
}

#[test]
fn the_default_environment_is_production() {
    let s = auth::Settings::load(&memberflow_runtime::settings::Source {
        dir: None,
        vars: Some(Default::default()),
    })
    .unwrap();
    assert_eq!(
        s.base.environment,
        memberflow_runtime::settings::Environment::Production
    );
    assert!(s.audit().is_err(), "no secret configured: refused");
}

#[test]
fn amqp_urls_come_from_the_environment_comma_separated() {
    use memberflow_runtime::settings::Source;
    use secrecy::ExposeSecret;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let mut source = Source::dir(dir);
    source.vars = Some(
        [
            ("TASK__ENVIRONMENT".to_owned(), "development".to_owned()),
            // A shared broker key and one of task's own, side by side.
            ("TASK__AMQP__HEARTBEAT_SECS".to_owned(), "9".to_owned()),
            ("TASK__AMQP__PREFETCH".to_owned(), "7".to_owned()),
            (
                "TASK__AMQP__URLS".to_owned(),
                "amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f"
                    .to_owned(),
            ),
        ]
        .into(),
    );
    let task = task::Settings::load(&source).unwrap();
    let urls: Vec<_> = task.amqp.urls.iter().map(|u| u.expose_secret()).collect();
    assert_eq!(
        urls,
        [
            "amqp://guest:guest@127.0.0.1:5681/%2f",
            "amqp://guest:guest@127.0.0.1:5682/%2f"
        ]
    );
    assert_eq!(task.amqp.nodes().len(), 2);
    assert_eq!((task.amqp.heartbeat_secs, task.amqp.prefetch), (9, 7));
    assert_eq!(
        task.amqp.quorum_group_size(),
        Some(3),
        "several nodes: 3 replicas"
    );
}
