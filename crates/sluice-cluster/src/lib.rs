//! Cluster mode: brokers that keep no state of their own, sharing one
//! metadata store and one object store.
//!
//! Every broker holds a lease in the metadata store, renewed by heartbeat.
//! The holder of the `controller` lease assigns a leader to every partition
//! and group-coordinator shard ([`plan`]): it reassigns the slots of brokers
//! whose lease lapsed, asks draining brokers to hand theirs over, and evens
//! out the load when brokers join. Each change bumps the slot's leader epoch,
//! and every commit is fenced on that epoch, so a broker that lost a slot can
//! no longer write to it. A broker that cannot renew its lease stops serving
//! writes before the lease can lapse on the store's clock.
//!
//! A single broker on SQLite runs the same code: it is its own controller.

pub mod plan;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use sluice_groups::Coordinator;
use sluice_log::Log;
use sluice_meta::{group_shard, BrokerRegistration, BrokerRow, Leadership, MetaStore, Slot};
use tokio::sync::watch;

pub use plan::{plan, Action};

const CONTROLLER_LEASE: &str = "controller";

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: i32,
    /// Where clients reach this broker's Kafka listener.
    pub host: String,
    pub port: i32,
    /// This broker's HTTP address, shown in the cluster status.
    pub http: String,
    /// Every Kafka listener it advertises (`PROTOCOL://host:port,...`), for Metadata.
    pub listeners: String,
    /// How long a broker's (and the controller's) lease runs without renewal.
    pub lease: Duration,
    /// How often brokers look for changes, and the controller plans.
    pub poll_interval: Duration,
    /// How long a leader may take to hand a slot over before the controller forces it.
    pub handoff_timeout: Duration,
    /// How long SIGTERM waits for this broker's slots to move away.
    pub drain_timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            node_id: 0,
            host: "127.0.0.1".into(),
            port: 9092,
            http: String::new(),
            listeners: String::new(),
            lease: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            handoff_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ClusterOptions {
    fn registration(&self) -> BrokerRegistration<'_> {
        BrokerRegistration {
            node_id: self.node_id,
            host: &self.host,
            port: self.port,
            http: &self.http,
            listeners: &self.listeners,
        }
    }
}

/// What this broker last read of the cluster.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub topology_version: i64,
    pub brokers: Vec<BrokerRow>,
    pub leaders: HashMap<Slot, Leadership>,
    pub controller: Option<i32>,
}

impl View {
    pub fn broker(&self, id: i32) -> Option<&BrokerRow> {
        self.brokers.iter().find(|b| b.node_id == id && b.alive)
    }

    /// The live leader of a slot and its epoch.
    pub fn leader(&self, slot: Slot) -> Option<(i32, i32)> {
        let l = self.leaders.get(&slot)?;
        self.broker(l.leader).map(|_| (l.leader, l.epoch))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokerStatus {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub http: String,
    pub alive: bool,
    pub draining: bool,
    pub lease_expires_ms: i64,
    pub partitions: usize,
    pub group_shards: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub topic: String,
    pub partition: i32,
    pub leader: i32,
    pub epoch: i32,
    pub next_leader: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: i32,
    pub controller: Option<i32>,
    pub controller_epoch: Option<i64>,
    pub topology_version: i64,
    pub brokers: Vec<BrokerStatus>,
    pub partitions: Vec<SlotStatus>,
    /// Leader of each group-coordinator shard, by shard.
    pub group_shards: Vec<SlotStatus>,
}

/// This broker's part in the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    meta: MetaStore,
    log: Log,
    groups: Coordinator,
    opts: ClusterOptions,
    view: RwLock<Arc<View>>,
    /// When this broker last had its lease renewed (the time the renewal was sent).
    renewed: std::sync::Mutex<Instant>,
    is_controller: AtomicBool,
    stopping: AtomicBool,
    /// Bumped after every refresh of the view, for waiters.
    refreshed: watch::Sender<u64>,
}

impl Cluster {
    /// Registers this broker, re-claims what it led before (under new epochs,
    /// fencing any earlier incarnation), and starts the heartbeat, refresh and
    /// controller loops.
    pub async fn start(meta: MetaStore, log: Log, groups: Coordinator, opts: ClusterOptions) -> Result<Self> {
        let lease_ms = opts.lease.as_millis() as i64;
        let sent = Instant::now();
        meta.register_broker(&opts.registration(), lease_ms).await?;
        groups.use_shards();
        let mine: Vec<(Slot, i32, i32)> = meta
            .list_leadership()
            .await?
            .into_iter()
            .filter(|l| l.leader == opts.node_id)
            .map(|l| (l.slot, l.epoch, opts.node_id))
            .collect();
        if !mine.is_empty() {
            meta.set_leaders(&mine).await?;
        }
        let (refreshed, _) = watch::channel(0);
        let cluster = Self {
            inner: Arc::new(Inner {
                meta,
                log,
                groups,
                opts,
                view: RwLock::new(Arc::new(View::default())),
                renewed: std::sync::Mutex::new(sent),
                is_controller: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                refreshed,
            }),
        };
        // One controller round and one refresh before serving, so that a lone
        // broker leads its partitions from the first request.
        controller_round(&cluster.inner, &mut HashMap::new()).await?;
        refresh(&cluster.inner, true).await?;
        tokio::spawn(heartbeat_loop(cluster.inner.clone()));
        tokio::spawn(refresh_loop(cluster.inner.clone()));
        tokio::spawn(controller_loop(cluster.inner.clone()));
        Ok(cluster)
    }

