#![allow(clippy::unwrap_used)]

use flywheel_nix::StoreDir;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, ProptestConfig, Strategy as _};

use super::*;
use crate::closure::GraphEntry;

/// A closure from (name, size, references by index into earlier entries).
fn closure(spec: &[(String, u64, Vec<usize>)]) -> Closure {
    let path = |i: usize, name: &str| {
        format!("/nix/store/{:0>32}-{name}", format!("{i}").replace(|c: char| !c.is_ascii_digit(), "0"))
    };
    let entries = spec
        .iter()
        .enumerate()
        .map(|(i, (name, size, refs))| GraphEntry {
            path: path(i, name),
            nar_hash: "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
            nar_size: *size,
            references: refs.iter().map(|&r| path(r, &spec[r].0)).collect(),
        })
        .collect();
    Closure::from_graph(StoreDir::default(), entries).unwrap()
}

fn dag() -> impl proptest::strategy::Strategy<Value = Vec<(String, u64, Vec<usize>)>> {
    (1usize..70).prop_flat_map(|n| {
        proptest::collection::vec(
            ("[a-z]{1,6}", 1u64..10_000_000, proptest::collection::vec(any::<proptest::sample::Index>(), 0..5)),
            n,
        )
        .prop_map(|nodes| {
            nodes
                .into_iter()
                .enumerate()
                .map(|(i, (name, size, refs))| {
                    let mut r: Vec<usize> = if i == 0 { vec![] } else { refs.iter().map(|x| x.index(i)).collect() };
                    r.sort_unstable();
                    r.dedup();
                    (name, size, r)
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_path_lands_in_exactly_one_layer_within_the_limit(
        spec in dag(), max in 1usize..20, excluded_bits in any::<u64>()
    ) {
        let c = closure(&spec);
        let excluded: Vec<bool> = (0..c.len()).map(|i| excluded_bits & (1 << (i % 64)) != 0 && i % 3 == 0).collect();
        for strategy in [Strategy::Cost, Strategy::Auto, Strategy::Popularity] {
            let layers = plan(&c, &excluded, max, strategy);
            prop_assert!(layers.len() <= max, "{strategy}: {} layers", layers.len());
            let mut seen = vec![0; c.len()];
            for l in &layers {
                prop_assert!(!l.is_empty());
                for &m in l {
                    seen[m] += 1;
                }
            }
            for i in 0..c.len() {
                prop_assert_eq!(seen[i], usize::from(!excluded[i]), "{} path {}", strategy, i);
            }
            // Deterministic.
            prop_assert_eq!(&layers, &plan(&c, &excluded, max, strategy));
        }
    }
}

#[test]
fn cost_keeps_a_large_base_library_away_from_the_paths_that_change_often() {
    // libc (big) <- lib-a <- app-1, app-2 <- root ; a small tool beside them.
    let spec = vec![
        ("libc".to_string(), 50_000_000, vec![]),
        ("lib-a".to_string(), 1_000_000, vec![0]),
        ("app-1".to_string(), 2_000_000, vec![1]),
        ("app-2".to_string(), 2_000_000, vec![1]),
        ("tool".to_string(), 100_000, vec![0]),
        ("root".to_string(), 1_000, vec![2, 3, 4]),
    ];
    let c = closure(&spec);
    let layers = plan(&c, &[false; 6], 3, Strategy::Cost);
    assert_eq!(layers.len(), 3);
    let libc = c.objects.iter().position(|o| o.path.name() == "libc").unwrap();
    let with_libc = layers.iter().find(|l| l.contains(&libc)).unwrap();
    assert_eq!(with_libc, &vec![libc], "libc is alone: {layers:?}");
    // The most stable layer comes first.
    assert_eq!(layers[0], vec![libc]);
}

#[test]
fn with_room_for_all_every_path_gets_its_own_layer() {
    let spec: Vec<_> =
        (0..5).map(|i| (format!("p{i}"), 10 + i as u64, if i > 0 { vec![i - 1] } else { vec![] })).collect();
    let c = closure(&spec);
    for s in [Strategy::Cost, Strategy::Popularity] {
        assert_eq!(plan(&c, &[false; 5], 100, s).len(), 5, "{s}");
    }
}
