//! DynamoDB implementations of `kcl`'s three stores, in the three-table layout of the Java KCL
//! 3.0–3.4, so an application moving from the Java KCL keeps its leases and checkpoints, and a
//! fleet can mix Java KCL workers and `kcl` workers while it moves (tested against the Java KCL
//! 3.4.2 itself). The Java KCL 3.5's single-table layout for new applications (leader lock and
//! worker metrics in the lease table) is not read.
//!
//! | store | table | key | notes |
//! |---|---|---|---|
//! | [`DynamoDbLeaseStore`] | `<app>` | `leaseKey` (S) | GSI `LeaseOwnerToLeaseKeyIndex` (`leaseOwner` → `leaseKey`, keys only) |
//! | [`DynamoDbCoordinatorStore`] | `<app>-CoordinatorState` | `key` (S) | the `Leader` lock item |
//! | [`DynamoDbWorkerMetricsStore`] | `<app>-WorkerMetricStats` | `wid` (S) | `lut`, `sts`, `opr`; in heartbeat-lease mode also the worker's heartbeat (`hbInc`, `hbBeat`, `hbChanges`, `hbLeases`, `hbKbps`) and the leader's signals (`hbAsv`, `hbAssigned`, `hbStandby`, `hbStandbyMs`), which the Java KCL ignores |
//!
//! Tables are created on first use (on-demand billing by default, optional tags and deletion
//! protection) and the builder waits until they and the index are active; an existing table
//! with another key schema is a [`StoreError::SchemaMismatch`](kcl::StoreError). Every lease and
//! leader-lock write is conditional; a lost condition is `StoreError::LeaseLost` / `LockLost` carrying the item that
//! DynamoDB returned with the failure. Throttling and transient failures are retried with
//! jittered exponential backoff; single-item writes are atomic, so nothing is half-written.
//!
//! [`cost`] estimates what a fleet's coordination costs in DynamoDB without DynamoDB: it wraps
//! any store and charges each call with the requests these stores make for it, in requests and
//! capacity units by DynamoDB's rules (the `coordination_cost` benchmark uses it).
//!
//! ```no_run
//! # async fn example() -> Result<(), kcl::StoreError> {
//! use kcl_ddb_store::DynamoDbStores;
//! let stores = DynamoDbStores::builder().application_name("orders-app").local("http://127.0.0.1:8000").await.build().await?;
//! let leases = stores.lease_store();
//! # Ok(()) }
//! ```

mod coordinator;
pub mod cost;
mod error;
pub mod item;
mod lease_store;
mod stats;
mod tables;
mod worker_metrics;

use std::sync::Arc;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use kcl::StoreError;

pub use coordinator::DynamoDbCoordinatorStore;
pub use lease_store::DynamoDbLeaseStore;
pub use stats::{StoreStats, StoreTable};
pub use tables::{Billing, LEASE_OWNER_INDEX, TableNames, TableOptions};
pub use worker_metrics::DynamoDbWorkerMetricsStore;

/// The three stores of one application, sharing a client and request counters.
#[derive(Clone, Debug)]
pub struct DynamoDbStores {
    names: TableNames,
    leases: DynamoDbLeaseStore,
    coordinator: DynamoDbCoordinatorStore,
    worker_metrics: DynamoDbWorkerMetricsStore,
    stats: Arc<StoreStats>,
}

impl DynamoDbStores {
    /// Starts building the stores.
    pub fn builder() -> DynamoDbStoresBuilder {
        DynamoDbStoresBuilder::default()
    }

    /// The lease store.
    pub fn lease_store(&self) -> DynamoDbLeaseStore {
        self.leases.clone()
    }

    /// The coordinator-state (leader lock) store.
    pub fn coordinator_store(&self) -> DynamoDbCoordinatorStore {
        self.coordinator.clone()
    }

    /// The worker-metrics store.
    pub fn worker_metrics_store(&self) -> DynamoDbWorkerMetricsStore {
        self.worker_metrics.clone()
    }

    /// The table names in use.
    pub fn table_names(&self) -> &TableNames {
        &self.names
    }

    /// Requests made so far by all three stores.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }
}

/// The longest one DynamoDB request may take, on clients this crate builds.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest one store operation may take with its retries, on clients this crate builds: within
/// `kcl`'s default store call timeout (a quarter of the 10 s lease duration), so a slow DynamoDB
/// fails a renewal in time for the next one rather than holding it.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);

