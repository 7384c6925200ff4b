//! `vdrive pools status|health`: the pool API's answers, computed from the
//! cluster's Node labels and ledgers (what `/api/v1/pools/...` serves).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::outcome::{Answer, Failure};
use super::output::OutputArgs;
use super::settings::SettingsArgs;
use crate::cluster::{self, KubeStore, Scope};
use crate::ledger::Ledger;
use crate::pools::{Health, cluster_health, pools_status};

#[derive(Debug, Clone, Args)]
pub struct PoolsArgs {
    #[command(subcommand)]
    pub command: PoolsCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PoolsCommand {
    /// Capacity, usage and servers of the k8s and vm pools and the system reserve.
    Status(PoolsOptions),
    /// healthy / warning / critical per pool, with what to do about it. Exits 1
    /// when the cluster is not healthy.
    Health(PoolsOptions),
}

#[derive(Debug, Clone, Args)]
pub struct PoolsOptions {
    /// A kubeconfig (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, conflicts_with = "api")]
    pub kubeconfig: Option<PathBuf>,
    /// Ask a running vdrive's pool API instead of a cluster, e.g. all-in-one's
    /// http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// The pool settings the controller runs with (the chart's values).
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// The answer is the pool API's JSON under `-o text` too (`kubectl vdrive
    /// pools` has the table); `-o yaml` prints it as YAML.
    #[command(flatten)]
    pub output: OutputArgs,
}

impl PoolsArgs {
    pub fn options(&self) -> &PoolsOptions {
        match &self.command {
            PoolsCommand::Status(options) | PoolsCommand::Health(options) => options,
        }
    }
}

/// The answer, and whether it is a good one: always yes for status; for
/// health, yes only when the cluster is healthy.
pub async fn run(args: PoolsArgs) -> Result<Answer, Failure> {
    let (value, good) = answer(args).await?;
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    Ok(Answer::verdict(good, text).with_data(value))
}

async fn answer(args: PoolsArgs) -> Result<(serde_json::Value, bool), String> {
    let (options, health) = match args.command {
        PoolsCommand::Status(options) => (options, false),
        PoolsCommand::Health(options) => (options, true),
    };
    if let Some(url) = &options.api {
        return from_api(url, health).await;
    }
    let settings = options.settings.pools()?;
    let client = cluster::client(options.kubeconfig.as_deref()).await?;
    let store = KubeStore::start(client, Scope::AllNodes);
    store
        .wait_ready(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let ledger = Ledger::new(store, settings);
    let survey = ledger.survey().await.map_err(|e| e.to_string())?;
    let value = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| e.to_string());
    if !health {
        let status = value(serde_json::to_value(pools_status(&survey.nodes, &settings)))?;
        return Ok((status, true));
    }
    let report = cluster_health(&survey.nodes, &survey.quarantined, &settings);
    let out = value(serde_json::to_value(&report))?;
    Ok((out, report.status == Health::Healthy))
}

/// The same answers from a pool API.
async fn from_api(url: &str, health: bool) -> Result<(serde_json::Value, bool), String> {
    let path = if health {
        "/api/v1/pools/health"
    } else {
        "/api/v1/pools/status"
    };
    let (status, body) = http_get(url, path).await?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| format!("{url}{path} answered {status} with a body that is not JSON ({e})"))?;
    if status != 200 {
        let message = value
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .map_or_else(|| value.to_string(), str::to_string);
        return Err(format!("{url}{path} answered {status}: {message}"));
    }
    let healthy = !health || value.get("status").and_then(|s| s.as_str()) == Some("healthy");
    Ok((value, healthy))
}

/// A plain HTTP/1.1 GET of `path` on `base` (`http://HOST:PORT`): the status
/// and the body.
async fn http_get(base: &str, path: &str) -> Result<(u16, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = base
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| {
            format!("--api {base:?}: give http://HOST:PORT, e.g. http://127.0.0.1:8080")
        })?;
    let unreachable = |e: std::io::Error| {
        format!(
            "cannot reach the pool API at {base}: {e} (is `vdrive all-in-one` running, with --api-address?)"
        )
    };
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(unreachable)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(unreachable)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map_err(unreachable)?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("the pool API at {base} did not answer within 30 s"))??;
    parse_response(&answer)
        .ok_or_else(|| format!("{base}{path} answered something that is not HTTP"))
}

/// Status and body of an HTTP/1.1 response (plain or chunked).
fn parse_response(answer: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let body = &answer[split + 4..];
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Some((status, body.to_vec()));
    }
    let (mut rest, mut out) = (body, Vec::new());
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some((status, out));
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_response;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), Some((200, b"{}".to_vec())));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((503, b"{\"a\":1}".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
