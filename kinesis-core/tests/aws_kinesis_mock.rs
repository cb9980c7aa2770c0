//! The behaviour suite against kinesis-mock (LocalStack's Kinesis engine) through `AwsKinesis`.
//! kinesis-mock is started by `scripts/test.sh`.

mod suite;
mod support;

use kinesis_core::AwsKinesis;

async fn client() -> Option<AwsKinesis> {
    let endpoint = support::peer("KINESIS_MOCK_ENDPOINT")?;
    Some(AwsKinesis::local(endpoint).await)
}

behaviour_suite!(client(), (flavor = "multi_thread"));