/// `aws-config`'s defaults with the timeouts above. Retries are this crate's own (throttling and
/// transient failures, jittered, within [`OPERATION_TIMEOUT`]), so that a retried conditional write
/// can recognise its own earlier attempt by its token; the SDK's are off.
fn sdk_defaults() -> ConfigLoader {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(ATTEMPT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build();
    aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts).retry_config(RetryConfig::disabled())
}

/// Builds [`DynamoDbStores`]: the client, the application name (table names), table options.
#[derive(Default, Debug)]
pub struct DynamoDbStoresBuilder {
    client: Option<Client>,
    application_name: Option<String>,
    names: Option<TableNames>,
    options: TableOptions,
}

impl DynamoDbStoresBuilder {
    /// Uses a ready SDK client, as configured. Give it timeouts that fit the workers' store call
    /// timeout (the clients this builder makes use [`ATTEMPT_TIMEOUT`] and [`OPERATION_TIMEOUT`]);
    /// `kcl` abandons any call that takes longer anyway.
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Builds the client from `aws-config`'s standard chain (env, profile, IMDS).
    pub async fn from_env(mut self) -> Self {
        let config = sdk_defaults().load().await;
        self.client = Some(Client::new(&config));
        self
    }

    /// Builds the client from the standard chain as [`from_env`](Self::from_env) does, in `region`
    /// (a program's `--region` flag, say) whatever the chain says.
    pub async fn from_env_with_region(mut self, region: impl Into<String>) -> Self {
        let config = sdk_defaults().region(Region::new(region.into())).load().await;
        self.client = Some(Client::new(&config));
        self
    }

    /// Builds the client for an explicit endpoint and region; credentials from the standard chain.
    pub async fn endpoint(mut self, endpoint_url: impl Into<String>, region: impl Into<String>) -> Self {
        let config = sdk_defaults().endpoint_url(endpoint_url).region(Region::new(region.into())).load().await;
        self.client = Some(Client::new(&config));
        self
    }

    /// Builds the client for a local DynamoDB emulator (moto's server, DynamoDB Local, LocalStack): the
    /// endpoint, region `us-east-1`, static test credentials, so no AWS account or profile is needed.
    pub async fn local(mut self, endpoint_url: impl Into<String>) -> Self {
        let config = sdk_defaults()
            .endpoint_url(endpoint_url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "kcl-ddb-store-local"))
            .load()
            .await;
        self.client = Some(Client::new(&config));
        self
    }

    /// The application name; tables are `<app>`, `<app>-CoordinatorState`, `<app>-WorkerMetricStats`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Overrides the table names (e.g. a lease table named apart from the application).
    pub fn table_names(mut self, names: TableNames) -> Self {
        self.names = Some(names);
        self
    }

    /// Options for creating missing tables.
    pub fn table_options(mut self, options: TableOptions) -> Self {
        self.options = options;
        self
    }

    /// Creates missing tables, checks existing ones, waits until all are active.
    pub async fn build(self) -> Result<DynamoDbStores, StoreError> {
        let client = match self.client {
            Some(c) => c,
            None => Client::new(&sdk_defaults().load().await),
        };
        let names = match (self.names, self.application_name) {
            (Some(names), _) => names,
            (None, Some(app)) => TableNames::for_application(&app),
            (None, None) => {
                return Err(StoreError::Backend { message: "an application name or table names are required".into() });
            }
        };
        tables::ensure_table(&client, &names.leases, item::lease_attr::LEASE_KEY, true, &self.options).await?;
        tables::ensure_table(&client, &names.coordinator_state, item::lock_attr::KEY, false, &self.options).await?;
        tables::ensure_table(&client, &names.worker_metrics, item::metrics_attr::WORKER_ID, false, &self.options)
            .await?;
        let stats = Arc::new(StoreStats::default());
        Ok(DynamoDbStores {
            leases: DynamoDbLeaseStore::new(client.clone(), &names.leases, stats.clone()),
            coordinator: DynamoDbCoordinatorStore::new(client.clone(), &names.coordinator_state, stats.clone()),
            worker_metrics: DynamoDbWorkerMetricsStore::new(client, &names.worker_metrics, stats.clone()),
            names,
            stats,
        })
    }
}

/// The crate's README (its page on crates.io), compiled and run as doctests so that its example
/// stays true to the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
