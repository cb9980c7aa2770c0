//! [`DynamoDbWorkerMetricsStore`]: worker reports and heartbeats in the `<app>-WorkerMetricStats`
//! table (key `wid`).
//!
//! What each call sends to DynamoDB:
//!
//! * `put_worker_metrics` — one `PutItem` of the Java KCL's attributes (`wid`, `lut`, `sts`,
//!   `opr`). It replaces the whole row, so any heartbeat (`hb…`) and signal attributes vanish:
//!   a worker in per-lease mode (or a Java KCL worker) owns its row outright.
//! * `list_worker_metrics` — an eventually consistent `Scan` (half the read units of a
//!   consistent one). A row may be shown as it was shortly before; the leader confirms a row
//!   that looks unchanged with `get_worker_metrics` before it acts on it.
//! * `get_worker_metrics` — one strongly consistent `GetItem`.
//! * `heartbeat_worker` — one `UpdateItem` that SETs `lut`, `sts`, `opr` and the heartbeat
//!   attributes (`hbInc`, `hbBeat`, `hbChanges`, `hbLeases`, `hbKbps`) but none of the leader's
//!   signal attributes, so signals written between two heartbeats survive them. Its condition
//!   `attribute_not_exists(wid) OR attribute_not_exists(hbInc) OR hbInc = :inc` (plus
//!   `OR hbInc = :replaced` when taking over a previous incarnation's row) lets a process write
//!   a new row, a plain report's row or its own row, never another live process's.
//!   `ReturnValues = ALL_NEW` returns the row as written, signals included (this costs no read
//!   units); on a lost condition `ReturnValuesOnConditionCheckFailure = ALL_OLD` returns the row
//!   that refused it, for [`StoreError::HeartbeatRowTaken`].
//! * `signal_worker` — one `UpdateItem` with condition `attribute_exists(hbInc)` (a signal never
//!   creates a row, nor lands on a row without a heartbeat): `ADD hbAsv :one SET hbAssigned = :n`
//!   for new assignments, `SET hbStandby, hbStandbyMs` or `REMOVE hbStandby, hbStandbyMs` for the
//!   standby's stamp. A retry after a lost reply may raise `hbAsv` twice; the worker only looks
//!   for a change of it, so that is harmless.
//! * `delete_worker_metrics` — one `DeleteItem` conditional on `lut`.
//!
//! Throttled and transient failures are retried (`with_retry`). A heartbeat retried after its
//! reply was lost writes the same values again, under a condition its own first attempt keeps
//! true, so it succeeds as the first attempt did.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use kcl::StoreError;
use kcl::store::{WorkerMetrics, WorkerMetricsStore, WorkerSignal};

use crate::error::{all_pages, map_sdk_error, with_retry};
use crate::item::{
    heartbeat_attributes, item_to_metrics, metrics_attr::*, metrics_to_item, n, number_lists, s, standby_attributes,
};
use crate::stats::{Op, StoreStats, StoreTable};

/// The worker-metrics table of one application in DynamoDB.
#[derive(Clone, Debug)]
pub struct DynamoDbWorkerMetricsStore {
    client: Client,
    table: Arc<str>,
    stats: Arc<StoreStats>,
}

/// The placeholder `#<attr>` of an attribute name in an expression.
fn name(attr: &str) -> String {
    format!("#{attr}")
}

/// The placeholder `:<attr>` of the value written to an attribute.
fn value(attr: &str) -> String {
    format!(":{attr}")
}

