//! Items match the Java KCL 3.x layout field for field, in both directions: the committed
//! vectors (tests/vectors, written from the schema reference) read into the expected values,
//! and those values write back to exactly the vectors' attributes and types. With DynamoDB
//! Local, the stores' writes are compared with the vectors as stored items.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kcl::Lease;
use kcl::lease::WriteToken;
use kcl::store::{LeaseStore, LockItem, WorkerMetrics};
use kcl_ddb_store::item::{self, Item};
use kinesis_core::{ExtendedSequenceNumber, HashKeyRange, SequenceNumber};
use serde_json::Value;

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64 digit") as u32;
        buffer = (buffer << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

fn attribute(value: &Value) -> AttributeValue {
    let (kind, inner) = value.as_object().and_then(|o| o.iter().next()).expect("typed attribute");
    match kind.as_str() {
        "S" => AttributeValue::S(inner.as_str().expect("S").to_owned()),
        "N" => AttributeValue::N(inner.as_str().expect("N").to_owned()),
        "B" => AttributeValue::B(Blob::new(base64_decode(inner.as_str().expect("B")))),
        "BOOL" => AttributeValue::Bool(inner.as_bool().expect("BOOL")),
        "SS" => AttributeValue::Ss(
            inner.as_array().expect("SS").iter().map(|v| v.as_str().expect("S").to_owned()).collect(),
        ),
        "L" => AttributeValue::L(inner.as_array().expect("L").iter().map(attribute).collect()),
        "M" => {
            AttributeValue::M(inner.as_object().expect("M").iter().map(|(k, v)| (k.clone(), attribute(v))).collect())
        }
        other => panic!("unsupported type {other}"),
    }
}

fn parse_item(value: &Value) -> Item {
    value.as_object().expect("item").iter().map(|(k, v)| (k.clone(), attribute(v))).collect()
}

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).expect("json")
}

/// Items compare equal regardless of string-set order and of number spelling (`38` vs `38.0`).
fn normalize(item: &Item) -> BTreeMap<String, String> {
    fn norm(v: &AttributeValue) -> String {
        match v {
            AttributeValue::N(n) => {
                format!("N:{}", n.parse::<f64>().map(|f| f.to_string()).unwrap_or_else(|_| n.clone()))
            }
            AttributeValue::Ss(ss) => {
                let mut ss = ss.clone();
                ss.sort();
                format!("SS:{ss:?}")
            }
            AttributeValue::L(l) => format!("L:[{}]", l.iter().map(norm).collect::<Vec<_>>().join(",")),
            AttributeValue::M(m) => {
                let sorted: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), norm(v))).collect();
                format!("M:{sorted:?}")
            }
            other => format!("{other:?}"),
        }
    }
    item.iter().map(|(k, v)| (k.clone(), norm(v))).collect()
}

fn seq(text: &str) -> SequenceNumber {
    SequenceNumber::parse(text).expect("sequence number")
}

fn expected_leases() -> Vec<(&'static str, Lease)> {
    let mut new = Lease::new("shardId-000000000003", ExtendedSequenceNumber::TrimHorizon);
    new.hash_key_range = HashKeyRange::parse("0", "85070591730234615865843651857942052863").ok();

    let mut checkpointed = Lease::new(
        "shardId-000000000004",
        ExtendedSequenceNumber::at_sub(seq("49590338271490256608559692538361571095921575989136588898"), 7),
    );
    checkpointed.lease_owner = Some("worker-a".into());
    checkpointed.lease_counter = 1842;
    checkpointed.parent_shard_ids = vec!["shardId-000000000001".into()];
    checkpointed.hash_key_range =
        HashKeyRange::parse("85070591730234615865843651857942052864", "170141183460469231731687303715884105727").ok();
    checkpointed.throughput_kbps = Some(512.25);

    let mut handoff = Lease::new(
        "shardId-000000000009",
        ExtendedSequenceNumber::at(seq("49596795095695876171182093741842742029222840488857436178")),
    );
    handoff.lease_owner = Some("worker-b".into());
    handoff.checkpoint_owner = Some("worker-a".into());
    handoff.lease_counter = 77;
    handoff.pending_checkpoint =
        Some(ExtendedSequenceNumber::at_sub(seq("49596795095695876171182093741842742029222840488857436179"), 2));
    handoff.pending_checkpoint_state = Some(Bytes::from_static(b"\x00app-state\xff"));
    handoff.owner_switches_since_checkpoint = 2;
    handoff.parent_shard_ids = vec!["shardId-000000000005".into(), "shardId-000000000006".into()];
    handoff.child_shard_ids = vec!["shardId-000000000011".into(), "shardId-000000000012".into()];
    handoff.hash_key_range = Some(HashKeyRange::FULL);
    handoff.throughput_kbps = Some(0.0);
    vec![("lease_new.json", new), ("lease_checkpointed.json", checkpointed), ("lease_handoff.json", handoff)]
}

#[test]
fn java_lease_items_read_and_write_field_for_field() {
    for (file, expected) in expected_leases() {
        let java_item = parse_item(&vector(file));
        let read = item::item_to_lease(&java_item, "app").expect("readable").expect("a lease");
        assert_eq!(read, expected, "{file} reads as the expected lease");
        assert_eq!(
            normalize(&item::lease_to_item(&expected)),
            normalize(&java_item),
            "{file}: same attributes, names and types"
        );
    }
}