    pub fn node_id(&self) -> i32 {
        self.inner.opts.node_id
    }

    pub fn view(&self) -> Arc<View> {
        self.inner.view.read().unwrap().clone()
    }

    /// Live brokers, this one first if the view has not caught up with it yet.
    pub fn live_brokers(&self) -> Vec<BrokerRow> {
        let view = self.view();
        let mut live: Vec<BrokerRow> = view.brokers.iter().filter(|b| b.alive).cloned().collect();
        if !live.iter().any(|b| b.node_id == self.inner.opts.node_id) {
            let o = &self.inner.opts;
            live.insert(
                0,
                BrokerRow {
                    node_id: o.node_id,
                    host: o.host.clone(),
                    port: o.port,
                    http: o.http.clone(),
                    listeners: o.listeners.clone(),
                    started_ms: 0,
                    lease_expires_ms: 0,
                    draining: false,
                    alive: true,
                },
            );
        }
        live
    }

    /// The broker coordinating `group_id`, if it is alive.
    pub fn group_coordinator(&self, group_id: &str) -> Option<BrokerRow> {
        let view = self.view();
        let (leader, _) = view.leader(Slot::GroupShard(group_shard(group_id)))?;
        view.broker(leader).cloned()
    }

    pub fn controller(&self) -> Option<i32> {
        self.view().controller
    }

    /// Marks a broker as draining: the controller moves everything it leads
    /// to other brokers. False if no such broker is registered.
    pub async fn drain(&self, node_id: i32, draining: bool) -> Result<bool> {
        self.inner.meta.set_draining(node_id, draining).await
    }

    /// Hands everything this broker leads to others, then leaves the cluster.
    /// With no other live broker, flushes and leaves at once.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        let me = inner.opts.node_id;
        inner.meta.set_draining(me, true).await?;
        let deadline = Instant::now() + inner.opts.drain_timeout;
        let mut refreshed = inner.refreshed.subscribe();
        loop {
            let view = self.view();
            let others = view.brokers.iter().any(|b| b.alive && !b.draining && b.node_id != me);
            let leading = view.leaders.values().any(|l| l.leader == me);
            if !leading || !others || Instant::now() >= deadline {
                if leading && others {
                    tracing::warn!("drain timed out; leaving with slots still led");
                }
                break;
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), refreshed.changed()).await;
        }
        inner.stopping.store(true, Ordering::Relaxed);
        // A store that keeps failing (a full disk) must not hold the exit forever: what the
        // journal holds is recovered on the next start, and nothing else was acknowledged.
        if tokio::time::timeout(inner.opts.drain_timeout, inner.log.barrier())
            .await
            .is_err()
        {
            tracing::warn!("flushing before leaving timed out; the journal keeps what is not uploaded");
        }
        inner.meta.release_lease(CONTROLLER_LEASE, me).await?;
        inner.meta.deregister_broker(me).await?;
        tracing::info!("left the cluster");
        Ok(())
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        let meta = &self.inner.meta;
        let brokers = meta.list_brokers().await?;
        let leadership = meta.list_leadership().await?;
        let lease = meta.get_lease(CONTROLLER_LEASE).await?;
        let names: HashMap<uuid::Uuid, String> =
            meta.list_topics().await?.into_iter().map(|t| (t.id, t.name)).collect();
        let count = |id: i32, partitions: bool| {
            leadership
                .iter()
                .filter(|l| l.leader == id && matches!(l.slot, Slot::Partition(..)) == partitions)
                .count()
        };
        let mut partitions = Vec::new();
        let mut shards = Vec::new();
        for l in &leadership {
            let (topic, partition, list) = match l.slot {
                Slot::Partition(t, p) => (
                    names.get(&t).cloned().unwrap_or_else(|| t.to_string()),
                    p,
                    &mut partitions,
                ),
                Slot::GroupShard(s) => (String::new(), s, &mut shards),
            };
            list.push(SlotStatus {
                topic,
                partition,
                leader: l.leader,
                epoch: l.epoch,
                next_leader: l.next_leader,
            });
        }
        partitions.sort_by(|a: &SlotStatus, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let live_lease = lease.filter(|l| l.alive);
        Ok(ClusterStatus {
            node_id: self.inner.opts.node_id,
            controller: live_lease.as_ref().map(|l| l.holder),
            controller_epoch: live_lease.map(|l| l.epoch),
            topology_version: meta.topology_version().await?,
            brokers: brokers
                .iter()
                .map(|b| BrokerStatus {
                    node_id: b.node_id,
                    host: b.host.clone(),
                    port: b.port,
                    http: b.http.clone(),
                    alive: b.alive,
                    draining: b.draining,
                    lease_expires_ms: b.lease_expires_ms,
                    partitions: count(b.node_id, true),
                    group_shards: count(b.node_id, false),
                })
                .collect(),
            partitions,
            group_shards: shards,
        })
    }
}

