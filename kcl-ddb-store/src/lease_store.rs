//! [`DynamoDbLeaseStore`]: leases in the KCL 3.x lease table, every write conditional.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use kcl::lease::WriteToken;
use kcl::store::LeaseStore;
use kcl::{Lease, StoreError};

use crate::error::{all_pages, map_sdk_error, with_retry};
use crate::item::lease_attr::LAST_WRITE_TOKEN;
use crate::item::{item_to_lease, lease_attr::*, lease_to_item, n, s};
use crate::stats::{Op, StoreStats, StoreTable};
use crate::tables::LEASE_OWNER_INDEX;

/// The lease table of one application in DynamoDB.
///
/// Reads of single leases are strongly consistent; the owner query uses the
/// `LeaseOwnerToLeaseKeyIndex` GSI (eventually consistent, as in the KCL). A write whose
/// condition fails returns [`StoreError::LeaseLost`] with the item DynamoDB returned with the
/// failure (`ReturnValuesOnConditionCheckFailure = ALL_OLD`), or read back at once when the
/// backend returned none. Every write stores its caller's token as `lastWriteToken`; a retried
/// attempt takes a condition failure for its own earlier attempt only when the item still shows
/// that token (and the counter it set). The scan skips items that cannot be read as leases
/// (logged, counted in [`StoreStats::malformed_items`]) rather than failing for all of them.
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: Arc<str>,
    stats: Arc<StoreStats>,
}

