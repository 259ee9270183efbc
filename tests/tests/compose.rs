//! docker-compose.yml cannot be run here (no Docker engine), so the suite
//! parses it and checks what it promises: services, ports, env, healthchecks.
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
    assert_eq!(strings(&s["auth"]["ports"]), vec!["50051:50051"]);
    assert_eq!(strings(&s["task"]["ports"]), vec!["50052:50052"]);
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
    ] {
        assert!(a[key].is_string(), "{key}");
    }
    let t = &s["task"]["environment"];
    for key in [
        "TASK__SERVER__ADDR",
        "TASK__DATABASE__URL",
        "TASK__AMQP__URL",
        "TASK__AUTH__ADDR",
    ] {
        assert!(t[key].is_string(), "{key}");
    }
    assert_eq!(
        t["TASK__CONSISTENCY__MODE"].as_str(),
        Some("${CONSISTENCY_MODE:-not_ready}"),
        "one variable switches the mode"
    );
}

#[test]
fn config_files_load_into_settings() {
    use memberflow_common::settings::Source;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");
    let auth = auth::Settings::load(&Source {
        prefix: "MF_UNUSED",
        file: Some(format!("{dir}/auth.toml").into()),
        explicit: true,
    })
    .unwrap();
    assert_eq!(auth.server.addr, "127.0.0.1:50051");
    let task = task::Settings::load(&Source {
        prefix: "MF_UNUSED",
        file: Some(format!("{dir}/task.toml").into()),
        explicit: true,
    })
    .unwrap();
    assert_eq!(task.server.addr, "127.0.0.1:50052");
    assert_eq!(task.consistency.mode, task::ConsistencyMode::NotReady);
    assert_eq!(task.auth.addr, "http://127.0.0.1:50051");
}
