//! A compute driver embedding the whole watchdog agent, configured by the
//! same file format `wdguard watch --config` reads (`/etc/wd/wd.toml`):
//!
//! ```text
//! cargo run -p wd-compute --example embed -- /etc/wd/wd.toml
//! ```
//!
//! It runs until Ctrl-C (then shuts down cleanly) or until a core task dies
//! (then it exits non-zero, so that a service manager restarts it).

use wd_compute::{Agent, AgentSettings};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/etc/wd/wd.toml".into());
    let config: AgentSettings = toml::from_str(&std::fs::read_to_string(&path)?)?;
    // Secrets not in the file come from WD_WEBHOOK_SECRET / WD_AMQP_PASSWORD.
    let agent = Agent::new(&config, &|key| std::env::var(key).ok())?.named("driver watchdog agent");
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
