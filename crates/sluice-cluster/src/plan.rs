//! The controller's decisions, as a pure function of what the metadata store
//! says: who leads slots whose leader is gone, what a draining broker hands
//! over, and which moves even out the load. Balanced by slot count per kind
//! (partitions and group shards separately).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sluice_meta::{BrokerRow, Leadership, Slot};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make `to` the leader now: the current leader is gone or did not hand over in time.
    Assign { slot: Slot, epoch: i32, to: i32 },
    /// Ask the live leader to flush and hand the slot to `to`.
    Move { slot: Slot, epoch: i32, to: i32 },
}

/// Who is to lead what while a plan evens out the load: slots per live broker, and
/// their counts per (broker, topic).
struct Spread<'a> {
    owned: BTreeMap<i32, Vec<&'a Leadership>>,
    per_topic: HashMap<(i32, Option<Uuid>), usize>,
}

impl<'a> Spread<'a> {
    fn new(live: &[i32], slots: &[&'a Leadership]) -> Self {
        let mut owned: BTreeMap<i32, Vec<&Leadership>> = live.iter().map(|&b| (b, Vec::new())).collect();
        let mut per_topic = HashMap::new();
        for l in slots {
            if let Some(v) = owned.get_mut(&l.leader) {
                v.push(l);
                *per_topic.entry((l.leader, topic_of(l))).or_default() += 1;
            }
        }
        Self { owned, per_topic }
    }

    fn count(&self, broker: i32, topic: Option<Uuid>) -> usize {
        self.per_topic.get(&(broker, topic)).copied().unwrap_or(0)
    }

    fn total(&self, broker: i32) -> usize {
        self.owned[&broker].len()
    }

    /// The broker with the most by `key` (ties: most in total, then the lowest id).
    fn busiest(&self, key: impl Fn(i32) -> usize) -> i32 {
        *self.owned.keys().max_by_key(|&&b| (key(b), self.total(b), -b)).unwrap()
    }

    /// The broker with the least by `key` (ties: least in total, then the lowest id).
    fn idlest(&self, key: impl Fn(i32) -> usize) -> i32 {
        *self.owned.keys().min_by_key(|&&b| (key(b), self.total(b), b)).unwrap()
    }

    /// Moves one slot of `topic` from `from` to `to`, preferring one this plan has not
    /// moved yet; a slot moved twice gets one action with its final target.
    fn move_one(&mut self, topic: Option<Uuid>, from: i32, to: i32, actions: &mut Vec<Action>) {
        let list = self.owned.get_mut(&from).unwrap();
        let of_topic = |l: &&Leadership| topic_of(l) == topic;
        let i = list
            .iter()
            .position(|l| of_topic(l) && l.leader == from)
            .or_else(|| list.iter().position(of_topic))
            .expect("a broker counted with slots of this topic holds one");
        let l = list.swap_remove(i);
        *self.per_topic.get_mut(&(from, topic)).unwrap() -= 1;
        *self.per_topic.entry((to, topic)).or_default() += 1;
        self.owned.get_mut(&to).unwrap().push(l);
        actions.retain(|a| !matches!(a, Action::Move { slot, .. } if *slot == l.slot));
        if to != l.leader {
            actions.push(Action::Move {
                slot: l.slot,
                epoch: l.epoch,
                to,
            });
        }
    }
}

fn topic_of(l: &Leadership) -> Option<Uuid> {
    match l.slot {
        Slot::Partition(t, _) => Some(t),
        Slot::GroupShard(_) => None,
    }
}

fn same_kind(a: &Slot, partitions: bool) -> bool {
    matches!(a, Slot::Partition(..)) == partitions
}

/// Plans one round. `stuck(slot)` says whether a requested hand-over has
/// waited too long, so the controller should force it.
pub fn plan(brokers: &[BrokerRow], leadership: &[Leadership], stuck: impl Fn(&Slot) -> bool) -> Vec<Action> {
    let alive = |id: i32| brokers.iter().any(|b| b.node_id == id && b.alive);
    let live: Vec<i32> = brokers
        .iter()
        .filter(|b| b.alive && !b.draining)
        .map(|b| b.node_id)
        .collect();
    if live.is_empty() {
        return Vec::new();
    }
    let draining = |id: i32| brokers.iter().any(|b| b.node_id == id && b.draining);
    let mut actions = Vec::new();
    for partitions in [true, false] {
        let slots: Vec<&Leadership> = leadership.iter().filter(|l| same_kind(&l.slot, partitions)).collect();
        // Where each slot is headed, counted per live broker.
        let mut load: BTreeMap<i32, usize> = live.iter().map(|&b| (b, 0)).collect();
        for l in &slots {
            let owner = if l.next_leader >= 0 { l.next_leader } else { l.leader };
            if let Some(n) = load.get_mut(&owner) {
                *n += 1;
            }
        }
        let least = |load: &mut BTreeMap<i32, usize>| {
            let (&b, n) = load.iter_mut().min_by_key(|(b, n)| (**n, **b)).unwrap();
            *n += 1;
            b
        };
        let mut settled = true;
        for l in &slots {
            // The leader is gone, or did not hand over in time: choose the successor now.
            let dead = l.leader < 0 || !alive(l.leader);
            if dead || (l.next_leader >= 0 && stuck(&l.slot)) {
                let to = if live.contains(&l.next_leader) {
                    l.next_leader
                } else {
                    least(&mut load)
                };
                actions.push(Action::Assign {
                    slot: l.slot,
                    epoch: l.epoch,
                    to,
                });
                settled = false;
            } else if l.next_leader >= 0 {
                // A hand-over is under way.
                settled = false;
            } else if draining(l.leader) {
                actions.push(Action::Move {
                    slot: l.slot,
                    epoch: l.epoch,
                    to: least(&mut load),
                });
                settled = false;
            }
        }
        if !settled {
            continue;
        }
        // Even out: first each topic over the live brokers (as Kafka's round-robin placement
        // spreads a topic's traffic), then the totals, until both differ by at most one.
        let mut spread = Spread::new(&live, &slots);
        let topics: BTreeSet<Option<Uuid>> = slots.iter().map(|l| topic_of(l)).collect();
        for &t in &topics {
            loop {
                let from = spread.busiest(|b| spread.count(b, t));
                let to = spread.idlest(|b| spread.count(b, t));
                if spread.count(from, t) < spread.count(to, t) + 2 {
                    break;
                }
                spread.move_one(t, from, to, &mut actions);
            }
        }
        loop {
            let from = spread.busiest(|b| spread.total(b));
            let to = spread.idlest(|b| spread.total(b));
            if spread.total(from) < spread.total(to) + 2 {
                break;
            }
            // Some topic has more slots on `from` than on `to` (else `from` would not hold
            // more in total): moving one of those keeps that topic within one.
            let t = *topics
                .iter()
                .max_by_key(|&&t| spread.count(from, t) as i64 - spread.count(to, t) as i64)
                .unwrap();
            spread.move_one(t, from, to, &mut actions);
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(id: i32, alive: bool, draining: bool) -> BrokerRow {
        BrokerRow {
            node_id: id,
            host: "h".into(),
            port: 9092,
            http: String::new(),
            listeners: String::new(),
            started_ms: 0,
            lease_expires_ms: 0,
            draining,
            alive,
        }
    }

    fn part(p: i32, leader: i32, next: i32) -> Leadership {
        Leadership {
            slot: Slot::Partition(Uuid::nil(), p),
            leader,
            epoch: 3,
            next_leader: next,
        }
    }

    fn topic_part(t: Uuid, p: i32, leader: i32) -> Leadership {
        Leadership {
            slot: Slot::Partition(t, p),
            leader,
            epoch: 0,
            next_leader: -1,
        }
    }

    fn targets(actions: &[Action]) -> BTreeMap<i32, usize> {
        let mut m = BTreeMap::new();
        for a in actions {
            let (Action::Assign { to, .. } | Action::Move { to, .. }) = a;
            *m.entry(*to).or_default() += 1;
        }
        m
    }

    #[test]
    fn a_dead_brokers_slots_are_spread_over_the_live_ones() {
        let brokers = [broker(1, true, false), broker(2, false, false), broker(3, true, false)];
        let slots: Vec<_> = (0..6)
            .map(|p| {
                part(
                    p,
                    if p < 2 {
                        1
                    } else if p < 4 {
                        3
                    } else {
                        2
                    },
                    -1,
                )
            })
            .collect();
        let actions = plan(&brokers, &slots, |_| false);
        assert_eq!(actions.len(), 2);
        assert!(actions.iter().all(|a| matches!(a, Action::Assign { epoch: 3, .. })));
        assert_eq!(targets(&actions), BTreeMap::from([(1, 1), (3, 1)]));
    }

    #[test]
    fn unled_slots_get_a_leader_and_nothing_moves_without_live_brokers() {
        let slots = vec![part(0, -1, -1), part(1, -1, -1)];
        assert_eq!(plan(&[broker(1, false, false)], &slots, |_| false), vec![]);
        let actions = plan(&[broker(4, true, false)], &slots, |_| false);
        assert_eq!(targets(&actions), BTreeMap::from([(4, 2)]));
    }

    #[test]
    fn a_new_broker_gets_a_fair_share_by_planned_moves() {
        let brokers = [broker(1, true, false), broker(2, true, false), broker(3, true, false)];
        let slots: Vec<_> = (0..9).map(|p| part(p, 1, -1)).collect();
        let actions = plan(&brokers, &slots, |_| false);
        assert!(actions.iter().all(|a| matches!(a, Action::Move { .. })));
        assert_eq!(targets(&actions), BTreeMap::from([(2, 3), (3, 3)]));
        // Balanced already: nothing to do.
        let slots: Vec<_> = (0..9).map(|p| part(p, 1 + p % 3, -1)).collect();
        assert_eq!(plan(&brokers, &slots, |_| false), vec![]);
    }

    #[test]
    fn moves_keep_each_topic_spread() {
        let brokers = [broker(1, true, false), broker(2, true, false), broker(3, true, false)];
        let (spread, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        // `spread` is even over the three brokers; `other` sits on broker 1 only.
        let mut slots: Vec<_> = (0..3).map(|p| topic_part(other, p, 1)).collect();
        slots.extend((0..6).map(|p| topic_part(spread, p, 1 + p % 3)));
        let actions = plan(&brokers, &slots, |_| false);
        assert_eq!(targets(&actions), BTreeMap::from([(2, 1), (3, 1)]));
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, Action::Move { slot: Slot::Partition(t, _), .. } if *t == other)),
            "{actions:?}"
        );
    }

    /// The leadership after the plan's actions are carried out.
    fn after(slots: &[Leadership], actions: &[Action]) -> Vec<Leadership> {
        let mut out = slots.to_vec();
        for a in actions {
            let (Action::Assign { slot, to, .. } | Action::Move { slot, to, .. }) = *a;
            let l = out.iter_mut().find(|l| l.slot == slot).unwrap();
            l.leader = to;
        }
        out
    }

    fn spread_of(slots: &[Leadership], brokers: &[i32]) -> (Vec<usize>, BTreeMap<Option<Uuid>, Vec<usize>>) {
        let count = |f: &dyn Fn(&Leadership) -> bool| {
            brokers
                .iter()
                .map(|&b| slots.iter().filter(|l| l.leader == b && f(l)).count())
                .collect::<Vec<_>>()
        };
        let topics: BTreeSet<_> = slots.iter().map(topic_of).collect();
        (
            count(&|_| true),
            topics.into_iter().map(|t| (t, count(&|l| topic_of(l) == t))).collect(),
        )
    }

    fn within_one(v: &[usize]) -> bool {
        v.iter().max().unwrap() - v.iter().min().unwrap() <= 1
    }

    #[test]
    fn a_topic_bunched_on_two_brokers_is_spread_before_the_totals() {
        let brokers = [broker(1, true, false), broker(2, true, false), broker(3, true, false)];
        let (spread, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut slots: Vec<_> = (0..6).map(|p| topic_part(spread, p, 1 + p % 2)).collect();
        slots.push(topic_part(other, 0, 1));
        let done = after(&slots, &plan(&brokers, &slots, |_| false));
        let (totals, per_topic) = spread_of(&done, &[1, 2, 3]);
        assert_eq!(per_topic[&Some(spread)], vec![2, 2, 2]);
        assert!(within_one(&totals), "{totals:?}");
        assert_eq!(plan(&brokers, &done, |_| false), vec![]);
    }

    proptest::proptest! {
        /// Whatever the starting point, one plan evens out every topic and the totals,
        /// names each slot at most once, and the next plan has nothing left to do.
        #[test]
        fn one_plan_balances_topics_and_totals(
            leaders in proptest::collection::vec((0u128..4, 1i32..5), 1..60),
            brokers in 1i32..5,
        ) {
            let live: Vec<i32> = (1..=brokers).collect();
            let rows: Vec<_> = live.iter().map(|&b| broker(b, true, false)).collect();
            let slots: Vec<_> = leaders
                .iter()
                .enumerate()
                .map(|(i, &(t, leader))| topic_part(Uuid::from_u128(t), i as i32, leader.min(brokers)))
                .collect();
            let actions = plan(&rows, &slots, |_| false);
            let named: BTreeSet<_> = actions.iter().map(|a| { let (Action::Assign { slot, .. } | Action::Move { slot, .. }) = *a; slot }).collect();
            proptest::prop_assert_eq!(named.len(), actions.len());
            let done = after(&slots, &actions);
            let (totals, per_topic) = spread_of(&done, &live);
            proptest::prop_assert!(within_one(&totals), "{:?}", totals);
            for (t, v) in &per_topic {
                proptest::prop_assert!(within_one(v), "topic {:?}: {:?}", t, v);
            }
            proptest::prop_assert_eq!(plan(&rows, &done, |_| false), vec![]);
        }
    }

    #[test]
    fn draining_hands_everything_over_and_stuck_moves_are_forced() {
        let brokers = [broker(1, true, true), broker(2, true, false)];
        let slots = vec![part(0, 1, -1), part(1, 1, 2), part(2, 2, -1)];
        let actions = plan(&brokers, &slots, |_| false);
        assert_eq!(
            actions,
            vec![Action::Move {
                slot: Slot::Partition(Uuid::nil(), 0),
                epoch: 3,
                to: 2
            }]
        );
        let forced = plan(&brokers, &slots, |s| *s == Slot::Partition(Uuid::nil(), 1));
        assert!(forced.contains(&Action::Assign {
            slot: Slot::Partition(Uuid::nil(), 1),
            epoch: 3,
            to: 2
        }));
    }

    #[test]
    fn partitions_and_group_shards_balance_separately() {
        let brokers = [broker(1, true, false), broker(2, true, false)];
        let mut slots: Vec<_> = (0..2).map(|p| part(p, 1 + p % 2, -1)).collect();
        slots.extend((0..4).map(|s| Leadership {
            slot: Slot::GroupShard(s),
            leader: 2,
            epoch: 0,
            next_leader: -1,
        }));
        let actions = plan(&brokers, &slots, |_| false);
        assert_eq!(actions.len(), 2);
        assert!(actions.iter().all(|a| matches!(
            a,
            Action::Move {
                slot: Slot::GroupShard(_),
                to: 1,
                ..
            }
        )));
    }
}
