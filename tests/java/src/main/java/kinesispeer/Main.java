package kinesispeer;

import java.io.BufferedWriter;
import java.io.FileWriter;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;

import com.google.common.util.concurrent.FutureCallback;
import com.google.common.util.concurrent.Futures;
import com.google.common.util.concurrent.ListenableFuture;
import com.google.common.util.concurrent.MoreExecutors;

import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.http.Protocol;
import software.amazon.awssdk.http.nio.netty.NettyNioAsyncHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.cloudwatch.CloudWatchAsyncClient;
import software.amazon.awssdk.services.dynamodb.DynamoDbAsyncClient;
import software.amazon.awssdk.services.kinesis.KinesisAsyncClient;
import software.amazon.kinesis.common.ConfigsBuilder;
import software.amazon.kinesis.common.InitialPositionInStream;
import software.amazon.kinesis.common.InitialPositionInStreamExtended;
import software.amazon.kinesis.coordinator.Scheduler;
import software.amazon.kinesis.exceptions.ShutdownException;
import software.amazon.kinesis.lifecycle.events.InitializationInput;
import software.amazon.kinesis.lifecycle.events.LeaseLostInput;
import software.amazon.kinesis.lifecycle.events.ProcessRecordsInput;
import software.amazon.kinesis.lifecycle.events.ShardEndedInput;
import software.amazon.kinesis.lifecycle.events.ShutdownRequestedInput;
import software.amazon.kinesis.metrics.NullMetricsFactory;
import software.amazon.kinesis.processor.RecordProcessorCheckpointer;
import software.amazon.kinesis.processor.ShardRecordProcessor;
import software.amazon.kinesis.processor.SingleStreamTracker;
import software.amazon.kinesis.producer.KinesisProducer;
import software.amazon.kinesis.producer.KinesisProducerConfiguration;
import software.amazon.kinesis.producer.UserRecordFailedException;
import software.amazon.kinesis.producer.UserRecordResult;
import software.amazon.kinesis.retrieval.KinesisClientRecord;
import software.amazon.kinesis.retrieval.polling.PollingConfig;

/**
 * The Java test peer: the Java KCL 3.x and the KPL behind the same command-line contracts as the
 * {@code consume} and {@code produce} example programs, so one accounting reads both.
 *
 * <pre>
 * java -cp ... kinesispeer.Main consume --stream S --app A --endpoint URL --ddb-endpoint URL
 *     [--worker-id W] [--out FILE] [--lease-duration-ms MS] [--expect N] [--idle-exit SECS]
 * java -cp ... kinesispeer.Main produce --stream S --endpoint https://HOST:PORT
 *     [--records N] [--size BYTES] [--keys K] [--rate R]
 * </pre>
 *
 * consume: a KCL worker (polling, metrics off) whose processor appends one JSON line per record
 * to --out ({@code key n shard seq sub worker ts_ms}) and checkpoints after every batch.
 * SIGTERM, --expect N unique records or --idle-exit SECS without a new one start a graceful
 * shutdown. The last stdout line is a JSON summary: records, unique, duplicates, order_violations,
 * shards_finished, bad_headers, elapsed_s.
 *
 * produce: the KPL (aggregation on, metrics off, the TLS endpoint's certificate not verified)
 * writes records {@code "<key> <n> "} padded with '.' to BYTES, keys k0..k{K-1} round-robin. The
 * last stdout line is a JSON summary: sent, delivered, failed, retries, elapsed_s,
 * records_per_s.
 *
 * Exit codes as the examples: 0 done, 1 a check or a record failed, 2 bad flags.
 */
