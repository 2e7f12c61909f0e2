//! `wdctl watch --nova-config FILE`: publish where and how Nova publishes,
//! from the settings Nova already has (see `wd_notify_amqp::nova_conf`).

use std::path::Path;

use anyhow::{Result, anyhow};
use wd_notify_amqp::{AmqpNotifier, NovaConf};

/// What `nova.conf` adds to the agent.
pub struct FromNova {
    /// `[DEFAULT] host`, when set.
    pub host: Option<String>,
    /// The bus publisher and its name, when Nova's driver publishes.
    pub bus: Option<(String, AmqpNotifier)>,
    /// Nova's driver `log`: notifications go to the log too.
    pub log: bool,
}

/// Reads `path` and builds the bus publisher it describes.
pub fn load(path: &Path) -> Result<FromNova> {
    let conf = NovaConf::load(path).map_err(|e| anyhow!("{e}"))?;
    let log = conf.logs();
    let bus = match conf.bus {
        Some(config) => {
            // oslo's notifier declares the queue of each topic so that
            // notifications wait for their listeners; so do we.
            let config = config.with_declare_queue(true);
            let name = format!("amqp {} (from {})", config.url, path.display());
            let notifier = AmqpNotifier::new(config)
                .map_err(|e| anyhow!("nova config `{}`: {e}", path.display()))?;
            Some((name, notifier))
        }
        None => None,
    };
    Ok(FromNova {
        host: conf.host,
        bus,
        log,
    })
}
