//! [`DynamoDbWorkerMetricsStore`]: worker reports in the `<app>-WorkerMetricStats` table.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use kcl::StoreError;
use kcl::store::{WorkerMetrics, WorkerMetricsStore};

use crate::error::{all_pages, map_sdk_error, with_retry};
use crate::item::{item_to_metrics, metrics_attr::*, metrics_to_item, n, s};
use crate::stats::{Op, StoreStats, StoreTable};

/// The worker-metrics table of one application in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoDbWorkerMetricsStore {
    client: Client,
    table: Arc<str>,
    stats: Arc<StoreStats>,
}

impl DynamoDbWorkerMetricsStore {
    pub(crate) fn new(client: Client, table: &str, stats: Arc<StoreStats>) -> Self {
        DynamoDbWorkerMetricsStore { client, table: Arc::from(table), stats }
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }
}

#[async_trait]
impl WorkerMetricsStore for DynamoDbWorkerMetricsStore {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        let item = metrics_to_item(metrics);
        with_retry(|_| {
            let call = self.client.put_item().table_name(&*self.table).set_item(Some(item.clone()));
            async move {
                self.stats.record(StoreTable::WorkerMetrics, Op::Write);
                call.send().await.map(|_| ()).map_err(map_sdk_error)
            }
        })
        .await
    }

    async fn list_worker_metrics(&self) -> Result<Vec<WorkerMetrics>, StoreError> {
        all_pages(|start| async move {
            let page = with_retry(|_| {
                let call = self
                    .client
                    .scan()
                    .table_name(&*self.table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone());
                async move {
                    self.stats.record(StoreTable::WorkerMetrics, Op::Read);
                    call.send().await.map_err(map_sdk_error)
                }
            })
            .await?;
            let metrics =
                page.items().iter().map(|item| item_to_metrics(item, &self.table)).collect::<Result<Vec<_>, _>>()?;
            Ok((metrics, page.last_evaluated_key))
        })
        .await
    }

    async fn delete_worker_metrics(&self, worker_id: &str, expected_last_update_secs: u64) -> Result<(), StoreError> {
        with_retry(|_| {
            let call = self
                .client
                .delete_item()
                .table_name(&*self.table)
                .key(WORKER_ID, s(worker_id))
                .condition_expression("#lut = :lut")
                .expression_attribute_names("#lut", LAST_UPDATE)
                .expression_attribute_values(":lut", n(expected_last_update_secs));
            async move {
                self.stats.record(StoreTable::WorkerMetrics, Op::Write);
                match call.send().await {
                    Ok(_) => Ok(()),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), DeleteItemError::ConditionalCheckFailedException(_)) =>
                    {
                        Err(StoreError::MetricsConditionFailed)
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
        })
        .await
    }
}