public final class Main {
    private static final int EXIT_FAILED = 1;
    private static final int EXIT_USAGE = 2;

    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage("a mode is required: consume or produce");
        }
        Map<String, String> flags = parseFlags(Arrays.copyOfRange(args, 1, args.length));
        switch (args[0]) {
            case "consume" -> System.exit(consume(flags));
            case "produce" -> System.exit(produce(flags));
            default -> usage("unknown mode " + args[0]);
        }
    }

    // ---- flags ---------------------------------------------------------------------------------

    private static Map<String, String> parseFlags(String[] args) {
        Map<String, String> flags = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                usage("unexpected argument " + args[i]);
            }
            if (i + 1 >= args.length) {
                usage(args[i] + " needs a value");
            }
            flags.put(args[i].substring(2), args[++i]);
        }
        return flags;
    }

    private static String required(Map<String, String> flags, String name) {
        String value = flags.get(name);
        if (value == null) {
            usage("--" + name + " is required");
        }
        return value;
    }

    private static long number(Map<String, String> flags, String name, long fallback) {
        String value = flags.get(name);
        if (value == null) {
            return fallback;
        }
        try {
            return Long.parseLong(value);
        } catch (NumberFormatException e) {
            usage("--" + name + " must be a number, not " + value);
            return fallback;
        }
    }

    private static void usage(String message) {
        System.err.println("java-peer: " + message);
        System.err.println("usage: consume --stream S --app A --endpoint URL --ddb-endpoint URL [--worker-id W]"
                + " [--out FILE] [--lease-duration-ms MS] [--expect N] [--idle-exit SECS] [--region R]");
        System.err.println("       produce --stream S --endpoint https://HOST:PORT [--records N] [--size BYTES]"
                + " [--keys K] [--rate R] [--region R]");
        System.exit(EXIT_USAGE);
    }

    private static StaticCredentialsProvider credentials() {
        String key = System.getenv().getOrDefault("AWS_ACCESS_KEY_ID", "test");
        String secret = System.getenv().getOrDefault("AWS_SECRET_ACCESS_KEY", "test");
        return StaticCredentialsProvider.create(AwsBasicCredentials.create(key, secret));
    }

    private static String json(Map<String, Object> fields) {
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Object> field : fields.entrySet()) {
            if (out.length() > 1) {
                out.append(", ");
            }
            out.append('"').append(field.getKey()).append("\": ");
            Object value = field.getValue();
            if (value instanceof Number || value instanceof Boolean) {
                out.append(value);
            } else {
                appendString(out, String.valueOf(value));
            }
        }
        return out.append('}').toString();
    }

    private static void appendString(StringBuilder out, String text) {
        out.append('"');
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            switch (c) {
                case '"' -> out.append("\\\"");
                case '\\' -> out.append("\\\\");
                default -> {
                    if (c < 0x20) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
                }
            }
        }
        out.append('"');
    }

    /** The {@code (key, n)} of a {@code produce} payload, or null when the header is malformed. */
    private static Object[] parsePayload(ByteBuffer data) {
        byte[] bytes = new byte[Math.min(data.remaining(), 64)];
        data.duplicate().get(bytes);
        String head = new String(bytes, StandardCharsets.US_ASCII);
        int first = head.indexOf(' ');
        int second = first < 0 ? -1 : head.indexOf(' ', first + 1);
        if (first <= 0 || second < 0) {
            return null;
        }
        try {
            return new Object[] {head.substring(0, first), Long.parseLong(head.substring(first + 1, second))};
        } catch (NumberFormatException e) {
            return null;
        }
    }

    // ---- consume: a Java KCL worker ------------------------------------------------------------

    /** What this worker saw, shared by its shard processors. */
    private static final class Tally {
        long records;
        long duplicates;
        long orderViolations;
        long badHeaders;
        long shardsFinished;
        final Set<String> seen = new HashSet<>();
        final Map<String, Long> lastN = new HashMap<>();
        long lastNewRecordNanos = System.nanoTime();
        BufferedWriter out;

        synchronized void record(String shard, String worker, KinesisClientRecord record, long tsMs) {
            records++;
            Object[] parsed = parsePayload(record.data());
            if (parsed == null) {
                badHeaders++;
                return;
            }
            String key = (String) parsed[0];
            long n = (Long) parsed[1];
            if (!seen.add(key + " " + n)) {
                duplicates++;
            } else {
                lastNewRecordNanos = System.nanoTime();
                long last = lastN.getOrDefault(key, n);
                if (n < last) {
                    orderViolations++;
                }
                lastN.put(key, Math.max(last, n));
            }
            if (out != null) {
                Map<String, Object> line = new LinkedHashMap<>();
                line.put("key", key);
                line.put("n", n);
                line.put("shard", shard);
                line.put("seq", record.sequenceNumber());
                line.put("sub", record.subSequenceNumber());
                line.put("worker", worker);
                line.put("ts_ms", tsMs);
                try {
                    out.write(json(line));
                    out.write('\n');
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }
        }

        synchronized void flush() {
            if (out != null) {
                try {
                    out.flush();
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }
        }

        synchronized int unique() {
            return seen.size();
        }
    }

    private static final class Checker implements ShardRecordProcessor {
        private final Tally tally;
        private final String worker;
        private String shard = "?";

        Checker(Tally tally, String worker) {
            this.tally = tally;
            this.worker = worker;
        }

        @Override
        public void initialize(InitializationInput input) {
            shard = input.shardId();
        }

        @Override
        public void processRecords(ProcessRecordsInput input) {
            long tsMs = System.currentTimeMillis();
            for (KinesisClientRecord record : input.records()) {
                tally.record(shard, worker, record, tsMs);
            }
            tally.flush();
            checkpoint(input.checkpointer());
        }

        @Override
        public void leaseLost(LeaseLostInput input) {}

        @Override
        public void shardEnded(ShardEndedInput input) {
            checkpoint(input.checkpointer());
            synchronized (tally) {
                tally.shardsFinished++;
            }
        }

        @Override
        public void shutdownRequested(ShutdownRequestedInput input) {
            checkpoint(input.checkpointer());
        }

        private void checkpoint(RecordProcessorCheckpointer checkpointer) {
            try {
                checkpointer.checkpoint();
            } catch (ShutdownException e) {
                System.err.println("java-peer: checkpoint on " + shard + " refused, lease lost: " + e.getMessage());
            } catch (Exception e) {
                System.err.println("java-peer: checkpoint on " + shard + " failed: " + e);
            }
        }
    }

    private static int consume(Map<String, String> flags) throws Exception {
        String stream = required(flags, "stream");
        String app = required(flags, "app");
        String endpoint = required(flags, "endpoint");
        String ddbEndpoint = required(flags, "ddb-endpoint");
        String worker = flags.getOrDefault("worker-id", "java-" + UUID.randomUUID());
        Region region = Region.of(flags.getOrDefault("region", "us-east-1"));
        long leaseDurationMs = number(flags, "lease-duration-ms", 10_000);
        long expect = number(flags, "expect", 0);
        long idleExitSecs = number(flags, "idle-exit", 0);

        Tally tally = new Tally();
        if (flags.containsKey("out")) {
            tally.out = new BufferedWriter(new FileWriter(flags.get("out"), StandardCharsets.UTF_8, true));
        }
        KinesisAsyncClient kinesis = KinesisAsyncClient.builder()
                .endpointOverride(URI.create(endpoint))
                .region(region)
                .credentialsProvider(credentials())
                .httpClientBuilder(NettyNioAsyncHttpClient.builder().protocol(Protocol.HTTP1_1))
                .build();
        DynamoDbAsyncClient dynamo = DynamoDbAsyncClient.builder()
                .endpointOverride(URI.create(ddbEndpoint))
                .region(region)
                .credentialsProvider(credentials())
                .build();
        // Never called: metrics go to the NullMetricsFactory. The KCL's builder needs a client.
        CloudWatchAsyncClient cloudWatch = CloudWatchAsyncClient.builder()
                .endpointOverride(URI.create("http://127.0.0.1:9"))
                .region(region)
                .credentialsProvider(credentials())
                .build();
        InitialPositionInStreamExtended trimHorizon =
                InitialPositionInStreamExtended.newInitialPosition(InitialPositionInStream.TRIM_HORIZON);
        ConfigsBuilder configs = new ConfigsBuilder(
                new SingleStreamTracker(stream, trimHorizon),
                app,
                kinesis,
                dynamo,
                cloudWatch,
                worker,
                () -> new Checker(tally, worker));
        Scheduler scheduler = new Scheduler(
                configs.checkpointConfig(),
                configs.coordinatorConfig(),
                configs.leaseManagementConfig().failoverTimeMillis(leaseDurationMs),
                configs.lifecycleConfig(),
                configs.metricsConfig().metricsFactory(new NullMetricsFactory()),
                configs.processorConfig(),
                configs.retrievalConfig()
                        .retrievalSpecificConfig(new PollingConfig(stream, kinesis).idleTimeBetweenReadsInMillis(200)));

        long started = System.nanoTime();
        AtomicBoolean stopping = new AtomicBoolean();
        CountDownLatch stopped = new CountDownLatch(1);
        Runnable stop = () -> {
            if (!stopping.compareAndSet(false, true)) {
                return;
            }
            try {
                Future<Boolean> graceful = scheduler.startGracefulShutdown();
                boolean clean = graceful.get(60, TimeUnit.SECONDS);
                System.err.println("java-peer: graceful shutdown " + (clean ? "finished" : "did not finish"));
            } catch (Exception e) {
                System.err.println("java-peer: graceful shutdown failed: " + e);
            }
            tally.flush();
            Map<String, Object> summary = new LinkedHashMap<>();
            synchronized (tally) {
                summary.put("records", tally.records);
                summary.put("unique", tally.seen.size());
                summary.put("duplicates", tally.duplicates);
                summary.put("order_violations", tally.orderViolations);
                summary.put("shards_finished", tally.shardsFinished);
                summary.put("bad_headers", tally.badHeaders);
            }
            summary.put("elapsed_s", Math.round((System.nanoTime() - started) / 1e6) / 1000.0);
            System.out.println(json(summary));
            System.out.flush();
            stopped.countDown();
        };
        // SIGTERM (and Ctrl-C) run the hook: a graceful shutdown, as `consume` does.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            stop.run();
            try {
                stopped.await(70, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }));
        Thread schedulerThread = new Thread(scheduler, "kcl-scheduler");
        schedulerThread.setDaemon(true);
        schedulerThread.start();

        long lastReport = System.nanoTime();
        while (!stopping.get()) {
            Thread.sleep(200);
            long now = System.nanoTime();
            int unique = tally.unique();
            boolean done = expect > 0 && unique >= expect;
            long idleNanos;
            synchronized (tally) {
                idleNanos = now - tally.lastNewRecordNanos;
            }
            boolean idle = idleExitSecs > 0 && idleNanos >= TimeUnit.SECONDS.toNanos(idleExitSecs);
            if (done || idle) {
                stop.run();
                break;
            }
            if (now - lastReport >= TimeUnit.SECONDS.toNanos(2)) {
                System.err.println("java-peer: " + worker + " unique " + unique);
                lastReport = now;
            }
        }
        stopped.await();
        synchronized (tally) {
            return tally.orderViolations > 0 || tally.badHeaders > 0 ? EXIT_FAILED : 0;
        }
    }

    // ---- produce: the KPL ----------------------------------------------------------------------

    private static int produce(Map<String, String> flags) throws Exception {
        String stream = required(flags, "stream");
        URI endpoint = URI.create(required(flags, "endpoint"));
        long records = number(flags, "records", 10_000);
        int size = (int) number(flags, "size", 100);
        long keys = Math.max(1, number(flags, "keys", 100));
        long rate = number(flags, "rate", 0);
        String region = flags.getOrDefault("region", "us-east-1");
        if (!"https".equals(endpoint.getScheme()) || endpoint.getPort() < 0) {
            usage("--endpoint must be https://HOST:PORT (the KPL speaks TLS only)");
        }

        KinesisProducerConfiguration config = new KinesisProducerConfiguration()
                .setRegion(region)
                .setKinesisEndpoint(endpoint.getHost())
                .setKinesisPort(endpoint.getPort())
                .setVerifyCertificate(false)
                .setCredentialsProvider(credentials())
                .setMetricsLevel("none")
                .setLogLevel("warning")
                .setAggregationEnabled(true);
        if (flags.containsKey("temp-dir")) {
            config.setTempDirectory(flags.get("temp-dir"));
        }
        KinesisProducer producer = new KinesisProducer(config);
        AtomicLong delivered = new AtomicLong();
        AtomicLong failed = new AtomicLong();
        AtomicLong retries = new AtomicLong();
        List<String> firstErrors = new ArrayList<>();
        long[] counters = new long[(int) Math.min(keys, Integer.MAX_VALUE)];
        long started = System.nanoTime();
        CountDownLatch outstanding = new CountDownLatch((int) records);
        for (long i = 0; i < records; i++) {
            if (rate > 0) {
                long due = started + (long) (i * 1e9 / rate);
                long wait = due - System.nanoTime();
                if (wait > 0) {
                    TimeUnit.NANOSECONDS.sleep(wait);
                }
            }
            int k = (int) (i % keys);
            String key = "k" + k;
            long n = counters[k]++;
            byte[] header = (key + " " + n + " ").getBytes(StandardCharsets.US_ASCII);
            byte[] data = new byte[Math.max(size, header.length)];
            Arrays.fill(data, (byte) '.');
            System.arraycopy(header, 0, data, 0, header.length);
            // The KPL's own buffer is unbounded; keep it near what `produce` buffers.
            while (producer.getOutstandingRecordsCount() > 200_000) {
                Thread.sleep(1);
            }
            ListenableFuture<UserRecordResult> result = producer.addUserRecord(stream, key, ByteBuffer.wrap(data));
            Futures.addCallback(
                    result,
                    new FutureCallback<>() {
                        @Override
                        public void onSuccess(UserRecordResult r) {
                            delivered.incrementAndGet();
                            retries.addAndGet(Math.max(0, r.getAttempts().size() - 1));
                            outstanding.countDown();
                        }

                        @Override
                        public void onFailure(Throwable t) {
                            failed.incrementAndGet();
                            if (t instanceof UserRecordFailedException e) {
                                retries.addAndGet(Math.max(0, e.getResult().getAttempts().size() - 1));
                            }
                            synchronized (firstErrors) {
                                if (firstErrors.size() < 5) {
                                    firstErrors.add(String.valueOf(t));
                                }
                            }
                            outstanding.countDown();
                        }
                    },
                    MoreExecutors.directExecutor());
        }
        producer.flushSync();
        outstanding.await(5, TimeUnit.MINUTES);
        double elapsed = (System.nanoTime() - started) / 1e9;
        producer.destroy();
        for (String error : firstErrors) {
            System.err.println("java-peer: record failed: " + error);
        }
        Map<String, Object> summary = new LinkedHashMap<>();
        summary.put("sent", records);
        summary.put("delivered", delivered.get());
        summary.put("failed", failed.get());
        summary.put("retries", retries.get());
        summary.put("elapsed_s", Math.round(elapsed * 1000) / 1000.0);
        summary.put("records_per_s", Math.round(delivered.get() / Math.max(elapsed, 1e-9)));
        System.out.println(json(summary));
        return failed.get() > 0 ? EXIT_FAILED : 0;
    }
}
