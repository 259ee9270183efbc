//! `nemesis`: a randomized fault run with a ledger and a checker (see
//! `memberflow_tests::nemesis`). Prints one summary line last and exits
//! non-zero on any violation.
//!
//! ```text
//! cargo build -p memberflow-tests --bins
//! cargo run -p memberflow-tests --bin nemesis -- --seed S --secs N [--clients K]
//! ```
use std::time::Duration;

use memberflow_tests::nemesis::{self, Options};

fn usage() -> ! {
    eprintln!("usage: nemesis [--seed S] [--secs N] [--clients K] [--converge-secs C]");
    std::process::exit(2);
}

/// `mf-service`, beside this binary: built first if it is missing (`cargo
/// run --bin nemesis` builds only this one).
fn service_exe() -> String {
    let me = std::env::current_exe().expect("this binary's path");
    let exe = me.with_file_name("mf-service");
    if !exe.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let built = std::process::Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "memberflow-tests",
                "--bin",
                "mf-service",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if !built || !exe.exists() {
            eprintln!("{exe:?} is missing: run `cargo build -p memberflow-tests --bins` first");
            std::process::exit(2);
        }
    }
    exe.to_string_lossy().into_owned()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut options = Options {
        seed: 1,
        secs: 60,
        clients: 4,
        converge_within: Duration::from_secs(120),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| usage());
        match flag.as_str() {
            "--seed" => options.seed = value,
            "--secs" => options.secs = value,
            "--clients" => options.clients = value as usize,
            "--converge-secs" => options.converge_within = Duration::from_secs(value),
            _ => usage(),
        }
    }
    let report = match nemesis::run(options, service_exe()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nemesis: the run itself failed: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let entries = report.ledger.entries();
    for v in &report.violations {
        println!("VIOLATION {}: {}", v.rule, v.detail);
        if let Some(member) = v.member {
            for e in entries.iter().filter(|e| e.member == Some(member)) {
                println!("  {}", e.line());
            }
        }
    }
    println!("ledger: {}", report.ledger.path.display());
    if !report.violations.is_empty() || report.converged_in.is_none() {
        println!(
            "replay: cargo build -p memberflow-tests --bins && cargo run -p memberflow-tests --bin nemesis -- --seed {} --secs {} --clients {}",
            options.seed, options.secs, options.clients
        );
    }
    println!("{}", report.summary(options.seed));
    if report.violations.is_empty() && report.converged_in.is_some() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
