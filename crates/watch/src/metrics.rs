//! Prometheus metrics (`prometheus-client`) and the tiny HTTP server that serves them
//! (`hyper`): `GET /metrics` (text exposition format) and `GET /healthz`. Labels carry
//! target, rule, action, outcome and state names only: never a pid or query text.
//!
//! The server listens on loopback unless the user names another address explicitly: a
//! bare port or `localhost:PORT` is `127.0.0.1` (see [`check_address`]); `0.0.0.0:9898`
//! must be written out, and the daemon then warns. The documented port is 9898
//! (postgres_exporter has 9187).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The port the documentation suggests.
pub const DEFAULT_PORT: u16 = 9898;

/// `{target}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// The target's name.
    pub target: String,
}

/// `{target,rule,action,outcome,dry_run}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// The target's name.
    pub target: String,
    /// The rule's name.
    pub rule: String,
    /// `cancel` or `terminate`.
    pub action: String,
    /// The decision or outcome (`terminated`, `cancelled`, `would_terminate`, …).
    pub outcome: String,
    /// `true` or `false`.
    pub dry_run: String,
}

/// `{target,rule}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The target's name.
    pub target: String,
    /// The rule's name.
    pub rule: String,
}

/// `{target,state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The target's name.
    pub target: String,
    /// The session state (`idle in transaction`, …).
    pub state: String,
}

/// `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// `{version}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type Seconds = Family<TargetLabels, Histogram, fn() -> Histogram>;

/// Every metric of the daemon.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `pgkill_actions_total`.
    pub actions: Family<ActionLabels, Counter>,
    /// `pgkill_target_up`.
    pub target_up: Family<TargetLabels, Gauge>,
    /// `pgkill_evaluation_duration_seconds`.
    pub evaluation_seconds: Seconds,
    /// `pgkill_evaluation_errors_total`.
    pub evaluation_errors: Family<TargetLabels, Counter>,
    /// `pgkill_rate_limited_total`.
    pub rate_limited: Family<RuleLabels, Counter>,
    /// `pgkill_sessions`.
    pub sessions: Family<StateLabels, Gauge>,
    /// `pgkill_policy_reloads_total`.
    pub reloads: Family<ResultLabels, Counter>,
    /// `pgkill_leader`.
    pub leader: Family<TargetLabels, Gauge>,
}

fn duration_histogram() -> Histogram {
    // 1 ms … ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "pgkill_actions",
            "Decisions about sessions, by target, rule, action and outcome",
            actions.clone(),
        );
        let target_up = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "pgkill_target_up",
            "1 while the target is connected and evaluated",
            target_up.clone(),
        );
        let evaluation_seconds: Seconds = Family::new_with_constructor(duration_histogram);
        registry.register(
            "pgkill_evaluation_duration_seconds",
            "Time of one evaluation pass (reading, signalling, verifying)",
            evaluation_seconds.clone(),
        );
        let evaluation_errors = Family::<TargetLabels, Counter>::default();
        registry.register(
            "pgkill_evaluation_errors",
            "Evaluation passes or connections that failed",
            evaluation_errors.clone(),
        );
        let rate_limited = Family::<RuleLabels, Counter>::default();
        registry.register(
            "pgkill_rate_limited",
            "Sessions skipped because a rate limit was reached",
            rate_limited.clone(),
        );
        let sessions = Family::<StateLabels, Gauge>::default();
        registry.register(
            "pgkill_sessions",
            "Client sessions by state at the last evaluation",
            sessions.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "pgkill_policy_reloads",
            "Policy reloads (SIGHUP) by result",
            reloads.clone(),
        );
        let leader = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "pgkill_leader",
            "1 while this watcher holds the target's leader lock and acts",
            leader.clone(),
        );
        registry.register(
            "pgkill_build",
            "pgkill's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
        );
        Metrics {
            registry,
            actions,
            target_up,
            evaluation_seconds,
            evaluation_errors,
            rate_limited,
            sessions,
            reloads,
            leader,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// `{target}` labels.
    pub fn target(name: &str) -> TargetLabels {
        TargetLabels {
            target: name.to_owned(),
        }
    }
}

/// Why an address was refused for `--metrics`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// Reads `--metrics ADDR`: `127.0.0.1:9898`, `[::1]:9898`, `localhost:9898` or a bare
/// port (all loopback), or an address written out in full (`0.0.0.0:9898`, which
/// listens beyond this machine because the user said so).
pub fn check_address(text: &str) -> Result<SocketAddr, AddressError> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        return port
            .parse::<u16>()
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            .map_err(|_| AddressError(format!("--metrics {text:?}: the port is not a number")));
    }
    text.parse().map_err(|_| {
        AddressError(format!(
            "--metrics {text:?}: give a port, or an address and port such as 127.0.0.1:{DEFAULT_PORT}"
        ))
    })
}

/// Serves `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&hyper::Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_unless_written_out() {
        assert_eq!(
            check_address("127.0.0.1:9898").unwrap(),
            "127.0.0.1:9898".parse().unwrap()
        );
        assert!(check_address("[::1]:9898").unwrap().ip().is_loopback());
        assert!(check_address("9898").unwrap().ip().is_loopback());
        assert!(check_address("localhost:9898").unwrap().ip().is_loopback());
        assert!(!check_address("0.0.0.0:9898").unwrap().ip().is_loopback());
        assert!(check_address("nonsense").is_err());
        assert!(check_address("localhost:x").is_err());
    }

    #[test]
    fn the_names_of_the_issue_are_exposed() {
        let m = Metrics::new();
        m.actions
            .get_or_create(&ActionLabels {
                target: "t".into(),
                rule: "r".into(),
                action: "terminate".into(),
                outcome: "terminated".into(),
                dry_run: "false".into(),
            })
            .inc();
        m.target_up.get_or_create(&Metrics::target("t")).set(1);
        m.evaluation_seconds
            .get_or_create(&Metrics::target("t"))
            .observe(0.01);
        let text = m.encode();
        for name in [
            "pgkill_actions_total{",
            "pgkill_target_up{target=\"t\"} 1",
            "pgkill_evaluation_duration_seconds_bucket{",
            "pgkill_build_info{version=",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
