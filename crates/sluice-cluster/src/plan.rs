//! The controller's decisions, as a pure function of what the metadata store
//! says: who leads slots whose leader is gone, what a draining broker hands
//! over, and which moves even out the load. Balanced by slot count per kind
//! (partitions and group shards separately).

use std::collections::BTreeMap;

use sluice_meta::{BrokerRow, Leadership, Slot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make `to` the leader now: the current leader is gone or did not hand over in time.
    Assign { slot: Slot, epoch: i32, to: i32 },
    /// Ask the live leader to flush and hand the slot to `to`.
    Move { slot: Slot, epoch: i32, to: i32 },
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
        // Even out: move from the busiest to the idlest until they differ by at most one.
        let mut owned: BTreeMap<i32, Vec<&Leadership>> = live.iter().map(|&b| (b, Vec::new())).collect();
        for l in &slots {
            if let Some(v) = owned.get_mut(&l.leader) {
                v.push(l);
            }
        }
        loop {
            let (&max_b, max_n) = owned.iter().max_by_key(|(b, v)| (v.len(), -**b)).unwrap();
            let (&min_b, min_n) = owned.iter().min_by_key(|(b, v)| (v.len(), **b)).unwrap();
            if max_n.len() <= min_n.len() + 1 {
                break;
            }
            let l = owned.get_mut(&max_b).unwrap().pop().unwrap();
            actions.push(Action::Move {
                slot: l.slot,
                epoch: l.epoch,
                to: min_b,
            });
            owned.get_mut(&min_b).unwrap().push(l);
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn broker(id: i32, alive: bool, draining: bool) -> BrokerRow {
        BrokerRow {
            node_id: id,
            host: "h".into(),
            port: 9092,
            http: String::new(),
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