impl DynamoDbWorkerMetricsStore {
    pub(crate) fn new(client: Client, table: &str, stats: Arc<StoreStats>) -> Self {
        DynamoDbWorkerMetricsStore { client, table: Arc::from(table), stats }
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// Turns a failed heartbeat `UpdateItem` into [`StoreError::HeartbeatRowTaken`] with the row
    /// DynamoDB returned with the lost condition (`None` when it returned none), or into another
    /// store error.
    fn taken_from(&self, err: SdkError<UpdateItemError, aws_sdk_dynamodb::config::http::HttpResponse>) -> StoreError {
        if let SdkError::ServiceError(service) = &err
            && let UpdateItemError::ConditionalCheckFailedException(ccf) = service.err()
        {
            // A row that cannot be read is still another process's row: refused all the same.
            let current = ccf.item().and_then(|item| match item_to_metrics(item, &self.table) {
                Ok(row) => Some(Box::new(row)),
                Err(error) => {
                    tracing::warn!(%error, "the heartbeat row that refused a heartbeat cannot be read");
                    None
                }
            });
            return StoreError::HeartbeatRowTaken { current };
        }
        map_sdk_error(err)
    }
}

#[async_trait]
impl WorkerMetricsStore for DynamoDbWorkerMetricsStore {
    async fn put_worker_metrics(&self, metrics: &WorkerMetrics) -> Result<(), StoreError> {
        // A plain report: the row written carries neither heartbeat nor signals, whatever
        // `metrics` says (the trait's semantics), and the PutItem drops those the row had.
        let plain = WorkerMetrics { heartbeat: None, signals: Default::default(), ..metrics.clone() };
        let item = metrics_to_item(&plain);
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
                    .consistent_read(false)
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

    async fn get_worker_metrics(&self, worker_id: &str) -> Result<Option<WorkerMetrics>, StoreError> {
        let out = with_retry(|_| {
            let call =
                self.client.get_item().table_name(&*self.table).key(WORKER_ID, s(worker_id)).consistent_read(true);
            async move {
                self.stats.record(StoreTable::WorkerMetrics, Op::Read);
                call.send().await.map_err(map_sdk_error)
            }
        })
        .await?;
        match out.item {
            Some(item) if !item.is_empty() => item_to_metrics(&item, &self.table).map(Some),
            _ => Ok(None),
        }
    }

    async fn heartbeat_worker(&self, row: &WorkerMetrics, replaces: Option<&str>) -> Result<WorkerMetrics, StoreError> {
        let Some(heartbeat) = &row.heartbeat else {
            return Err(StoreError::Backend { message: "a heartbeat row needs a heartbeat".into() });
        };
        // The worker's own attributes, as a PutItem would write them (empty metric maps as empty
        // maps, so the row reads the same either way); none of the leader's signal attributes.
        let own = [
            (LAST_UPDATE.to_owned(), n(row.last_update_secs)),
            (STATS.to_owned(), number_lists(&row.metric_stats)),
            (OPERATING_RANGE.to_owned(), number_lists(&row.operating_range)),
        ];
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        let mut sets = Vec::new();
        for (attr, v) in own.into_iter().chain(heartbeat_attributes(heartbeat)) {
            sets.push(format!("{} = {}", name(&attr), value(&attr)));
            values.insert(value(&attr), v);
            names.insert(name(&attr), attr);
        }
        let expression = format!("SET {}", sets.join(", "));
        names.insert(name(WORKER_ID), WORKER_ID.to_owned());
        let (wid, inc) = (name(WORKER_ID), name(HB_INCARNATION));
        let mut condition = format!("attribute_not_exists({wid}) OR attribute_not_exists({inc}) OR {inc} = :inc");
        values.insert(":inc".to_owned(), s(&heartbeat.incarnation));
        if let Some(replaced) = replaces {
            condition.push_str(&format!(" OR {inc} = :replaced"));
            values.insert(":replaced".to_owned(), s(replaced));
        }
        with_retry(|_| {
            let call = self
                .client
                .update_item()
                .table_name(&*self.table)
                .key(WORKER_ID, s(&row.worker_id))
                .update_expression(&expression)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .return_values(ReturnValue::AllNew)
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
            async move {
                self.stats.record(StoreTable::WorkerMetrics, Op::Write);
                match call.send().await {
                    Ok(out) => item_to_metrics(&out.attributes.unwrap_or_default(), &self.table),
                    Err(err) => Err(self.taken_from(err)),
                }
            }
        })
        .await
    }

    async fn signal_worker(&self, worker_id: &str, signal: &WorkerSignal) -> Result<(), StoreError> {
        let mut names = HashMap::from([(name(HB_INCARNATION), HB_INCARNATION.to_owned())]);
        let mut values: HashMap<String, AttributeValue> = HashMap::new();
        let expression = match signal {
            WorkerSignal::Assignments { assigned_leases } => {
                names.insert(name(HB_ASSIGNMENT_VERSION), HB_ASSIGNMENT_VERSION.to_owned());
                names.insert(name(HB_ASSIGNED_LEASES), HB_ASSIGNED_LEASES.to_owned());
                values.insert(":one".to_owned(), n(1));
                values.insert(value(HB_ASSIGNED_LEASES), n(*assigned_leases));
                format!(
                    "ADD {} :one SET {} = {}",
                    name(HB_ASSIGNMENT_VERSION),
                    name(HB_ASSIGNED_LEASES),
                    value(HB_ASSIGNED_LEASES)
                )
            }
            WorkerSignal::Standby(Some(stamp)) => {
                let mut sets = Vec::new();
                for (attr, v) in standby_attributes(stamp) {
                    sets.push(format!("{} = {}", name(&attr), value(&attr)));
                    names.insert(name(&attr), attr.clone());
                    values.insert(value(&attr), v);
                }
                format!("SET {}", sets.join(", "))
            }
            WorkerSignal::Standby(None) => {
                names.insert(name(HB_STANDBY_VERSION), HB_STANDBY_VERSION.to_owned());
                names.insert(name(HB_STANDBY_MILLIS), HB_STANDBY_MILLIS.to_owned());
                format!("REMOVE {}, {}", name(HB_STANDBY_VERSION), name(HB_STANDBY_MILLIS))
            }
        };
        let condition = format!("attribute_exists({})", name(HB_INCARNATION));
        with_retry(|_| {
            let call = self
                .client
                .update_item()
                .table_name(&*self.table)
                .key(WORKER_ID, s(worker_id))
                .update_expression(&expression)
                .condition_expression(&condition)
                .set_expression_attribute_names(Some(names.clone()))
                // DynamoDB refuses an empty ExpressionAttributeValues (the REMOVE has no values).
                .set_expression_attribute_values((!values.is_empty()).then(|| values.clone()));
            async move {
                self.stats.record(StoreTable::WorkerMetrics, Op::Write);
                match call.send().await {
                    Ok(_) => Ok(()),
                    Err(SdkError::ServiceError(e))
                        if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
                    {
                        Err(StoreError::MetricsConditionFailed)
                    }
                    Err(e) => Err(map_sdk_error(e)),
                }
            }
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