#[test]
fn single_table_items_other_than_leases_are_skipped() {
    let items: Vec<Item> =
        vector("lease_table_3_5_mixed.json").as_array().expect("array").iter().map(parse_item).collect();
    let lease = item::item_to_lease(&items[0], "app").expect("readable").expect("LEASE entity");
    assert!(lease.is_finished());
    assert_eq!(lease.child_shard_ids, vec!["shardId-000000000001", "shardId-000000000002"]);
    assert_eq!(lease.owner_switches_since_checkpoint, 1);
    assert_eq!(item::item_to_lease(&items[1], "app").expect("readable"), None, "worker metrics are not leases");
}

#[test]
fn lock_and_worker_metrics_items() {
    let lock_item = parse_item(&vector("leader_lock.json"));
    let lock = item::item_to_lock(&lock_item, "app-CoordinatorState").expect("lock");
    assert_eq!(
        lock,
        LockItem {
            key: "Leader".into(),
            owner: "worker-a".into(),
            record_version: "3f2a6c1e-55c7-4e6b-9a0d-1b2c3d4e5f60".into(),
            lease_duration: std::time::Duration::from_secs(120),
            is_released: false,
            holder_fences_leases: false,
        },
        "a lock the Java KCL's lock client wrote does not promise the fence"
    );
    assert_eq!(normalize(&item::lock_to_item(&lock)), normalize(&lock_item));

    let metrics_item = parse_item(&vector("worker_metrics.json"));
    let metrics = item::item_to_metrics(&metrics_item, "app-WorkerMetricStats").expect("metrics");
    let expected = WorkerMetrics {
        worker_id: "worker-a".into(),
        last_update_secs: 1_763_900_000,
        metric_stats: [("C".to_owned(), vec![41.5, -1.0, 38.0]), ("T".to_owned(), vec![900.25])].into_iter().collect(),
        operating_range: [("C".to_owned(), vec![100.0]), ("T".to_owned(), vec![100.0])].into_iter().collect(),
        heartbeat: None,
        signals: Default::default(),
    };
    assert_eq!(metrics, expected);
    assert_eq!(normalize(&item::metrics_to_item(&expected)), normalize(&metrics_item));
}

#[test]
fn malformed_items_are_typed_errors() {
    let mut bad: Item = HashMap::new();
    bad.insert("leaseKey".into(), AttributeValue::S("shardId-000000000001".into()));
    bad.insert("leaseCounter".into(), AttributeValue::N("not-a-number".into()));
    assert!(matches!(item::item_to_lease(&bad, "app"), Err(kcl::StoreError::Malformed { .. })));
    bad.insert("leaseCounter".into(), AttributeValue::N("3".into()));
    bad.insert("checkpoint".into(), AttributeValue::S("12ab".into()));
    assert!(matches!(item::item_to_lease(&bad, "app"), Err(kcl::StoreError::Malformed { .. })));
    let no_key: Item = HashMap::new();
    assert!(item::item_to_lease(&no_key, "app").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_items_match_the_java_layout_and_java_items_are_used_as_is() {
    let Ok(endpoint) = std::env::var("DYNAMODB_ENDPOINT") else {
        assert!(
            std::env::var_os("KINESIS_TEST_REQUIRE_PEERS").is_none(),
            "DYNAMODB_ENDPOINT is not set: run scripts/test.sh"
        );
        eprintln!("skipping: DYNAMODB_ENDPOINT is not set");
        return;
    };
    let app = format!("items-{}", std::process::id());
    let stores = kcl_ddb_store::DynamoDbStores::builder()
        .local(&endpoint)
        .await
        .application_name(&app)
        .build()
        .await
        .expect("tables");
    let client = aws_sdk_dynamodb::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
            .load()
            .await,
    );
    // A Java-written item is taken over by our store and checkpointed with a sub-sequence number.
    let java_item = parse_item(&vector("lease_checkpointed.json"));
    client.put_item().table_name(&app).set_item(Some(java_item)).send().await.expect("put java item");
    let store = stores.lease_store();
    let lease = store.get_lease("shardId-000000000004").await.expect("get").expect("exists");
    let taken = store.take_lease(&lease, "rust-worker", &WriteToken::new()).await.expect("take from the Java worker");
    assert_eq!(taken.owner_switches_since_checkpoint, 1);
    let mut next = taken.clone();
    next.checkpoint =
        ExtendedSequenceNumber::at_sub(seq("49590338271490256608559692538361571095921575989136588999"), 3);
    next.owner_switches_since_checkpoint = 0;
    let token = WriteToken::new();
    store.update_lease(&next, &token).await.expect("checkpoint");
    let mut raw = client
        .get_item()
        .table_name(&app)
        .key("leaseKey", AttributeValue::S("shardId-000000000004".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("item");
    let mut expected = parse_item(&vector("lease_checkpointed.json"));
    expected.insert("leaseOwner".into(), AttributeValue::S("rust-worker".into()));
    expected.insert("leaseCounter".into(), AttributeValue::N("1844".into()));
    expected.insert(
        "checkpoint".into(),
        AttributeValue::S("49590338271490256608559692538361571095921575989136588999".into()),
    );
    expected.insert("checkpointSubSequenceNumber".into(), AttributeValue::N("3".into()));
    // The one attribute added to the Java layout: the write's token, which the Java KCL ignores.
    assert_eq!(raw.remove("lastWriteToken"), Some(AttributeValue::S(token.as_str().to_owned())));
    assert_eq!(normalize(&raw), normalize(&expected), "the stored item keeps the Java layout");

    // A lease created by our store is stored exactly as the Java KCL creates one.
    let (_, new) = expected_leases().remove(0);
    store.create_lease_if_not_exists(&new).await.expect("create");
    let raw = client
        .get_item()
        .table_name(&app)
        .key("leaseKey", AttributeValue::S(new.lease_key.clone()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("item");
    assert_eq!(normalize(&raw), normalize(&parse_item(&vector("lease_new.json"))));
}
