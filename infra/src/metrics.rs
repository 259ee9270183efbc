//! The metrics registry type every part records into: one per service
//! instance (tests run several instances in one process, which a global
//! recorder would merge).
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;

/// A service instance's metrics registry, shared by everything that records.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// A new, empty registry.
pub fn registry() -> SharedRegistry {
    Arc::new(Mutex::new(Registry::default()))
}

/// Latency buckets for RPCs and batches, in seconds: 0.5 ms to 10 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}
