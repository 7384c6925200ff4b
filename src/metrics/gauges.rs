//! Gauges whose series come and go (one per pool, per drive, ...), set by the
//! loops that discover their values and encoded by the registry on each scrape.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::names::{Kind, Metric};

/// A series' labels, in the order they are given.
pub type Labels = Vec<(&'static str, String)>;

/// The current value of every series of every gauge set so far.
#[derive(Debug, Default)]
pub struct Gauges {
    values: Mutex<BTreeMap<&'static str, Family>>,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    series: BTreeMap<Labels, f64>,
}

impl Gauges {
    /// Sets one series of `metric`.
    pub fn set(&self, metric: &Metric, labels: &[(&'static str, &str)], value: f64) {
        debug_assert_eq!(metric.kind, Kind::Gauge, "{} is not a gauge", metric.name);
        self.with_family(metric, |series| {
            series.insert(owned(labels), value);
        });
    }

    /// Replaces every series of `metric` at once, so a scrape never sees a drive
    /// that left still counted, nor half of a fresh set.
    pub fn replace(&self, metric: &Metric, fresh: impl IntoIterator<Item = (Labels, f64)>) {
        debug_assert_eq!(metric.kind, Kind::Gauge, "{} is not a gauge", metric.name);
        let fresh: BTreeMap<Labels, f64> = fresh.into_iter().collect();
        self.with_family(metric, |series| *series = fresh);
    }

    /// The value of one series, if it was set.
    pub fn get(&self, metric: &Metric, labels: &[(&'static str, &str)]) -> Option<f64> {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        values
            .get(metric.name)
            .and_then(|family| family.series.get(&owned(labels)).copied())
    }

    fn with_family(&self, metric: &Metric, change: impl FnOnce(&mut BTreeMap<Labels, f64>)) {
        let mut values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let family = values.entry(metric.name).or_insert_with(|| Family {
            help: metric.help,
            series: BTreeMap::new(),
        });
        change(&mut family.series);
    }
}

fn owned(labels: &[(&'static str, &str)]) -> Labels {
    labels.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, family) in values.iter().filter(|(_, f)| !f.series.is_empty()) {
            // The registry ends the help texts it holds with a period; so do these.
            let help = format!("{}.", family.help);
            let mut metric = encoder.encode_descriptor(name, &help, None, MetricType::Gauge)?;
            for (labels, value) in &family.series {
                ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
