//! A CSI load generator for the benchmarks: `count` CreateVolume calls with at
//! most `concurrency` in flight against one controller socket, each timed, and
//! the DeleteVolume calls that take the volumes away again — afterwards, or
//! each right after its create, in the same worker. A benchmark includes it
//! with `#[path = "common/load.rs"] mod load;`.

// Each benchmark that includes this uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tonic::transport::Channel;
use vdrive::csi::proto::controller_client::ControllerClient;
use vdrive::csi::proto::{
    CapacityRange, CreateVolumeRequest, DeleteVolumeRequest, ListVolumesRequest,
    TopologyRequirement, VolumeCapability,
};

/// One run of CreateVolume calls.
#[derive(Clone)]
pub struct CreateLoad {
    /// The controller's CSI endpoint, `unix:///path/to.sock`.
    pub endpoint: String,
    /// The StorageClass parameters every call carries.
    pub parameters: HashMap<String, String>,
    pub capability: VolumeCapability,
    pub required_bytes: i64,
    /// Call `i` asks for `topologies[i % len]`, as the provisioner passes a
    /// pod's node; empty: no accessibility requirements.
    pub topologies: Vec<TopologyRequirement>,
    pub concurrency: usize,
    pub count: usize,
    /// Volume names are `<prefix>-<i>`.
    pub name_prefix: String,
}

/// What a run of calls did: each call's latency, how long the run took, the
/// volumes created and the calls that failed (with their status).
pub struct LoadReport {
    pub latencies: Latencies,
    pub volume_ids: Vec<String>,
    pub failures: Vec<tonic::Status>,
}

/// What [`CreateLoad::run_with_deletes`] did: the create+delete pairs (how
/// long the run took, pairs per second), each kind of call's latencies, and the
/// calls that failed, with the volumes a failed DeleteVolume left.
pub struct PairReport {
    pub pairs: Latencies,
    pub create: Latencies,
    pub delete: Latencies,
    pub failures: Vec<tonic::Status>,
    pub kept: Vec<String>,
}

