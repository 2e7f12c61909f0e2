//! `wd_stage_seconds{stage}`: the histograms of `wd_notify::stages`, the
//! time from the libvirt callback to each point of a live first firing's
//! way through its destinations' queues.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// Reads the process-wide stage histograms at each scrape.
#[derive(Debug)]
pub(super) struct StageCollector;

impl Collector for StageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "wd_stage_seconds",
            "Time from the libvirt callback to each point of a live first firing's way (prepared, ledgered: once per firing; queued, durable, sending, answered: per destination queue)",
            None,
            MetricType::Histogram,
        )?;
        for s in wd_notify::stages::snapshot() {
            let labels = StageLabels {
                stage: s.stage.as_str(),
            };
            family
                .encode_family(&labels)?
                .encode_histogram::<StageLabels>(s.sum, s.count, &s.buckets, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_a_histogram_in_the_text_format() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(StageCollector));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("# TYPE wd_stage_seconds histogram"), "{out}");
        for stage in ["queued", "durable", "sending", "answered"] {
            assert!(
                out.contains(&format!(
                    "wd_stage_seconds_bucket{{le=\"+Inf\",stage=\"{stage}\"}}"
                )) || out.contains(&format!(
                    "wd_stage_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}"
                )),
                "{stage}: {out}"
            );
        }
    }
}
