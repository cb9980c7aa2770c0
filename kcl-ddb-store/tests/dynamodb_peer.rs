//! The store conformance suite (the same functions the in-memory stores pass) against the
//! DynamoDB peer `scripts/test.sh` starts (moto's server by default, DynamoDB Local with
//! `PEERS_DYNAMODB=local`); plus table creation and schema checks.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use kcl::StoreError;
use kcl::lease::WriteToken;
use kcl::store::{LeaseStore, conformance};
use kcl_ddb_store::{DynamoDbStores, TableNames, TableOptions};

/// A fresh application (fresh tables) on the DynamoDB peer, or `None` to skip.
async fn stores(prefix: &str) -> Option<DynamoDbStores> {
    let endpoint = match std::env::var("DYNAMODB_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            assert!(
                std::env::var_os("KINESIS_TEST_REQUIRE_PEERS").is_none(),
                "DYNAMODB_ENDPOINT is not set: run scripts/test.sh"
            );
            eprintln!("skipping: DYNAMODB_ENDPOINT is not set (scripts/test.sh starts a DynamoDB peer)");
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
conformance_test!(worker_heartbeats, worker_metrics_store);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_exactly_one_wins() {
    let Some(stores) = stores("racing").await else { return };
    conformance::concurrent_takers_exactly_one_wins(Arc::new(stores.lease_store())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_tables_are_reused_and_a_foreign_schema_is_refused() {
    let Some(first) = stores("reuse").await else { return };
    let endpoint = std::env::var("DYNAMODB_ENDPOINT").expect("set");
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

/// The SDK configuration for the DynamoDB peer of this run.
async fn local_sdk_config() -> aws_config::SdkConfig {
    let endpoint = std::env::var("DYNAMODB_ENDPOINT").expect("set");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
        .load()
        .await
}

/// A client of the same DynamoDB peer as `stores`, with `interceptor` on every request.
async fn stores_with(stores: &DynamoDbStores, interceptor: impl Intercept + 'static) -> DynamoDbStores {
    let sdk = local_sdk_config().await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk).interceptor(interceptor).build();
    DynamoDbStores::builder()
        .client(aws_sdk_dynamodb::Client::from_conf(config))
        .table_names(stores.table_names().clone())
        .build()
        .await
        .expect("same tables")
}

fn target(request: &aws_sdk_dynamodb::config::http::HttpRequest) -> &str {
    request.headers().get("x-amz-target").unwrap_or_default()
}

/// What another writer does in the middle of a call.
type Meanwhile = Box<dyn FnOnce() + Send>;

/// Fails the first `UpdateItem` before it is sent (a dropped connection: nothing written), after
/// running `meanwhile` — what another writer does before the store retries.
struct DropFirstUpdate {
    meanwhile: Mutex<Option<Meanwhile>>,
}

impl std::fmt::Debug for DropFirstUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DropFirstUpdate")
    }
}

impl Intercept for DropFirstUpdate {
    fn name(&self) -> &'static str {
        "DropFirstUpdate"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !target(context.request()).ends_with("UpdateItem") {
            return Ok(());
        }
        match self.meanwhile.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(meanwhile) => {
                meanwhile();
                Err("injected: the connection dropped before the request was sent".into())
            }
            None => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_renewal_never_adopts_another_workers_write() {
    let Some(stores) = stores("adopt").await else { return };
    let leader = stores.lease_store();
    let lease = kcl::Lease::new("shardId-000000000001", kinesis_core::ExtendedSequenceNumber::TrimHorizon);
    leader.create_lease_if_not_exists(&lease).await.expect("create");
    let held = leader.take_lease(&lease, "w1", &WriteToken::new()).await.expect("w1 takes");
    // w1's renewal never reaches DynamoDB; before the store retries it, the leader gives the lease
    // to w2 — the counter moves by one, just as w1's renewal would have moved it.
    let meanwhile = {
        let (leader, held) = (leader.clone(), held.clone());
        Box::new(move || {
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| {
                handle.block_on(leader.assign_lease(&held, "w2", &WriteToken::new())).expect("the leader assigns")
            });
        }) as Meanwhile
    };
    let w1 = stores_with(&stores, DropFirstUpdate { meanwhile: Mutex::new(Some(meanwhile)) }).await;
    let renewed = w1.lease_store().renew_lease(&held, None, &WriteToken::new()).await;
    match renewed {
        Err(StoreError::LeaseLost { current: Some(current) }) => {
            assert!(current.is_owned_by("w2"), "{current:?}");
        }
        other => panic!("the retry took the leader's write for w1's renewal: {other:?}"),
    }
    let stored = leader.get_lease(&lease.lease_key).await.expect("get").expect("exists");
    assert!(stored.is_owned_by("w2"));
    assert_eq!(stored.lease_counter, held.lease_counter + 1, "w1 wrote nothing");
}

/// Strips the item from condition-failure answers to `UpdateItem`, as backends without
/// `ReturnValuesOnConditionCheckFailure` answer.
#[derive(Debug, Default)]
struct OmitItemOnConditionFailure {
    update_sent: std::sync::atomic::AtomicBool,
}

impl Intercept for OmitItemOnConditionFailure {
    fn name(&self) -> &'static str {
        "OmitItemOnConditionFailure"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let update = target(context.request()).ends_with("UpdateItem");
        self.update_sent.store(update, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.update_sent.load(std::sync::atomic::Ordering::SeqCst) && context.response().status().as_u16() == 400 {
            let body = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException","message":"The conditional request failed"}"#;
            *context.response_mut().body_mut() = body.as_bytes().to_vec().into();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_failure_without_the_item_is_answered_with_a_read() {
    let Some(stores) = stores("omit").await else { return };
    let store = stores_with(&stores, OmitItemOnConditionFailure::default()).await.lease_store();
    let lease = kcl::Lease::new("shardId-000000000002", kinesis_core::ExtendedSequenceNumber::TrimHorizon);
    store.create_lease_if_not_exists(&lease).await.expect("create");
    let taken = store.take_lease(&lease, "w1", &WriteToken::new()).await.expect("take");
    store.renew_lease(&taken, None, &WriteToken::new()).await.expect("renew");
    match store.renew_lease(&taken, None, &WriteToken::new()).await {
        Err(StoreError::LeaseLost { current: Some(current) }) => assert_eq!(current.lease_counter, 2),
        other => panic!("expected the current item, read back: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_lease_item_is_skipped_and_counted() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let Some(stores) = stores("malformed").await else { return };
    let store = stores.lease_store();
    let good = kcl::Lease::new("shardId-000000000003", kinesis_core::ExtendedSequenceNumber::TrimHorizon);
    store.create_lease_if_not_exists(&good).await.expect("create");
    // An item some other tool wrote: its counter is text.
    let client = aws_sdk_dynamodb::Client::new(&local_sdk_config().await);
    client
        .put_item()
        .table_name(&stores.table_names().leases)
        .item("leaseKey", AttributeValue::S("shardId-000000000004".into()))
        .item("leaseCounter", AttributeValue::S("seven".into()))
        .send()
        .await
        .expect("put");
    let leases = store.list_leases().await.expect("the scan does not fail for one bad item");
    assert_eq!(leases.iter().map(|l| l.lease_key.as_str()).collect::<Vec<_>>(), vec!["shardId-000000000003"]);
    assert_eq!(stores.stats().malformed_items(), 1);
}