impl CreateLoad {
    fn request(&self, i: usize) -> CreateVolumeRequest {
        CreateVolumeRequest {
            name: format!("{}-{i}", self.name_prefix),
            capacity_range: Some(CapacityRange {
                required_bytes: self.required_bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![self.capability.clone()],
            parameters: self.parameters.clone(),
            accessibility_requirements: (!self.topologies.is_empty())
                .then(|| self.topologies[i % self.topologies.len()].clone()),
            ..Default::default()
        }
    }

    /// Makes the calls; a failed call is counted, not retried.
    pub async fn run(&self) -> LoadReport {
        let controller = connect(&self.endpoint).await;
        let controller = &controller;
        let outcomes = timed_calls(self.count, self.concurrency, |i| async move {
            controller
                .clone()
                .create_volume(self.request(i))
                .await
                .map(|answer| answer.into_inner().volume.map(|v| v.volume_id))
        })
        .await;
        let mut report = LoadReport {
            latencies: outcomes.latencies,
            volume_ids: Vec::new(),
            failures: Vec::new(),
        };
        for outcome in outcomes.values {
            match outcome {
                Ok(Some(id)) => report.volume_ids.push(id),
                Ok(None) => report
                    .failures
                    .push(tonic::Status::internal("CreateVolume answered no volume")),
                Err(status) => report.failures.push(status),
            }
        }
        report
    }
}

impl CreateLoad {
    /// Makes the calls, each volume deleted by the same worker as soon as its
    /// CreateVolume answers: `count` create+delete pairs with at most
    /// `concurrency` in flight, so no more than `concurrency` volumes exist at
    /// once. A failed call is counted, not retried; a failed create is not
    /// followed by a delete.
    pub async fn run_with_deletes(&self) -> PairReport {
        let controller = connect(&self.endpoint).await;
        let controller = &controller;
        let outcomes = timed_calls(self.count, self.concurrency, |i| async move {
            let mut controller = controller.clone();
            let start = Instant::now();
            let created = controller.create_volume(self.request(i)).await;
            let create = start.elapsed();
            let volume_id = match created.map(|answer| answer.into_inner().volume) {
                Ok(Some(volume)) => volume.volume_id,
                Ok(None) => {
                    let status = tonic::Status::internal("CreateVolume answered no volume");
                    return (create, None, Err((status, None)));
                }
                Err(status) => return (create, None, Err((status, None))),
            };
            let start = Instant::now();
            let deleted = controller
                .delete_volume(DeleteVolumeRequest {
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })
                .await;
            let delete = start.elapsed();
            match deleted {
                Ok(_) => (create, Some(delete), Ok(())),
                Err(status) => (create, Some(delete), Err((status, Some(volume_id)))),
            }
        })
        .await;
        let elapsed = outcomes.latencies.elapsed;
        let mut create = Vec::new();
        let mut delete = Vec::new();
        let mut failures = Vec::new();
        let mut kept = Vec::new();
        for (create_took, delete_took, outcome) in outcomes.values {
            create.push(create_took);
            delete.extend(delete_took);
            if let Err((status, volume_id)) = outcome {
                failures.push(status);
                kept.extend(volume_id);
            }
        }
        PairReport {
            pairs: outcomes.latencies,
            create: Latencies::new(create, elapsed),
            delete: Latencies::new(delete, elapsed),
            failures,
            kept,
        }
    }
}

/// Deletes `volume_ids` with at most `concurrency` calls in flight.
pub async fn delete_volumes(
    endpoint: &str,
    volume_ids: &[String],
    concurrency: usize,
) -> LoadReport {
    let controller = connect(endpoint).await;
    let controller = &controller;
    let outcomes = timed_calls(volume_ids.len(), concurrency, |i| async move {
        controller
            .clone()
            .delete_volume(DeleteVolumeRequest {
                volume_id: volume_ids[i].clone(),
                ..Default::default()
            })
            .await
    })
    .await;
    LoadReport {
        latencies: outcomes.latencies,
        volume_ids: Vec::new(),
        failures: outcomes
            .values
            .into_iter()
            .filter_map(Result::err)
            .collect(),
    }
}

async fn connect(endpoint: &str) -> ControllerClient<Channel> {
    let channel = vdrive::csi::server::connect(endpoint)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e}"));
    ControllerClient::new(channel)
}

/// Every volume `controller` lists, walked `page` at a time as a CO walks a
/// long list: how many there were, and how long each page took.
pub async fn walk_volumes(
    controller: &ControllerClient<Channel>,
    page: i32,
) -> (usize, Vec<Duration>) {
    let mut listed = 0;
    let mut took = Vec::new();
    let mut token = String::new();
    loop {
        let started = Instant::now();
        let answer = controller
            .clone()
            .list_volumes(ListVolumesRequest {
                max_entries: page,
                starting_token: token,
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        took.push(started.elapsed());
        listed += answer.entries.len();
        if answer.next_token.is_empty() {
            return (listed, took);
        }
        token = answer.next_token;
    }
}

/// Latencies of a run of calls, and how long the run took.
pub struct Latencies {
    sorted: Vec<Duration>,
    elapsed: Duration,
}

impl Latencies {
    /// The latencies of calls made during a run that took `elapsed`.
    pub fn new(mut sorted: Vec<Duration>, elapsed: Duration) -> Latencies {
        sorted.sort_unstable();
        Latencies { sorted, elapsed }
    }

    pub fn calls(&self) -> usize {
        self.sorted.len()
    }

    /// The latency `p` percent of the calls took at most (nearest rank).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.sorted.len() as f64 * p / 100.0).ceil() as usize).max(1);
        self.sorted[rank.min(self.sorted.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }

    pub fn per_second(&self) -> f64 {
        self.sorted.len() as f64 / self.elapsed.as_secs_f64()
    }
}

impl fmt::Display for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "{} calls in {:.2}s, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.calls(),
            self.elapsed.as_secs_f64(),
            self.per_second(),
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.max())
        )
    }
}

/// What [`timed_calls`] returns: the calls' results (in the order they
/// finished) and their latencies.
pub struct Timed<T> {
    pub values: Vec<T>,
    pub latencies: Latencies,
}

/// Runs `call(0..count)` with at most `concurrency` in flight, timing each.
pub async fn timed_calls<T, F, Fut>(count: usize, concurrency: usize, call: F) -> Timed<T>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    let results: Vec<(T, Duration)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let call = call(i);
            async move {
                let start = Instant::now();
                let value = call.await;
                (value, start.elapsed())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    let (values, sorted): (Vec<T>, Vec<Duration>) = results.into_iter().unzip();
    Timed {
        values,
        latencies: Latencies::new(sorted, elapsed),
    }
}
