//! The leader's pure assignment function: scenario tables and properties.

use std::collections::{BTreeMap, HashMap, HashSet};

use kcl::AssignmentConfig;
use kcl::assignment::{Action, AssignmentInput, AssignmentPlan, LeaseInfo, LoadMetric, WorkerInfo, assign};
use proptest::prelude::*;

fn lease(key: &str, owner: Option<&str>, tp: Option<f64>) -> LeaseInfo {
    LeaseInfo {
        lease_key: key.into(),
        owner: owner.map(Into::into),
        in_handoff: false,
        expired: false,
        throughput_kbps: tp,
    }
}

fn run(leases: &[LeaseInfo], workers: &[WorkerInfo], config: &AssignmentConfig, balance: bool) -> AssignmentPlan {
    assign(AssignmentInput { leases, workers, config, balance })
}

/// Lease counts per worker after applying the plan.
fn counts_after(leases: &[LeaseInfo], workers: &[WorkerInfo], plan: &AssignmentPlan) -> BTreeMap<String, usize> {
    let mut owner: HashMap<&str, Option<&str>> =
        leases.iter().map(|l| (l.lease_key.as_str(), if l.expired { None } else { l.owner.as_deref() })).collect();
    for a in &plan.actions {
        owner.insert(a.lease_key(), Some(a.to()));
    }
    let mut counts: BTreeMap<String, usize> = workers.iter().map(|w| (w.worker_id.clone(), 0)).collect();
    for o in owner.values().flatten() {
        if let Some(c) = counts.get_mut(*o) {
            *c += 1;
        }
    }
    counts
}

fn unbounded() -> AssignmentConfig {
    AssignmentConfig::default()
}

#[test]
fn new_leases_spread_by_count() {
    let leases: Vec<_> = (0..8).map(|i| lease(&format!("l{i}"), None, None)).collect();
    let workers = [WorkerInfo::new("a"), WorkerInfo::new("b"), WorkerInfo::new("c")];
    let plan = run(&leases, &workers, &unbounded(), false);
    assert_eq!(plan.metric, LoadMetric::LeaseCount);
    assert_eq!(plan.actions.len(), 8);
    assert!(plan.actions.iter().all(|a| matches!(a, Action::Assign { .. })));
    let counts = counts_after(&leases, &workers, &plan);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![3, 3, 2]);
}

