#!/usr/bin/env node
// KafkaJS driver for Sluice's end-to-end tests.
//
// Reads one JSON document from stdin:
//   { "bootstrap": "127.0.0.1:9092", "steps": [ { "op": "...", ... }, ... ],
//     "ssl": {"caFile": "ca.pem"} (optional), "sasl": {mechanism, username, password} (optional) }
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
// Consumer groups:
//   groupConsume    {groupId, topic, consumers:N, partitions:P, expect:count,
//                    produce:[messages] (sent once the N members together own all P partitions),
//                    timeoutMs, sessionTimeout, heartbeatInterval, fromBeginning}
//                   runs N group members (run/eachMessage) in this process until `expect`
//                   records arrived, lets the per-batch auto-commit finish, disconnects them;
//                   -> {records:[{consumer,partition,offset,key,value}], assignments:[...], joins:[...]}
//   listGroups      {}                      -> {groups:[{groupId,protocolType}]}
//   describeGroups  {groupIds:[...]}        -> {groups:[{groupId,state,protocol,protocolType,errorCode,
//                                                members:[{memberId,clientId,clientHost,assignment:{topic:[p]}}]}]}
//   fetchOffsets    {groupId, topics:[...]} -> {topics:[{topic,partitions:[{partition,offset,metadata}]}]}
//   deleteGroups    {groupIds:[...]}        -> {results:[{groupId,errorCode}]}
//   resetOffsets    {groupId, topic, earliest}
//   setOffsets      {groupId, topic, partitions:[{partition,offset}]}
// Transactions:
//   transaction     {transactionalId, topic, messages:[{key,value,partition}], commit:bool,
//                    offsets:{groupId, topic, partitions:[{partition,offset}]}}
//                   one transaction of a transactional producer: sends the messages (and the
//                   group's offsets), then commits or aborts -> {committed, records:[...]}
"use strict";

const { Kafka, CompressionTypes, ConfigResourceTypes, AssignerProtocol, logLevel } = require("kafkajs");

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
    // KafkaJSDeleteGroupsError: the per-group failures.
    groups: Array.isArray(e.groups)
      ? e.groups.map((g) => ({ groupId: g.groupId, errorCode: g.errorCode, type: g.error ? g.error.type : null }))
      : undefined,
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
    ...(input.ssl ? { ssl: { ca: [require("fs").readFileSync(input.ssl.caFile, "utf8")] } } : {}),
    ...(input.sasl ? { sasl: input.sasl } : {}),
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
      results.push(await runStep(step, admin, getProducer, kafka));
    } catch (e) {
      results.push({ error: errorInfo(e) });
    }
  }
  for (const p of Object.values(producers)) await p.disconnect();
  await admin.disconnect();
  process.stdout.write(JSON.stringify({ results }) + "\n");
}

async function runStep(step, admin, getProducer, kafka) {
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
    case "groupConsume":
      return await groupConsume(step, kafka, getProducer);
    case "transaction":
      return await transaction(step, kafka);
    case "listGroups": {
      const { groups } = await admin.listGroups();
      return { groups: groups.sort((a, b) => (a.groupId < b.groupId ? -1 : 1)) };
    }
    case "describeGroups": {
      const { groups } = await admin.describeGroups(step.groupIds);
      return {
        groups: groups.map((g) => ({
          groupId: g.groupId,
          errorCode: g.errorCode,
          state: g.state,
          protocol: g.protocol,
          protocolType: g.protocolType,
          members: g.members.map((m) => ({
            memberId: m.memberId,
            clientId: m.clientId,
            clientHost: m.clientHost,
            assignment: decodeAssignment(m.memberAssignment),
          })),
        })),
      };
    }
    case "fetchOffsets": {
      const offs = await admin.fetchOffsets({ groupId: step.groupId, topics: step.topics });
      return {
        topics: offs.map((t) => ({
          topic: t.topic,
          partitions: t.partitions
            .map((p) => ({ partition: p.partition, offset: String(p.offset), metadata: p.metadata }))
            .sort((a, b) => a.partition - b.partition),
        })),
      };
    }
    case "deleteGroups": {
      const res = await admin.deleteGroups(step.groupIds);
      return { results: res.map((r) => ({ groupId: r.groupId, errorCode: r.errorCode })) };
    }
    case "resetOffsets":
      await admin.resetOffsets({ groupId: step.groupId, topic: step.topic, earliest: !!step.earliest });
      return { ok: true };
    case "setOffsets":
      await admin.setOffsets({ groupId: step.groupId, topic: step.topic, partitions: step.partitions });
      return { ok: true };
    default:
      throw new Error(`unknown op ${step.op}`);
  }
}

