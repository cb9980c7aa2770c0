//! The store conformance suite (the same functions the in-memory stores pass) against the
//! official DynamoDB Local, started by `scripts/test.sh`; plus table creation and schema checks.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kcl::StoreError;
use kcl::store::conformance;
use kcl_ddb_store::{DynamoDbStores, TableNames, TableOptions};

/// A fresh application (fresh tables) on DynamoDB Local, or `None` to skip.
async fn stores(prefix: &str) -> Option<DynamoDbStores> {
    let endpoint = match std::env::var("DYNAMODB_LOCAL_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            assert!(
                std::env::var_os("KINESIS_TEST_REQUIRE_PEERS").is_none(),
                "DYNAMODB_LOCAL_ENDPOINT is not set: run scripts/test.sh"
            );
            eprintln!("skipping: DYNAMODB_LOCAL_ENDPOINT is not set (scripts/test.sh starts DynamoDB Local)");
            return None;
        }
    };
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let app = format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000);
    let stores =
        DynamoDbStores::builder().local(endpoint).await.application_name(app).build().await.expect("tables created");
    Some(stores)
}

macro_rules! conformance_test {
    ($name:ident, $store:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(stores) = stores(stringify!($name)).await else { return };
            conformance::$name(&stores.$store()).await;
        }
    };
}

conformance_test!(lease_create_get_list, lease_store);
conformance_test!(renew_requires_the_counter, lease_store);
conformance_test!(take_fences_the_previous_owner, lease_store);
conformance_test!(checkpoints_round_trip, lease_store);
conformance_test!(graceful_handoff, lease_store);
conformance_test!(evict_and_delete, lease_store);
conformance_test!(lists_keys_by_owner, lease_store);
conformance_test!(writes_carry_their_token, lease_store);
conformance_test!(leader_lock, coordinator_store);
conformance_test!(worker_metrics, worker_metrics_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_exactly_one_wins() {
    let Some(stores) = stores("racing").await else { return };
    conformance::concurrent_takers_exactly_one_wins(Arc::new(stores.lease_store())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tables_are_reused_and_a_foreign_schema_is_refused() {
    let Some(first) = stores("reuse").await else { return };
    let endpoint = std::env::var("DYNAMODB_LOCAL_ENDPOINT").expect("set");
    // Building again over the same tables works (another worker starting).
    let again = DynamoDbStores::builder()
        .local(&endpoint)
        .await
        .table_names(first.table_names().clone())
        .build()
        .await
        .expect("reuse");
    assert_eq!(again.table_names(), first.table_names());
    // A lease table whose key is not leaseKey is refused with a clear error.
    let foreign = TableNames {
        leases: first.table_names().worker_metrics.clone(), // keyed by `wid`
        coordinator_state: first.table_names().coordinator_state.clone(),
        worker_metrics: first.table_names().worker_metrics.clone(),
    };
    let err = DynamoDbStores::builder()
        .local(&endpoint)
        .await
        .table_names(foreign)
        .build()
        .await
        .expect_err("schema mismatch");
    assert!(matches!(err, StoreError::SchemaMismatch { .. }), "{err:?}");
    // With creation off, a missing table is an error.
    let options = TableOptions { create_if_missing: false, ..TableOptions::default() };
    let err = DynamoDbStores::builder()
        .local(&endpoint)
        .await
        .application_name("does-not-exist-anywhere")
        .table_options(options)
        .build()
        .await
        .expect_err("missing");
    assert!(!err.is_retryable());
}
