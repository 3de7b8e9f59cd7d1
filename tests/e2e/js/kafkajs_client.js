#!/usr/bin/env node
// KafkaJS driver for Sluice's end-to-end tests.
//
// Reads one JSON document from stdin:
//   { "bootstrap": "127.0.0.1:9092", "steps": [ { "op": "...", ... }, ... ] }
// runs the steps in order with one KafkaJS admin client and one producer, and
// prints one JSON line on stdout:
//   { "results": [ <result or {"error": {...}} per step> ] }
// The Python tests assert on that output. Logs go to stderr only.
//
// Ops:
//   createTopics    {topics:[{topic,numPartitions,configEntries:[{name,value}]}], validateOnly}
//   listTopics      {}
//   fetchTopicMetadata {topics:[name]}
//   fetchTopicOffsets  {topic}
//   fetchTopicOffsetsByTimestamp {topic, timestamp}
//   describeConfigs {topic, configNames}
//   alterConfigs    {topic, configEntries:[{name,value}]}
//   createPartitions {topic, count}
//   deleteTopics    {topics:[name]}
//   produce         {topic, compression:"gzip"|"none", idempotent, acks,
//                    messages:[{key,value,partition,headers:{k:v},timestamp}]}
"use strict";

const { Kafka, CompressionTypes, ConfigResourceTypes, logLevel } = require("kafkajs");

function stderrLogCreator() {
  return ({ namespace, level, label, log }) => {
    const { message, ...extra } = log;
    process.stderr.write(`[kafkajs ${label}] ${namespace}: ${message} ${JSON.stringify(extra)}\n`);
  };
}

function errorInfo(e, depth = 0) {
  if (!e || depth > 4) return null;
  return {
    name: e.name,
    type: e.type || null,
    code: e.code === undefined ? null : e.code,
    message: e.message,
    retriable: e.retriable === undefined ? null : e.retriable,
    causes: (e.errors || []).map((c) => errorInfo(c, depth + 1)),
    cause: e.cause ? errorInfo(e.cause, depth + 1) : null,
  };
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

async function main() {
  const input = await readStdin();
  const kafka = new Kafka({
    clientId: "sluice-e2e-kafkajs",
    brokers: [input.bootstrap],
    logLevel: logLevel.WARN,
    logCreator: stderrLogCreator,
    connectionTimeout: 5000,
    requestTimeout: 15000,
    retry: { retries: 5, initialRetryTime: 200 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const producers = {};
  const getProducer = async (idempotent) => {
    const k = idempotent ? "idem" : "plain";
    if (!producers[k]) {
      const p = kafka.producer(idempotent ? { idempotent: true, maxInFlightRequests: 1 } : {});
      await p.connect();
      producers[k] = p;
    }
    return producers[k];
  };

  const results = [];
  for (const step of input.steps) {
    try {
      results.push(await runStep(step, admin, getProducer));
    } catch (e) {
      results.push({ error: errorInfo(e) });
    }
  }
  for (const p of Object.values(producers)) await p.disconnect();
  await admin.disconnect();
  process.stdout.write(JSON.stringify({ results }) + "\n");
}

async function runStep(step, admin, getProducer) {
  switch (step.op) {
    case "createTopics": {
      const created = await admin.createTopics({
        topics: step.topics,
        validateOnly: !!step.validateOnly,
        waitForLeaders: !step.validateOnly,
        timeout: 10000,
      });
      return { created };
    }
    case "listTopics":
      return { topics: (await admin.listTopics()).sort() };
    case "fetchTopicMetadata": {
      const md = await admin.fetchTopicMetadata({ topics: step.topics });
      return {
        topics: md.topics.map((t) => ({
          name: t.name,
          partitions: t.partitions
            .map((p) => ({
              partitionId: p.partitionId,
              leader: p.leader,
              replicas: p.replicas,
              isr: p.isr,
              partitionErrorCode: p.partitionErrorCode,
            }))
            .sort((a, b) => a.partitionId - b.partitionId),
        })),
      };
    }
    case "fetchTopicOffsets": {
      const offs = await admin.fetchTopicOffsets(step.topic);
      return {
        offsets: offs
          .map((o) => ({ partition: o.partition, offset: o.offset, high: o.high, low: o.low }))
          .sort((a, b) => a.partition - b.partition),
      };
    }
    case "fetchTopicOffsetsByTimestamp": {
      const offs = await admin.fetchTopicOffsetsByTimestamp(step.topic, step.timestamp);
      return { offsets: offs.sort((a, b) => a.partition - b.partition) };
    }
    case "describeConfigs": {
      const res = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [
          { type: ConfigResourceTypes.TOPIC, name: step.topic, configNames: step.configNames || undefined },
        ],
      });
      const r = res.resources[0];
      const configs = {};
      for (const c of r.configEntries) configs[c.configName] = c.configValue;
      return { errorCode: r.errorCode, configs };
    }
    case "alterConfigs": {
      await admin.alterConfigs({
        validateOnly: false,
        resources: [{ type: ConfigResourceTypes.TOPIC, name: step.topic, configEntries: step.configEntries }],
      });
      return { ok: true };
    }
    case "createPartitions": {
      await admin.createPartitions({ topicPartitions: [{ topic: step.topic, count: step.count }] });
      return { ok: true };
    }
    case "deleteTopics": {
      await admin.deleteTopics({ topics: step.topics, timeout: 10000 });
      return { ok: true };
    }
    case "produce": {
      const producer = await getProducer(!!step.idempotent);
      const compression = step.compression === "gzip" ? CompressionTypes.GZIP : CompressionTypes.None;
      const messages = step.messages.map((m) => {
        const msg = { key: m.key === null ? null : m.key, value: m.value === null ? null : m.value };
        if (m.partition !== undefined) msg.partition = m.partition;
        if (m.headers) msg.headers = m.headers;
        if (m.timestamp !== undefined) msg.timestamp = String(m.timestamp);
        return msg;
      });
      const meta = await producer.send({
        topic: step.topic,
        compression,
        acks: step.acks === undefined ? -1 : step.acks,
        messages,
      });
      return {
        records: meta
          .map((r) => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: r.baseOffset }))
          .sort((a, b) => a.partition - b.partition),
      };
    }
    default:
      throw new Error(`unknown op ${step.op}`);
  }
}

main().catch((e) => {
  process.stderr.write(`kafkajs_client fatal: ${e && e.stack ? e.stack : e}\n`);
  process.stdout.write(JSON.stringify({ fatal: errorInfo(e) }) + "\n");
  process.exit(1);
});