async function transaction(step, kafka) {
  const producer = kafka.producer({ transactionalId: step.transactionalId, idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  try {
    const txn = await producer.transaction();
    try {
      const meta = await txn.send({ topic: step.topic, acks: -1, messages: step.messages });
      if (step.offsets) {
        await txn.sendOffsets({
          consumerGroupId: step.offsets.groupId,
          topics: [{ topic: step.offsets.topic, partitions: step.offsets.partitions.map((p) => ({ partition: p.partition, offset: String(p.offset) })) }],
        });
      }
      if (step.commit) await txn.commit();
      else await txn.abort();
      return {
        committed: !!step.commit,
        records: meta.map((r) => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: r.baseOffset })),
      };
    } catch (e) {
      if (txn.isActive()) await txn.abort();
      throw e;
    }
  } finally {
    await producer.disconnect();
  }
}

function decodeAssignment(buf) {
  if (!buf || buf.length === 0) return {};
  const a = AssignerProtocol.MemberAssignment.decode(buf);
  return a ? a.assignment : {};
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function groupConsume(step, kafka, getProducer) {
  const n = step.consumers || 1;
  const timeoutMs = step.timeoutMs || 60000;
  const deadline = Date.now() + timeoutMs;
  const records = [];
  const joins = [];
  const current = new Array(n).fill(null);
  const crashes = [];
  const consumers = [];
  for (let i = 0; i < n; i++) {
    const c = kafka.consumer({
      groupId: step.groupId,
      sessionTimeout: step.sessionTimeout || 10000,
      heartbeatInterval: step.heartbeatInterval || 500,
      rebalanceTimeout: step.rebalanceTimeout || 20000,
      maxWaitTimeInMs: 200,
      retry: { retries: 10, initialRetryTime: 100 },
    });
    c.on(c.events.GROUP_JOIN, (e) => {
      current[i] = { memberId: e.payload.memberId, isLeader: e.payload.isLeader, assignment: e.payload.memberAssignment };
      joins.push({ consumer: i, ...current[i], groupProtocol: e.payload.groupProtocol });
    });
    c.on(c.events.CRASH, (e) => crashes.push({ consumer: i, error: errorInfo(e.payload.error) }));
    consumers.push(c);
  }
  const stopAll = async () => {
    for (const c of consumers) {
      try {
        await c.disconnect();
      } catch (e) {
        crashes.push({ disconnect: errorInfo(e) });
      }
    }
  };
  try {
    await Promise.all(consumers.map((c) => c.connect()));
    await Promise.all(consumers.map((c) => c.subscribe({ topics: [step.topic], fromBeginning: step.fromBeginning !== false })));
    await Promise.all(
      consumers.map((c, i) =>
        c.run({
          eachMessage: async ({ partition, message }) => {
            records.push({
              consumer: i,
              partition,
              offset: message.offset,
              key: message.key === null ? null : message.key.toString(),
              value: message.value === null ? null : message.value.toString(),
            });
          },
        })
      )
    );
    // Wait until the members own every partition between them, each at least one.
    const owned = () => {
      const all = [];
      for (const a of current) {
        if (!a || !a.assignment[step.topic] || a.assignment[step.topic].length === 0) return null;
        all.push(...a.assignment[step.topic]);
      }
      return all;
    };
    while (true) {
      const all = owned();
      if (all && all.length === (step.partitions || all.length) && new Set(all).size === all.length) break;
      if (Date.now() > deadline) throw new Error(`group never settled: ${JSON.stringify(current)}`);
      await sleep(50);
    }
    const settled = current.map((a, i) => ({ consumer: i, memberId: a.memberId, isLeader: a.isLeader, assignment: a.assignment }));
    if (step.produce) {
      const producer = await getProducer(true);
      await producer.send({ topic: step.topic, acks: -1, messages: step.produce });
    }
    while (records.length < (step.expect || 0)) {
      if (Date.now() > deadline) break;
      await sleep(50);
    }
    // Let the commit that follows each batch go out, and any stray duplicates arrive.
    await sleep(step.settleMs || 1000);
    await stopAll();
    return { records, assignments: settled, joins, crashes };
  } catch (e) {
    await stopAll();
    return { error: errorInfo(e), records, joins, crashes };
  }
}

main().catch((e) => {
  process.stderr.write(`kafkajs_client fatal: ${e && e.stack ? e.stack : e}\n`);
  process.stdout.write(JSON.stringify({ fatal: errorInfo(e) }) + "\n");
  process.exit(1);
});
