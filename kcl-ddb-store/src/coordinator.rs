//! [`DynamoDbCoordinatorStore`]: the leader lock in the `<app>-CoordinatorState` table, in the
//! DynamoDB lock client's item layout.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use kcl::StoreError;
use kcl::store::{CoordinatorStore, LockItem, new_record_version};

use crate::error::{map_sdk_error, with_retry};
use crate::item::{item_to_lock, lock_attr::*, lock_to_item, s};
use crate::stats::{Op, StoreStats, StoreTable};

/// The coordinator-state table of one application in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoDbCoordinatorStore {
    client: Client,
    table: Arc<str>,
    stats: Arc<StoreStats>,
}

impl DynamoDbCoordinatorStore {
    pub(crate) fn new(client: Client, table: &str, stats: Arc<StoreStats>) -> Self {
        DynamoDbCoordinatorStore { client, table: Arc::from(table), stats }
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    fn lost(
        &self,
        item: Option<&std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>,
    ) -> StoreError {
        StoreError::LockLost { current: item.and_then(|i| item_to_lock(i, &self.table).ok()) }
    }
}

#[async_trait]
impl CoordinatorStore for DynamoDbCoordinatorStore {
    async fn get_lock(&self, key: &str) -> Result<Option<LockItem>, StoreError> {
        with_retry(|_| {
            let call = self.client.get_item().table_name(&*self.table).key(KEY, s(key)).consistent_read(true);
            async move {
                self.stats.record(StoreTable::CoordinatorState, Op::Read);
                let out = call.send().await.map_err(map_sdk_error)?;
                out.item.map(|i| item_to_lock(&i, &self.table)).transpose()
            }
        })
        .await
    }

    async fn acquire_lock(
        &self,
        key: &str,
        owner: &str,
        lease_duration: Duration,
        expected: Option<&LockItem>,
    ) -> Result<LockItem, StoreError> {
        let lock = LockItem {
            key: key.to_owned(),
            owner: owner.to_owned(),
            record_version: new_record_version(),
            lease_duration,
            is_released: false,
            holder_fences_leases: true,
        };
        let item = lock_to_item(&lock);
        with_retry(|attempt| {
            let mut call = self
                .client
                .put_item()
                .table_name(&*self.table)
                .set_item(Some(item.clone()))
                .expression_attribute_names("#k", KEY)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            call = match expected {
                None => call.condition_expression("attribute_not_exists(#k)"),
                Some(e) => call
                    .condition_expression("attribute_exists(#k) AND #rvn = :rvn")
                    .expression_attribute_names("#rvn", RECORD_VERSION)
                    .expression_attribute_values(":rvn", s(&e.record_version)),
            };
            let lock = lock.clone();
            async move {
                self.stats.record(StoreTable::CoordinatorState, Op::Write);
                match call.send().await {
                    Ok(_) => Ok(lock),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
                    {
                        let current = match e.err() {
                            PutItemError::ConditionalCheckFailedException(ccf) => ccf.item(),
                            _ => None,
                        };
                        let lost = self.lost(current);
                        // A retried attempt that finds our own version already written succeeded.
                        match &lost {
                            StoreError::LockLost { current: Some(c) }
                                if attempt > 0 && c.record_version == lock.record_version =>
                            {
                                Ok(lock)
                            }
                            _ => Err(lost),
                        }
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
        })
        .await
    }

    async fn heartbeat_lock(&self, held: &LockItem) -> Result<LockItem, StoreError> {
        let next = new_record_version();
        with_retry(|attempt| {
            let call = self
                .client
                .update_item()
                .table_name(&*self.table)
                .key(KEY, s(&held.key))
                .update_expression("SET #rvn = :next")
                .condition_expression(
                    "attribute_exists(#k) AND #rvn = :rvn AND #on = :on AND attribute_not_exists(#ir)",
                )
                .expression_attribute_names("#k", KEY)
                .expression_attribute_names("#rvn", RECORD_VERSION)
                .expression_attribute_names("#on", OWNER_NAME)
                .expression_attribute_names("#ir", IS_RELEASED)
                .expression_attribute_values(":rvn", s(&held.record_version))
                .expression_attribute_values(":on", s(&held.owner))
                .expression_attribute_values(":next", s(&next))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            let next = next.clone();
            async move {
                self.stats.record(StoreTable::CoordinatorState, Op::Write);
                match call.send().await {
                    Ok(out) => item_to_lock(&out.attributes.unwrap_or_default(), &self.table),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
                    {
                        let current = match e.err() {
                            UpdateItemError::ConditionalCheckFailedException(ccf) => ccf.item(),
                            _ => None,
                        };
                        match self.lost(current) {
                            StoreError::LockLost { current: Some(c) } if attempt > 0 && c.record_version == next => {
                                Ok(c)
                            }
                            lost => Err(lost),
                        }
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
        })
        .await
    }

    async fn release_lock(&self, held: &LockItem) -> Result<(), StoreError> {
        with_retry(|attempt| {
            let call = self
                .client
                .delete_item()
                .table_name(&*self.table)
                .key(KEY, s(&held.key))
                .condition_expression("#rvn = :rvn AND #on = :on")
                .expression_attribute_names("#rvn", RECORD_VERSION)
                .expression_attribute_names("#on", OWNER_NAME)
                .expression_attribute_values(":rvn", s(&held.record_version))
                .expression_attribute_values(":on", s(&held.owner))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            async move {
                self.stats.record(StoreTable::CoordinatorState, Op::Write);
                match call.send().await {
                    Ok(_) => Ok(()),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) =>
                    {
                        let current = match e.err() {
                            DeleteItemError::ConditionalCheckFailedException(ccf) => ccf.item(),
                            _ => None,
                        };
                        // Already gone after a retried attempt: released.
                        if attempt > 0 && current.is_none() { Ok(()) } else { Err(self.lost(current)) }
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
        })
        .await
    }
}