/// Renews this broker's lease, and suspends writes when renewal has failed
/// for long enough that the lease might lapse on the store's clock.
async fn heartbeat_loop(inner: Arc<Inner>) {
    let o = &inner.opts;
    let lease_ms = o.lease.as_millis() as i64;
    let every = o.lease / 5;
    // Stop writing with a margin: the store's lease ends no sooner than `lease`
    // after the last renewal was sent.
    let safe = o.lease.mul_f64(0.75);
    loop {
        tokio::time::sleep(every).await;
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let sent = Instant::now();
        match tokio::time::timeout(every, inner.meta.renew_broker(o.node_id, lease_ms)).await {
            Ok(Ok(true)) => *inner.renewed.lock().unwrap() = sent,
            Ok(Ok(false)) => {
                // Deregistered (say, after a drain): come back as a new member.
                if inner.meta.register_broker(&o.registration(), lease_ms).await.is_ok() {
                    *inner.renewed.lock().unwrap() = sent;
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "renewing broker lease"),
            Err(_) => tracing::warn!("renewing broker lease timed out"),
        }
        check_lease(&inner, safe);
    }
}

fn check_lease(inner: &Inner, safe: Duration) {
    let stale = inner.renewed.lock().unwrap().elapsed() >= safe;
    if stale != inner.log.is_suspended() {
        if stale {
            tracing::warn!("broker lease not renewed in time; suspending writes");
            // Group state is re-read from the store when the shards are taken again.
            for shard in inner.groups.owned_shards().unwrap_or_default() {
                inner.groups.release_shard(shard);
            }
        } else {
            tracing::info!("broker lease renewed; resuming writes");
        }
        inner.log.set_suspended(stale);
    }
}

async fn refresh_loop(inner: Arc<Inner>) {
    let safe = inner.opts.lease.mul_f64(0.75);
    loop {
        tokio::time::sleep(inner.opts.poll_interval).await;
        // After a pause (SIGSTOP, a long GC), check the lease before anything else.
        check_lease(&inner, safe);
        if let Err(e) = refresh(&inner, false).await {
            tracing::warn!(error = %format!("{e:#}"), "refreshing cluster view");
        }
    }
}

/// Reads brokers (every time: leases lapse without a topology change) and,
/// when the topology changed, topics and leaders; then applies what this
/// broker should lead.
async fn refresh(inner: &Arc<Inner>, force: bool) -> Result<()> {
    let meta = &inner.meta;
    let version = meta.topology_version().await?;
    let brokers = meta.list_brokers().await?;
    let controller = meta
        .get_lease(CONTROLLER_LEASE)
        .await?
        .filter(|l| l.alive)
        .map(|l| l.holder);
    let old = inner.view.read().unwrap().clone();
    let changed = force || version != old.topology_version;
    let leaders = if changed {
        inner.log.refresh_topics().await?;
        meta.list_leadership().await?.into_iter().map(|l| (l.slot, l)).collect()
    } else {
        old.leaders.clone()
    };
    let view = Arc::new(View {
        topology_version: version,
        brokers,
        leaders,
        controller,
    });
    *inner.view.write().unwrap() = view.clone();
    update_placement(inner, &view);
    if !inner.log.is_suspended() && !inner.stopping.load(Ordering::Relaxed) {
        apply(inner, &view).await?;
    }
    inner.refreshed.send_modify(|n| *n += 1);
    Ok(())
}

/// New partitions go to live, non-draining brokers, least loaded first.
fn update_placement(inner: &Inner, view: &View) {
    let mut load: HashMap<i32, usize> = view
        .brokers
        .iter()
        .filter(|b| b.alive && !b.draining)
        .map(|b| (b.node_id, 0))
        .collect();
    for l in view.leaders.values() {
        if let (Slot::Partition(..), Some(n)) = (l.slot, load.get_mut(&l.leader)) {
            *n += 1;
        }
    }
    let mut order: Vec<(usize, i32)> = load.into_iter().map(|(b, n)| (n, b)).collect();
    order.sort_unstable();
    inner.log.set_placement(order.into_iter().map(|(_, b)| b).collect());
}

/// Makes the log and the group coordinator match what the view says this
/// broker leads; hands over what the controller asked to move.
async fn apply(inner: &Inner, view: &View) -> Result<()> {
    let me = inner.opts.node_id;
    let mut take = Vec::new();
    let mut hand_over = Vec::new();
    let mut mine: HashSet<(uuid::Uuid, i32)> = HashSet::new();
    let mut shards_mine = HashSet::new();
    for l in view.leaders.values().filter(|l| l.leader == me) {
        match l.slot {
            Slot::Partition(t, p) if l.next_leader < 0 => {
                mine.insert((t, p));
                take.push((t, p, l.epoch));
            }
            Slot::GroupShard(s) if l.next_leader < 0 => {
                shards_mine.insert(s);
            }
            _ => hand_over.push(l.clone()),
        }
    }
    for (t, p, _) in inner.log.led_partitions() {
        if !mine.contains(&(t, p)) {
            inner.log.release_leadership(t, p);
        }
    }
    let owned: HashSet<i32> = inner.groups.owned_shards().unwrap_or_default().into_iter().collect();
    for s in owned.difference(&shards_mine) {
        inner.groups.release_shard(*s);
    }
    for s in shards_mine.difference(&owned) {
        let n = inner.groups.take_shard(*s).await?;
        tracing::info!(shard = s, groups = n, "coordinating group shard");
    }
    if !take.is_empty() {
        inner.log.take_leadership(&take).await?;
    }
    if !hand_over.is_empty() {
        for l in &hand_over {
            match l.slot {
                Slot::Partition(t, p) => inner.log.release_leadership(t, p),
                Slot::GroupShard(s) => inner.groups.release_shard(s),
            }
        }
        // Everything acknowledged is committed before the successor starts.
        inner.log.barrier().await;
        let moves: Vec<_> = hand_over.iter().map(|l| (l.slot, l.epoch, l.next_leader)).collect();
        let done = inner.meta.set_leaders(&moves).await?;
        tracing::info!(
            handed_over = done.iter().filter(|d| d.is_some()).count(),
            "handed slots to their new leaders"
        );
    }
    Ok(())
}

async fn controller_loop(inner: Arc<Inner>) {
    let mut pending: HashMap<Slot, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(inner.opts.poll_interval).await;
        if inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = controller_round(&inner, &mut pending).await {
            tracing::warn!(error = %format!("{e:#}"), "controller round failed");
        }
    }
}