/// Scenario table: (name, leases as (key, owner, expired, in_handoff, tp), workers as (id, cpu),
/// max leases, balance, expected final counts, expected number of handoffs).
#[allow(clippy::type_complexity)]
#[test]
fn scenarios() {
    let table: Vec<(
        &str,
        Vec<(&str, Option<&str>, bool, bool, Option<f64>)>,
        Vec<(&str, Option<f64>)>,
        usize,
        bool,
        Vec<usize>,
        usize,
    )> = vec![
        (
            "expired leases of a dead worker go to the least loaded",
            vec![
                ("l0", Some("a"), false, false, None),
                ("l1", Some("dead"), true, false, None),
                ("l2", Some("dead"), true, false, None),
                ("l3", Some("b"), false, false, None),
                ("l4", Some("b"), false, false, None),
            ],
            vec![("a", None), ("b", None)],
            usize::MAX,
            false,
            vec![3, 2],
            0,
        ),
        (
            "max leases per worker leaves the rest unassigned",
            (0..10)
                .map(|i| (["l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9"][i], None, false, false, None))
                .collect(),
            vec![("a", None), ("b", None)],
            4,
            true,
            vec![4, 4],
            0,
        ),
        (
            "count balancing moves the excess with handoffs",
            (0..6).map(|i| (["l0", "l1", "l2", "l3", "l4", "l5"][i], Some("a"), false, false, None)).collect(),
            vec![("a", None), ("b", None)],
            usize::MAX,
            true,
            vec![3, 3],
            3,
        ),
        (
            "no balancing on a non-balancing pass",
            (0..6).map(|i| (["l0", "l1", "l2", "l3", "l4", "l5"][i], Some("a"), false, false, None)).collect(),
            vec![("a", None), ("b", None)],
            usize::MAX,
            false,
            vec![6, 0],
            0,
        ),
        (
            "leases in a handoff are not moved again",
            vec![
                ("l0", Some("a"), false, true, None),
                ("l1", Some("a"), false, true, None),
                ("l2", Some("a"), false, true, None),
                ("l3", Some("a"), false, false, None),
            ],
            vec![("a", None), ("b", None)],
            usize::MAX,
            true,
            vec![3, 1],
            1,
        ),
        (
            "an expired handoff is reassigned",
            vec![("l0", Some("b"), true, true, None), ("l1", Some("a"), false, false, None)],
            vec![("a", None), ("b", None)],
            usize::MAX,
            false,
            vec![1, 1],
            0,
        ),
        (
            "a hot worker sheds a lease by throughput",
            vec![
                ("h0", Some("a"), false, false, Some(100.0)),
                ("h1", Some("a"), false, false, Some(100.0)),
                ("c0", Some("b"), false, false, Some(1.0)),
                ("c1", Some("b"), false, false, Some(1.0)),
            ],
            vec![("a", None), ("b", None)],
            usize::MAX,
            true,
            vec![1, 3],
            1,
        ),
        (
            "within the threshold nothing moves",
            vec![
                ("l0", Some("a"), false, false, Some(10.0)),
                ("l1", Some("a"), false, false, Some(10.5)),
                ("l2", Some("b"), false, false, Some(10.2)),
                ("l3", Some("b"), false, false, Some(9.9)),
            ],
            vec![("a", None), ("b", None)],
            usize::MAX,
            true,
            vec![2, 2],
            0,
        ),
        (
            // 90 % vs 10 %: a lease costs ≈ 20 % CPU (10 KB/s × avg 50 % / 25 KB/s per worker);
            // the dampened excess (60 % of 40/90 of a's 40 KB/s ≈ 10.7 KB/s) moves one lease.
            "cpu: the busy worker gives to the idle one, dampened",
            vec![
                ("l0", Some("a"), false, false, Some(10.0)),
                ("l1", Some("a"), false, false, Some(10.0)),
                ("l2", Some("a"), false, false, Some(10.0)),
                ("l3", Some("a"), false, false, Some(10.0)),
                ("l4", Some("b"), false, false, Some(10.0)),
            ],
            vec![("a", Some(90.0)), ("b", Some(10.0))],
            usize::MAX,
            true,
            vec![3, 2],
            1,
        ),
        (
            "leases of a worker that is not live but not expired stay put",
            vec![("l0", Some("gone"), false, false, None), ("l1", None, false, false, None)],
            vec![("a", None)],
            usize::MAX,
            true,
            vec![1],
            0,
        ),
    ];
    for (name, leases, workers, max, balance, expected, handoffs) in table {
        let leases: Vec<LeaseInfo> = leases
            .into_iter()
            .map(|(k, o, expired, in_handoff, tp)| LeaseInfo {
                lease_key: k.into(),
                owner: o.map(Into::into),
                in_handoff,
                expired,
                throughput_kbps: tp,
            })
            .collect();
        let workers: Vec<WorkerInfo> =
            workers.into_iter().map(|(id, cpu)| WorkerInfo { worker_id: id.into(), cpu, max_cpu: 100.0 }).collect();
        let config = AssignmentConfig { max_leases_per_worker: max, ..AssignmentConfig::default() };
        let plan = run(&leases, &workers, &config, balance);
        let counts: Vec<usize> = counts_after(&leases, &workers, &plan).into_values().collect();
        assert_eq!(counts, expected, "{name}: {plan:?}");
        let n = plan.actions.iter().filter(|a| matches!(a, Action::Handoff { .. })).count();
        assert_eq!(n, handoffs, "{name}: {plan:?}");
    }
}

#[test]
fn no_workers_no_actions() {
    let leases = [lease("l0", None, None)];
    assert!(run(&leases, &[], &unbounded(), true).actions.is_empty());
}

#[test]
fn throughput_balancing_converges_without_oscillation() {
    // Apply plans repeatedly (as successive balancing passes would) until nothing moves.
    let mut leases: Vec<LeaseInfo> = [50.0, 40.0, 30.0, 20.0, 10.0, 5.0, 5.0, 1.0]
        .iter()
        .enumerate()
        .map(|(i, tp)| lease(&format!("l{i}"), Some("a"), Some(*tp)))
        .collect();
    let workers = [WorkerInfo::new("a"), WorkerInfo::new("b"), WorkerInfo::new("c")];
    let mut passes = 0;
    loop {
        let plan = run(&leases, &workers, &unbounded(), true);
        if plan.actions.is_empty() {
            break;
        }
        for a in plan.actions {
            let l = leases.iter_mut().find(|l| l.lease_key == a.lease_key()).expect("lease");
            l.owner = Some(a.to().to_owned());
        }
        passes += 1;
        assert!(passes < 20, "balancing does not settle");
    }
    let mut load: BTreeMap<String, f64> = BTreeMap::new();
    for l in &leases {
        *load.entry(l.owner.clone().unwrap_or_default()).or_default() += l.throughput_kbps.unwrap_or(0.0);
    }
    let max = load.values().cloned().fold(0.0, f64::max);
    let min = load.values().cloned().fold(f64::MAX, f64::min);
    assert!(max - min <= 50.0, "settled at {load:?} after {passes} passes");
    assert!(max <= 70.0, "the hot worker shed load: {load:?}");
}

