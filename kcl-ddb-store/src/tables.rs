//! Table names, schemas, creation and schema checks.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ProvisionedThroughput, ScalarAttributeType, TableDescription, TableStatus, Tag,
};
use kcl::StoreError;

use crate::error::map_sdk_error;

/// The GSI the KCL 3.x keeps on the lease table: `leaseOwner` → `leaseKey`, keys only.
pub const LEASE_OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";

/// The three table names of an application, as the KCL 3.x names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableNames {
    /// Leases: the application name.
    pub leases: String,
    /// Coordinator state (leader lock): `<app>-CoordinatorState`.
    pub coordinator_state: String,
    /// Worker metrics: `<app>-WorkerMetricStats`.
    pub worker_metrics: String,
}

impl TableNames {
    /// The KCL 3.x names for `application_name`.
    pub fn for_application(application_name: &str) -> Self {
        TableNames {
            leases: application_name.to_owned(),
            coordinator_state: format!("{application_name}-CoordinatorState"),
            worker_metrics: format!("{application_name}-WorkerMetricStats"),
        }
    }
}

/// How tables are billed when this crate creates them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Billing {
    /// On-demand (`PAY_PER_REQUEST`), the KCL's default.
    #[default]
    PayPerRequest,
    /// Provisioned capacity.
    Provisioned {
        /// Read capacity units.
        read: i64,
        /// Write capacity units.
        write: i64,
    },
}

/// Options for creating the tables on first use.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// Billing mode of created tables.
    pub billing: Billing,
    /// Tags put on created tables.
    pub tags: Vec<(String, String)>,
    /// Deletion protection on created tables.
    pub deletion_protection: bool,
    /// Create missing tables (else a missing table is an error).
    pub create_if_missing: bool,
    /// How long to wait for a table (and the lease table's index) to become active.
    pub wait_timeout: Duration,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            billing: Billing::PayPerRequest,
            tags: Vec::new(),
            deletion_protection: false,
            create_if_missing: true,
            wait_timeout: Duration::from_secs(600),
        }
    }
}

fn key(name: &str, key_type: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder().attribute_name(name).key_type(key_type).build().map_err(build_error)
}

fn string_attr(name: &str) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(build_error)
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend { message: format!("building a DynamoDB request: {e}") }
}

fn throughput(read: i64, write: i64) -> Result<ProvisionedThroughput, StoreError> {
    ProvisionedThroughput::builder().read_capacity_units(read).write_capacity_units(write).build().map_err(build_error)
}

