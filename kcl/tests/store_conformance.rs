//! The store conformance suite against the in-memory stores (the DynamoDB stores run the same
//! functions in kcl-ddb-store).

use std::sync::Arc;

use kcl::store::conformance;
use kcl::store::memory::{MemoryCoordinatorStore, MemoryLeaseStore, MemoryWorkerMetricsStore};

#[tokio::test]
async fn lease_create_get_list() {
    conformance::lease_create_get_list(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn renew_requires_the_counter() {
    conformance::renew_requires_the_counter(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn take_fences_the_previous_owner() {
    conformance::take_fences_the_previous_owner(&MemoryLeaseStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_exactly_one_wins() {
    conformance::concurrent_takers_exactly_one_wins(Arc::new(MemoryLeaseStore::new())).await;
}

#[tokio::test]
async fn checkpoints_round_trip() {
    conformance::checkpoints_round_trip(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn graceful_handoff() {
    conformance::graceful_handoff(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn writes_carry_their_token() {
    conformance::writes_carry_their_token(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn evict_and_delete() {
    conformance::evict_and_delete(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn lists_keys_by_owner() {
    conformance::lists_keys_by_owner(&MemoryLeaseStore::new()).await;
}

#[tokio::test]
async fn leader_lock() {
    conformance::leader_lock(&MemoryCoordinatorStore::new()).await;
}

#[tokio::test]
async fn worker_metrics() {
    conformance::worker_metrics(&MemoryWorkerMetricsStore::new()).await;
}

#[tokio::test]
async fn worker_heartbeats() {
    conformance::worker_heartbeats(&MemoryWorkerMetricsStore::new()).await;
}
