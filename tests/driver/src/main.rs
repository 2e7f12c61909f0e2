//! An example compute driver: it embeds the whole watchdog agent from the
//! packaged `wd-compute`, configured by the file format `wdguard watch
//! --config` reads (`/etc/wd/wd.toml`), and runs it beside its own work
//! until Ctrl-C (then the agent shuts down cleanly) or until a core task of
//! the agent dies (then it exits non-zero, so that a service manager
//! restarts it).
//!
//! ```text
//! cargo xtask packaged
//! target/debug/wd-example-driver /etc/wd/wd.toml
//! ```

#![forbid(unsafe_code)]

use wd_compute::{Agent, AgentSettings};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/etc/wd/wd.toml".into());
    let config: AgentSettings = toml::from_str(&std::fs::read_to_string(&path)?)?;
    // Secrets not in the file come from WD_WEBHOOK_SECRET / WD_AMQP_PASSWORD.
    let agent =
        Agent::new(&config, &|key| std::env::var(key).ok())?.named("example driver's agent");
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = agent.run(stop).await?;
    println!(
        "{} firings, {} notifications accepted",
        report.pipeline.firings, report.pipeline.accepted
    );
    Ok(())
}