fn owner_index(billing: Billing) -> Result<GlobalSecondaryIndex, StoreError> {
    let mut gsi = GlobalSecondaryIndex::builder()
        .index_name(LEASE_OWNER_INDEX)
        .key_schema(key("leaseOwner", KeyType::Hash)?)
        .key_schema(key("leaseKey", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build());
    if let Billing::Provisioned { read, write } = billing {
        gsi = gsi.provisioned_throughput(throughput(read, write)?);
    }
    gsi.build().map_err(build_error)
}

async fn describe(client: &Client, table: &str) -> Result<Option<TableDescription>, StoreError> {
    match client.describe_table().table_name(table).send().await {
        Ok(out) => Ok(out.table),
        Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
        Err(e) => Err(map_sdk_error(e)),
    }
}

/// Checks that an existing table has the expected string partition key.
fn check_key_schema(table: &str, description: &TableDescription, hash_key: &str) -> Result<(), StoreError> {
    let keys = description.key_schema();
    let hash = keys.iter().find(|k| *k.key_type() == KeyType::Hash).map(|k| k.attribute_name());
    let has_range = keys.iter().any(|k| *k.key_type() == KeyType::Range);
    let hash_type = description
        .attribute_definitions()
        .iter()
        .find(|d| Some(d.attribute_name()) == hash)
        .map(|d| d.attribute_type().clone());
    if hash != Some(hash_key) || has_range || hash_type != Some(ScalarAttributeType::S) {
        return Err(StoreError::SchemaMismatch {
            table: table.to_owned(),
            details: format!("expected partition key {hash_key} (S) and no sort key; found {keys:?}"),
        });
    }
    Ok(())
}

/// Creates `table` (with the owner index when `with_owner_index`) unless it exists, checks its
/// schema, adds a missing owner index to an existing lease table as the KCL does, and waits
/// until table and index are active.
pub(crate) async fn ensure_table(
    client: &Client,
    table: &str,
    hash_key: &str,
    with_owner_index: bool,
    options: &TableOptions,
) -> Result<(), StoreError> {
    match describe(client, table).await? {
        Some(description) => {
            check_key_schema(table, &description, hash_key)?;
            let has_index =
                description.global_secondary_indexes().iter().any(|g| g.index_name() == Some(LEASE_OWNER_INDEX));
            if with_owner_index && !has_index {
                add_owner_index(client, table, &description, options).await?;
            }
        }
        None if !options.create_if_missing => {
            return Err(StoreError::Backend {
                message: format!("table {table} does not exist and table creation is off"),
            });
        }
        None => {
            let mut create = client
                .create_table()
                .table_name(table)
                .key_schema(key(hash_key, KeyType::Hash)?)
                .attribute_definitions(string_attr(hash_key)?)
                .deletion_protection_enabled(options.deletion_protection);
            create = match options.billing {
                Billing::PayPerRequest => create.billing_mode(BillingMode::PayPerRequest),
                Billing::Provisioned { read, write } => {
                    create.billing_mode(BillingMode::Provisioned).provisioned_throughput(throughput(read, write)?)
                }
            };
            if with_owner_index {
                create = create
                    .attribute_definitions(string_attr("leaseOwner")?)
                    .global_secondary_indexes(owner_index(options.billing)?);
            }
            for (k, v) in &options.tags {
                create = create.tags(Tag::builder().key(k).value(v).build().map_err(build_error)?);
            }
            match create.send().await {
                Ok(_) => {}
                // Another worker created it first.
                Err(e) if e.code() == Some("ResourceInUseException") => {}
                Err(e) => return Err(map_sdk_error(e)),
            }
        }
    }
    wait_active(client, table, with_owner_index, options.wait_timeout).await
}

async fn add_owner_index(
    client: &Client,
    table: &str,
    description: &TableDescription,
    options: &TableOptions,
) -> Result<(), StoreError> {
    let billing = match description.billing_mode_summary().and_then(|b| b.billing_mode()) {
        Some(BillingMode::Provisioned) => {
            let t = description.provisioned_throughput();
            Billing::Provisioned {
                read: t.and_then(|t| t.read_capacity_units()).unwrap_or(10),
                write: t.and_then(|t| t.write_capacity_units()).unwrap_or(10),
            }
        }
        _ => options.billing,
    };
    let mut action = CreateGlobalSecondaryIndexAction::builder()
        .index_name(LEASE_OWNER_INDEX)
        .key_schema(key("leaseOwner", KeyType::Hash)?)
        .key_schema(key("leaseKey", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build());
    if let Billing::Provisioned { read, write } = billing {
        action = action.provisioned_throughput(throughput(read, write)?);
    }
    let result = client
        .update_table()
        .table_name(table)
        .attribute_definitions(string_attr("leaseOwner")?)
        .attribute_definitions(string_attr("leaseKey")?)
        .global_secondary_index_updates(
            GlobalSecondaryIndexUpdate::builder().create(action.build().map_err(build_error)?).build(),
        )
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceInUseException") || e.code() == Some("ValidationException") => Ok(()),
        Err(e) => Err(map_sdk_error(e)),
    }
}

async fn wait_active(
    client: &Client,
    table: &str,
    with_owner_index: bool,
    timeout: Duration,
) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(description) = describe(client, table).await? {
            let table_active = description.table_status() == Some(&TableStatus::Active);
            let index_active = !with_owner_index
                || description.global_secondary_indexes().iter().any(|g| {
                    g.index_name() == Some(LEASE_OWNER_INDEX)
                        && g.index_status().is_none_or(|s| *s == IndexStatus::Active)
                });
            if table_active && index_active {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable {
                message: format!("table {table} did not become active within {timeout:?}"),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