fn arb_input() -> impl Strategy<Value = (Vec<LeaseInfo>, Vec<WorkerInfo>, AssignmentConfig, bool)> {
    let workers = (1usize..6, any::<bool>(), prop::collection::vec(0.0f64..100.0, 6));
    workers.prop_flat_map(|(n, with_cpu, cpus)| {
        let workers: Vec<WorkerInfo> = (0..n)
            .map(|i| WorkerInfo { worker_id: format!("w{i}"), cpu: with_cpu.then_some(cpus[i]), max_cpu: 100.0 })
            .collect();
        let owner = prop_oneof![
            Just(None),
            (0..n + 1).prop_map(move |i| Some(if i == n { "dead".to_owned() } else { format!("w{i}") }))
        ];
        let lease = (owner, any::<bool>(), prop::bool::weighted(0.1), prop::option::of(0.0f64..200.0));
        (Just(workers), prop::collection::vec(lease, 0..40), prop_oneof![Just(usize::MAX), 1usize..15], any::<bool>())
            .prop_map(|(workers, leases, max, balance)| {
                let leases = leases
                    .into_iter()
                    .enumerate()
                    .map(|(i, (owner, expired, in_handoff, tp))| LeaseInfo {
                        lease_key: format!("l{i:02}"),
                        expired: expired && owner.is_some(),
                        in_handoff: in_handoff && owner.is_some(),
                        owner,
                        throughput_kbps: tp,
                    })
                    .collect();
                let config = AssignmentConfig { max_leases_per_worker: max, ..AssignmentConfig::default() };
                (leases, workers, config, balance)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn assignment_invariants((leases, workers, config, balance) in arb_input()) {
        let plan = run(&leases, &workers, &config, balance);
        prop_assert_eq!(&plan, &run(&leases, &workers, &config, balance), "deterministic");
        let live: HashSet<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
        let by_key: HashMap<&str, &LeaseInfo> = leases.iter().map(|l| (l.lease_key.as_str(), l)).collect();

        // Never assigns a lease twice.
        let mut seen = HashSet::new();
        for a in &plan.actions {
            prop_assert!(seen.insert(a.lease_key()), "lease {} in two actions", a.lease_key());
            prop_assert!(live.contains(a.to()), "{:?} goes to a live worker", a);
            let l = by_key[a.lease_key()];
            match a {
                Action::Assign { .. } => prop_assert!(l.owner.is_none() || l.expired, "assign only unowned or expired: {:?}", l),
                Action::Handoff { from, to, .. } => {
                    prop_assert!(balance, "handoffs only on balancing passes");
                    prop_assert_eq!(l.owner.as_deref(), Some(from.as_str()));
                    prop_assert!(from != to);
                    prop_assert!(!l.expired && !l.in_handoff, "only live leases move: {:?}", l);
                }
            }
        }

        // Never exceeds the per-worker maximum (for workers that received leases).
        let before = counts_after(&leases, &workers, &AssignmentPlan { metric: plan.metric, actions: vec![] });
        let after = counts_after(&leases, &workers, &plan);
        let receivers: HashSet<&str> = plan.actions.iter().map(Action::to).collect();
        for (w, n) in &after {
            if receivers.contains(w.as_str()) {
                prop_assert!(*n <= config.max_leases_per_worker, "{} holds {} > max {}", w, n, config.max_leases_per_worker);
            }
            prop_assert!(*n <= before[w].max(config.max_leases_per_worker));
        }

        // Unassigned and expired leases are all placed when there is room.
        let pending = leases.iter().filter(|l| l.owner.is_none() || l.expired).count();
        let room: usize = before.values().map(|n| config.max_leases_per_worker.saturating_sub(*n)).fold(0usize, usize::saturating_add);
        let assigned = plan.actions.iter().filter(|a| matches!(a, Action::Assign { .. })).count();
        prop_assert_eq!(assigned, pending.min(room));

        // ...to the least-loaded workers: in lease-count mode, every Assign recipient had the
        // fewest leases among workers with room at that moment (so counts end within one).
        if plan.metric == LoadMetric::LeaseCount && balance && config.max_leases_per_worker == usize::MAX
            && leases.iter().all(|l| !l.in_handoff && l.owner.as_deref().is_none_or(|o| live.contains(o) || l.expired))
        {
            let max = after.values().max().copied().unwrap_or(0);
            let min = after.values().min().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "count balancing leaves {:?}", after);
        }
    }
}