/// An `UpdateItem` under construction: SET / REMOVE / ADD clauses and a condition.
#[derive(Default)]
struct Update {
    set: Vec<String>,
    remove: Vec<String>,
    add: Vec<String>,
    conditions: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Update {
    fn name(&mut self, attr: &str) -> String {
        let placeholder = format!("#{attr}");
        self.names.insert(placeholder.clone(), attr.to_owned());
        placeholder
    }

    fn value(&mut self, tag: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{tag}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    fn set(&mut self, attr: &str, value: AttributeValue) {
        let (name, value) = (self.name(attr), self.value(attr, value));
        self.set.push(format!("{name} = {value}"));
    }

    fn set_opt(&mut self, attr: &str, value: Option<AttributeValue>) {
        match value {
            Some(v) => self.set(attr, v),
            None => self.remove(attr),
        }
    }

    fn remove(&mut self, attr: &str) {
        let name = self.name(attr);
        self.remove.push(name);
    }

    fn add(&mut self, attr: &str, amount: u64) {
        let name = self.name(attr);
        let value = self.value(&format!("add_{attr}"), n(amount));
        self.add.push(format!("{name} {value}"));
    }

    fn expect_eq(&mut self, attr: &str, value: AttributeValue) {
        let name = self.name(attr);
        let value = self.value(&format!("expected_{attr}"), value);
        self.conditions.push(format!("{name} = {value}"));
    }

    /// `attr = value`, or `attr` absent when `value` is `None`.
    fn expect_opt(&mut self, attr: &str, value: Option<&str>) {
        match value {
            Some(v) => self.expect_eq(attr, s(v)),
            None => self.expect_absent(attr),
        }
    }

    fn expect_absent(&mut self, attr: &str) {
        let name = self.name(attr);
        self.conditions.push(format!("attribute_not_exists({name})"));
    }

    fn expect_exists(&mut self, attr: &str) {
        let name = self.name(attr);
        self.conditions.push(format!("attribute_exists({name})"));
    }

    fn token(&mut self, token: &WriteToken) {
        self.set(LAST_WRITE_TOKEN, s(token.as_str()));
    }

    fn raw_condition(&mut self, condition: String) {
        self.conditions.push(condition);
    }

    fn expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        parts.join(" ")
    }
}

fn seq_fields(update: &mut Update, lease: &Lease) {
    update.set(CHECKPOINT, s(lease.checkpoint.checkpoint_text()));
    update.set(CHECKPOINT_SUB, n(lease.checkpoint.sub_sequence_number()));
    match &lease.pending_checkpoint {
        Some(p) => {
            update.set(PENDING_CHECKPOINT, s(p.checkpoint_text()));
            update.set(PENDING_CHECKPOINT_SUB, n(p.sub_sequence_number()));
        }
        None => {
            update.remove(PENDING_CHECKPOINT);
            update.remove(PENDING_CHECKPOINT_SUB);
        }
    }
    update.set_opt(
        PENDING_CHECKPOINT_STATE,
        lease.pending_checkpoint_state.as_ref().map(|b| AttributeValue::B(Blob::new(b.to_vec()))),
    );
}

fn meta_fields(update: &mut Update, lease: &Lease) {
    update.set_opt(
        CHILD_SHARD_IDS,
        (!lease.child_shard_ids.is_empty()).then(|| AttributeValue::Ss(lease.child_shard_ids.clone())),
    );
    if let Some(range) = &lease.hash_key_range {
        update.set(STARTING_HASH_KEY, s(range.start().to_string()));
        update.set(ENDING_HASH_KEY, s(range.end().to_string()));
    }
}

impl DynamoDbLeaseStore {
    pub(crate) fn new(client: Client, table: &str, stats: Arc<StoreStats>) -> Self {
        DynamoDbLeaseStore { client, table: Arc::from(table), stats }
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Runs a conditional `UpdateItem` on `key`; a lost condition becomes `LeaseLost` with the
    /// current item. `accept_on_retry` recognises, after a retried attempt, that an earlier
    /// attempt already took effect (its write is what makes the condition fail now); it must
    /// prove it by the write's token ([`Lease::shows_write`]), never by the counter alone, which
    /// another writer's write moves the same way.
    async fn conditional_update(
        &self,
        key: &str,
        update: Update,
        accept_on_retry: impl Fn(&Lease) -> bool,
    ) -> Result<Lease, StoreError> {
        let expression = update.expression();
        let condition = update.conditions.join(" AND ");
        let accept_on_retry = &accept_on_retry;
        with_retry(|attempt| {
            let call = self
                .client
                .update_item()
                .table_name(&*self.table)
                .key(LEASE_KEY, s(key))
                .update_expression(&expression)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(update.names.clone()))
                .set_expression_attribute_values(Some(update.values.clone()))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            async move {
                self.stats.record(StoreTable::Leases, Op::Write);
                match call.send().await {
                    Ok(out) => {
                        let item = out.attributes.unwrap_or_default();
                        item_to_lease(&item, &self.table)?.ok_or_else(|| StoreError::Malformed {
                            table: self.table.to_string(),
                            details: "updated item is not a lease".into(),
                        })
                    }
                    Err(err) => match self.lost_from_update(key, err).await {
                        StoreError::LeaseLost { current: Some(current) }
                            if attempt > 0 && accept_on_retry(&current) =>
                        {
                            Ok(*current)
                        }
                        other => Err(other),
                    },
                }
            }
        })
        .await
    }

    /// Turns a failed `UpdateItem` into `LeaseLost` (with the returned item, or a consistent
    /// read of it when the backend did not return it) or another store error.
    async fn lost_from_update(
        &self,
        key: &str,
        err: SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>,
    ) -> StoreError {
        if let SdkError::ServiceError(service) = &err
            && let UpdateItemError::ConditionalCheckFailedException(ccf) = service.err()
        {
            return match ccf.item() {
                Some(item) => StoreError::lease_lost(item_to_lease(item, &self.table).ok().flatten()),
                // Some backends omit the item: read it, so the caller can still judge the conflict.
                None => match self.read_lease(key).await {
                    Ok(current) => StoreError::lease_lost(current),
                    Err(e) => e,
                },
            };
        }
        map_sdk_error(err)
    }

