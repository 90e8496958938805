//! `/metrics` in Prometheus text format: requests by route and status with latency histograms,
//! append latency and group-commit batch sizes, and per-sink lag, parked secrets and errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::project::service::ProjectorEvent;
use crate::project::SinkStatus;
use crate::CommitStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    append_seconds: Histogram,
    commit_groups: Gauge,
    commit_requests: Gauge,
    sink_lag: Family<SinkLabels, Gauge>,
    sink_parked: Family<SinkLabels, Gauge>,
    sink_failing: Family<SinkLabels, Gauge>,
    projector_errors: Family<SinkLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sledger");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let append_seconds = latency_histogram();
        let (commit_groups, commit_requests) = (Gauge::default(), Gauge::default());
        let sink_lag = Family::<SinkLabels, Gauge>::default();
        let sink_parked = Family::<SinkLabels, Gauge>::default();
        let sink_failing = Family::<SinkLabels, Gauge>::default();
        let projector_errors = Family::<SinkLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "append_duration_seconds",
            "Time from a write request to its durable append",
            append_seconds.clone(),
        );
        registry.register(
            "commit_groups",
            "Write transactions committed (group commit)",
            commit_groups.clone(),
        );
        registry.register(
            "commit_requests",
            "Write requests applied; requests / groups is the batch size",
            commit_requests.clone(),
        );
        registry.register(
            "sink_lag_events",
            "Events a sink has not applied yet",
            sink_lag.clone(),
        );
        registry.register(
            "sink_parked_secrets",
            "Secrets a sink refused permanently",
            sink_parked.clone(),
        );
        registry.register(
            "sink_failing",
            "1 when the sink's last projection attempt failed",
            sink_failing.clone(),
        );
        registry.register(
            "projector_errors",
            "Failed projection attempts",
            projector_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            append_seconds,
            commit_groups,
            commit_requests,
            sink_lag,
            sink_parked,
            sink_failing,
            projector_errors,
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    pub fn append(&self, seconds: f64) {
        self.append_seconds.observe(seconds);
    }

    pub fn projector(&self, event: &ProjectorEvent) {
        if let ProjectorEvent::Failed { sink, .. } = event {
            self.projector_errors
                .get_or_create(&SinkLabels { sink: sink.clone() })
                .inc();
        }
    }

    /// The text exposition, with the sink gauges and commit counters as of now.
    pub fn render(&self, sinks: &[SinkStatus], commits: CommitStats) -> String {
        self.commit_groups.set(commits.groups as i64);
        self.commit_requests.set(commits.requests as i64);
        for s in sinks {
            let labels = SinkLabels { sink: s.name.clone() };
            self.sink_lag.get_or_create(&labels).set(s.lag as i64);
            self.sink_parked.get_or_create(&labels).set(s.parked as i64);
            self.sink_failing
                .get_or_create(&labels)
                .set(i64::from(s.last_error.is_some()));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