/// Takes or renews the controller lease; as controller, plans and records one round.
async fn controller_round(inner: &Inner, pending: &mut HashMap<Slot, Instant>) -> Result<()> {
    let o = &inner.opts;
    let me = o.node_id;
    let lease = inner
        .meta
        .acquire_lease(CONTROLLER_LEASE, me, o.lease.as_millis() as i64)
        .await?;
    let was = inner.is_controller.swap(lease.is_some(), Ordering::Relaxed);
    if lease.is_some() != was {
        tracing::info!(controller = lease.is_some(), epoch = ?lease, "controller lease changed");
    }
    inner.log.set_gc(lease.is_some());
    if lease.is_none() || inner.log.is_suspended() {
        pending.clear();
        return Ok(());
    }
    let brokers = inner.meta.list_brokers().await?;
    let leadership = inner.meta.list_leadership().await?;
    let now = Instant::now();
    pending.retain(|slot, _| leadership.iter().any(|l| l.slot == *slot && l.next_leader >= 0));
    for l in leadership.iter().filter(|l| l.next_leader >= 0) {
        pending.entry(l.slot).or_insert(now);
    }
    let actions = plan(&brokers, &leadership, |s| {
        pending
            .get(s)
            .is_some_and(|since| now.duration_since(*since) >= o.handoff_timeout)
    });
    let mut assigns = Vec::new();
    let mut moves = 0;
    for a in actions {
        match a {
            Action::Assign { slot, epoch, to } => assigns.push((slot, epoch, to)),
            Action::Move { slot, epoch, to } => {
                if inner.meta.request_move(slot, epoch, to).await? {
                    moves += 1;
                }
            }
        }
    }
    if !assigns.is_empty() {
        let done = inner.meta.set_leaders(&assigns).await?;
        tracing::info!(
            assigned = done.iter().filter(|d| d.is_some()).count(),
            "controller assigned leaders"
        );
    }
    if moves > 0 {
        tracing::info!(moves, "controller asked leaders to hand slots over");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