    /// One consistent `GetItem` of a lease.
    async fn read_lease(&self, key: &str) -> Result<Option<Lease>, StoreError> {
        let call = self.client.get_item().table_name(&*self.table).key(LEASE_KEY, s(key)).consistent_read(true);
        self.stats.record(StoreTable::Leases, Op::Read);
        let out = call.send().await.map_err(map_sdk_error)?;
        match out.item {
            Some(item) => item_to_lease(&item, &self.table),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn create_lease_if_not_exists(&self, lease: &Lease) -> Result<bool, StoreError> {
        let item = lease_to_item(lease);
        with_retry(|_| {
            let call = self
                .client
                .put_item()
                .table_name(&*self.table)
                .set_item(Some(item.clone()))
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", LEASE_KEY);
            async move {
                self.stats.record(StoreTable::Leases, Op::Write);
                match call.send().await {
                    Ok(_) => Ok(true),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
                    {
                        Ok(false)
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
        })
        .await
    }

    async fn get_lease(&self, lease_key: &str) -> Result<Option<Lease>, StoreError> {
        with_retry(|_| self.read_lease(lease_key)).await
    }

    async fn list_leases(&self) -> Result<Vec<Lease>, StoreError> {
        all_pages(|start| async move {
            let page = with_retry(|_| {
                let call = self
                    .client
                    .scan()
                    .table_name(&*self.table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone());
                async move {
                    self.stats.record(StoreTable::Leases, Op::Read);
                    call.send().await.map_err(map_sdk_error)
                }
            })
            .await?;
            let mut leases = Vec::with_capacity(page.items().len());
            for item in page.items() {
                match item_to_lease(item, &self.table) {
                    Ok(Some(lease)) => leases.push(lease),
                    Ok(None) => {}
                    Err(e) => {
                        self.stats.record_malformed();
                        let key = item.get(LEASE_KEY).and_then(|k| k.as_s().ok()).map(String::as_str);
                        tracing::warn!(lease = ?key, error = %e, "skipping a lease item that cannot be read");
                    }
                }
            }
            Ok((leases, page.last_evaluated_key))
        })
        .await
    }

    async fn list_lease_keys_owned_by(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        all_pages(|start| async move {
            let page = with_retry(|_| {
                let call = self
                    .client
                    .query()
                    .table_name(&*self.table)
                    .index_name(LEASE_OWNER_INDEX)
                    .key_condition_expression("#o = :o")
                    .expression_attribute_names("#o", LEASE_OWNER)
                    .expression_attribute_values(":o", s(owner))
                    .set_exclusive_start_key(start.clone());
                async move {
                    self.stats.record(StoreTable::Leases, Op::Read);
                    call.send().await.map_err(map_sdk_error)
                }
            })
            .await?;
            let keys = page
                .items()
                .iter()
                .filter_map(|item| item.get(LEASE_KEY).and_then(|v| v.as_s().ok()).cloned())
                .collect();
            Ok((keys, page.last_evaluated_key))
        })
        .await
    }

    async fn renew_lease(
        &self,
        expected: &Lease,
        throughput_kbps: Option<f64>,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let mut update = Update::default();
        update.set(LEASE_COUNTER, n(expected.lease_counter + 1));
        update.token(token);
        if let Some(tp) = throughput_kbps {
            update.set(THROUGHPUT, n(tp));
        }
        update.expect_eq(LEASE_COUNTER, n(expected.lease_counter));
        match &expected.checkpoint_owner {
            // A handoff the caller already knows about does not stop its renewals.
            Some(co) => {
                let name = update.name(CHECKPOINT_OWNER);
                let value = update.value("known_checkpoint_owner", s(co));
                update.raw_condition(format!("(attribute_not_exists({name}) OR {name} = {value})"));
            }
            None => update.expect_absent(CHECKPOINT_OWNER),
        }
        let counter = expected.lease_counter;
        self.conditional_update(&expected.lease_key, update, |current| current.shows_write(token, counter + 1)).await
    }

    async fn take_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let mut update = Update::default();
        update.set(LEASE_OWNER, s(new_owner));
        update.set(LEASE_COUNTER, n(expected.lease_counter + 1));
        update.token(token);
        update.remove(CHECKPOINT_OWNER);
        if expected.lease_owner.as_deref() != Some(new_owner) {
            update.add(OWNER_SWITCHES, 1);
        }
        update.expect_eq(LEASE_COUNTER, n(expected.lease_counter));
        let counter = expected.lease_counter;
        self.conditional_update(&expected.lease_key, update, |c| c.shows_write(token, counter + 1)).await
    }

    async fn assign_lease(&self, expected: &Lease, new_owner: &str, token: &WriteToken) -> Result<Lease, StoreError> {
        let mut update = Update::default();
        update.set(LEASE_OWNER, s(new_owner));
        update.add(LEASE_COUNTER, 1);
        update.token(token);
        update.remove(CHECKPOINT_OWNER);
        if expected.lease_owner.as_deref() != Some(new_owner) {
            update.add(OWNER_SWITCHES, 1);
        }
        update.expect_exists(LEASE_KEY);
        update.expect_opt(LEASE_OWNER, expected.lease_owner.as_deref());
        update.expect_opt(CHECKPOINT_OWNER, expected.checkpoint_owner.as_deref());
        // The counter is added to, not set: the token proves the write; the owner that it is still
        // in effect.
        self.conditional_update(&expected.lease_key, update, |c| {
            c.last_write.as_ref() == Some(token) && c.is_owned_by(new_owner)
        })
        .await
    }

    async fn initiate_handoff(
        &self,
        expected: &Lease,
        next_owner: &str,
        token: &WriteToken,
    ) -> Result<Lease, StoreError> {
        let Some(current_owner) = expected.lease_owner.as_deref() else {
            return Err(StoreError::lease_lost(None));
        };
        let mut update = Update::default();
        update.set(LEASE_OWNER, s(next_owner));
        update.set(CHECKPOINT_OWNER, s(current_owner));
        update.token(token);
        update.expect_exists(LEASE_KEY);
        update.expect_eq(LEASE_OWNER, s(current_owner));
        update.expect_absent(CHECKPOINT_OWNER);
        let counter = expected.lease_counter;
        self.conditional_update(&expected.lease_key, update, |c| c.shows_write(token, counter)).await
    }

    async fn evict_lease(&self, expected: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let mut update = Update::default();
        update.remove(LEASE_OWNER);
        update.remove(CHECKPOINT_OWNER);
        update.add(LEASE_COUNTER, 1);
        update.token(token);
        update.expect_exists(LEASE_KEY);
        update.expect_opt(LEASE_OWNER, expected.lease_owner.as_deref());
        update.expect_opt(CHECKPOINT_OWNER, expected.checkpoint_owner.as_deref());
        self.conditional_update(&expected.lease_key, update, |c| {
            c.last_write.as_ref() == Some(token) && c.lease_owner.is_none()
        })
        .await
    }

    async fn update_lease(&self, updated: &Lease, token: &WriteToken) -> Result<Lease, StoreError> {
        let mut update = Update::default();
        update.set(LEASE_COUNTER, n(updated.lease_counter + 1));
        update.token(token);
        seq_fields(&mut update, updated);
        update.set(OWNER_SWITCHES, n(updated.owner_switches_since_checkpoint));
        meta_fields(&mut update, updated);
        update.expect_eq(LEASE_COUNTER, n(updated.lease_counter));
        update.expect_opt(LEASE_OWNER, updated.lease_owner.as_deref());
        let counter = updated.lease_counter;
        self.conditional_update(&updated.lease_key, update, |c| c.shows_write(token, counter + 1)).await
    }

    async fn update_lease_meta(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut update = Update::default();
        meta_fields(&mut update, lease);
        if update.set.is_empty() && update.remove.is_empty() {
            return Ok(());
        }
        update.expect_exists(LEASE_KEY);
        self.conditional_update(&lease.lease_key, update, |_| true).await.map(|_| ())
    }

    async fn delete_lease(&self, lease_key: &str) -> Result<(), StoreError> {
        with_retry(|_| {
            let call = self.client.delete_item().table_name(&*self.table).key(LEASE_KEY, s(lease_key));
            async move {
                self.stats.record(StoreTable::Leases, Op::Write);
                call.send().await.map(|_| ()).map_err(map_sdk_error)
            }
        })
        .await
    }
}
