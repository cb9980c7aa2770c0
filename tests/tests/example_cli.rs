//! The example programs' command lines, as a user at a terminal meets them: `--help` and
//! `--version` answer (exit code 0), a mistake is refused with exit code 2 and a hint, and with
//! no flag the endpoints come from the AWS variables (`AWS_ENDPOINT_URL_KINESIS` /
//! `AWS_ENDPOINT_URL_DYNAMODB` before `AWS_ENDPOINT_URL`; a flag before either).
//!
//! The variable tests need `KINESIS_MOCK_ENDPOINT` and `DYNAMODB_ENDPOINT` (set by
//! `scripts/test.sh`).

use std::path::Path;
use std::process::{Command, Output};

use tests::{example_binary, peer, unique_name};

/// Every variable that can name an endpoint; each run sets exactly the ones it means to.
const ENDPOINT_VARIABLES: [&str; 3] = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_DYNAMODB"];

fn run(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary);
    command.args(args);
    for name in ENDPOINT_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("run the example program")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_program_answers_help_and_version() {
    // `produce` first: it is the program the defect was reported against.
    let programs: [(&str, &[&str]); 4] = [
        ("produce", &["--stream", "--endpoint", "--region", "--records", "--keys", "--unordered", "--compress"]),
        ("consume", &["--stream", "--app", "--endpoint", "--ddb-endpoint", "--expect", "--efo", "--no-cpu-metrics"]),
        ("bench", &["--records", "--size", "--keys", "--shards"]),
        ("quickstart", &[]),
    ];
    for (name, flags) in programs {
        let binary = example_binary(name);
        let help = run(&binary, &["--help"], &[]);
        let stdout = text(&help.stdout);
        assert_eq!(help.status.code(), Some(0), "{name} --help: {}", text(&help.stderr));
        assert!(stdout.contains("Usage:"), "{name} --help prints its usage: {stdout}");
        for flag in flags {
            assert!(stdout.contains(flag), "{name} --help lists {flag}: {stdout}");
        }
        let version = run(&binary, &["--version"], &[]);
        assert_eq!(version.status.code(), Some(0), "{name} --version: {}", text(&version.stderr));
        assert_eq!(text(&version.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn a_mistake_is_refused_with_exit_code_2_and_a_hint() {
    let produce = example_binary("produce");
    let cases: [(&[&str], &str); 5] = [
        (&["--strem", "s"], "--stream"),
        (&[], "--stream"),
        (&["--stream", "s", "--records", "many"], "--records"),
        (&["--stream", "s", "--keys", "0"], "--keys"),
        (&["--stream", "s", "extra"], "extra"),
    ];
    for (args, hint) in cases {
        let output = run(&produce, args, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "produce {args:?} is a usage error: {stderr}");
        assert!(stderr.contains(hint), "produce {args:?} names {hint}: {stderr}");
        assert!(output.stdout.is_empty(), "produce {args:?} printed no summary");
    }
    let consume = example_binary("consume");
    let output = run(&consume, &["--stream", "s", "--app", "a", "--efo=yes"], &[]);
    assert_eq!(output.status.code(), Some(2), "a switch takes no value: {}", text(&output.stderr));
}

/// An address nothing listens on.
fn closed_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_default_to_the_aws_variables() {
    let (Some(kinesis), Some(dynamodb)) = (peer("KINESIS_MOCK_ENDPOINT"), peer("DYNAMODB_ENDPOINT")) else {
        return;
    };
    let (produce, consume) = (example_binary("produce"), example_binary("consume"));
    let closed = closed_endpoint();
    let stream = unique_name("cli-env");
    let produce_args = ["--stream", stream.as_str(), "--create-shards", "1", "--records", "20", "--keys", "2"];

    let output = run(&produce, &produce_args, &[("AWS_ENDPOINT_URL", &kinesis)]);
    assert_eq!(output.status.code(), Some(0), "AWS_ENDPOINT_URL is the endpoint: {}", text(&output.stderr));

    let env = [("AWS_ENDPOINT_URL", closed.as_str()), ("AWS_ENDPOINT_URL_KINESIS", kinesis.as_str())];
    let output = run(&produce, &produce_args, &env);
    assert_eq!(output.status.code(), Some(0), "the Kinesis variable wins: {}", text(&output.stderr));

    let env = [("AWS_ENDPOINT_URL", kinesis.as_str()), ("AWS_ENDPOINT_URL_KINESIS", closed.as_str())];
    let output = run(&produce, &produce_args, &env);
    assert_eq!(output.status.code(), Some(3), "the Kinesis variable wins, unreachable: {}", text(&output.stderr));

    let mut with_flag = produce_args.to_vec();
    with_flag.extend(["--endpoint", kinesis.as_str()]);
    let env = [("AWS_ENDPOINT_URL", closed.as_str()), ("AWS_ENDPOINT_URL_KINESIS", closed.as_str())];
    let output = run(&produce, &with_flag, &env);
    assert_eq!(output.status.code(), Some(0), "the flag wins over both: {}", text(&output.stderr));

    // A Kinesis endpoint by flag and none for DynamoDB would keep the leases in memory; the
    // DynamoDB variable puts them in DynamoDB, where they can be read afterwards.
    let consume_args = [
        "--stream",
        stream.as_str(),
        "--app",
        stream.as_str(),
        "--endpoint",
        kinesis.as_str(),
        "--expect",
        "20",
        "--idle-exit",
        "60",
        "--no-cpu-metrics",
    ];
    let output = run(&consume, &consume_args, &[("AWS_ENDPOINT_URL_DYNAMODB", &dynamodb)]);
    assert_eq!(output.status.code(), Some(0), "consume: {}", text(&output.stderr));
    let summary = tests::last_json_line(&output.stdout).expect("consume's summary");
    assert_eq!(summary["unique"], 20, "{summary}");

    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .endpoint_url(&dynamodb)
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let leases = client.scan().table_name(&stream).send().await.expect("the lease table is in DynamoDB");
    let items = leases.items();
    assert_eq!(items.len(), 1, "one lease for the one shard: {items:?}");
    assert!(items[0].contains_key("checkpoint"), "the lease carries its checkpoint: {items:?}");
}
