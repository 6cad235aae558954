//! Class 7: the status page stays bounded whatever a canary token publishes: lanes are capped
//! per server, runs per lane, run times in the future are refused, lists come in pages, and
//! anonymous readers see no private cache's figures.

use crate::harness::*;
use crate::support::tempdir;

fn run(lane: &str, id: &str, started_at: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "lane": lane, "run_id": id, "runner": "r", "started_at": started_at, "duration_ms": 1000,
        "status": "pass",
        "steps": [{"name": "gpu", "status": "pass", "required": true, "duration_ms": 10,
                   "reason": "a long reason ".repeat(100)}],
    }))
    .expect("json")
}

#[test]
fn lanes_runs_and_times_are_bounded_and_private_figures_stay_private() {
    for backend in BOTH {
        let work = tempdir();
        let s = Served::start(
            work.path(),
            backend,
            "max-lanes = 2\ncanary-keep-runs = 3",
            "[caches.main]\n[caches.secret]\nvisibility = \"private\"\n",
        );
        let addr = s.addr();
        let auth = bearer(&s.token("main", "canary"));
        let publish = |body: &[u8]| request(&addr, "POST", "/api/v1/canary/runs", &[("Authorization", &auth)], body);
        for lane in ["a", "b"] {
            assert_eq!(publish(&run(lane, "1", "2026-11-20T08:00:00Z")).status, 201);
        }
        let third = publish(&run("c", "1", "2026-11-20T08:00:00Z"));
        assert_eq!(third.status, 409, "{backend:?}: {}", third.text());
        assert!(third.text().contains("max-lanes"), "{}", third.text());
        // Runs beyond the newest three of a lane go as new ones come.
        for (i, day) in (2..8).enumerate() {
            assert_eq!(publish(&run("a", &format!("r{i}"), &format!("2026-11-2{day}T08:00:00Z"))).status, 201);
        }
        let runs: serde_json::Value =
            serde_json::from_slice(&get(&addr, "/api/v1/canary/runs?lane=a&limit=10").body).expect("json");
        let ids: Vec<&str> =
            runs["runs"].as_array().expect("runs").iter().filter_map(|r| r["run_id"].as_str()).collect();
        assert_eq!(ids, ["r5", "r4", "r3"], "{backend:?}");
        // In pages.
        let page: serde_json::Value =
            serde_json::from_slice(&get(&addr, "/api/v1/canary/runs?lane=a&limit=2").body).expect("json");
        assert_eq!((page["runs"].as_array().map(Vec::len), page["next_offset"].as_u64()), (Some(2), Some(2)));
        let page: serde_json::Value =
            serde_json::from_slice(&get(&addr, "/api/v1/canary/runs?lane=a&limit=2&offset=2").body).expect("json");
        assert_eq!((page["runs"].as_array().map(Vec::len), page["next_offset"].as_u64()), (Some(1), None));
        assert_eq!(get(&addr, "/api/v1/canary/runs?lane=a&bogus=1").status, 400);
        // A run from the future would stay "last run" for ever.
        let future = publish(&run("a", "late", "2099-01-01T00:00:00Z"));
        assert_eq!(future.status, 400, "{}", future.text());
        assert!(future.text().contains("in the future"), "{}", future.text());

        // Anonymous readers: private caches by name only, nowhere with figures.
        let status: serde_json::Value = serde_json::from_slice(&get(&addr, "/api/v1/status").body).expect("json");
        let secret = status["caches"].as_array().expect("caches").iter().find(|c| c["name"] == "secret").cloned();
        assert!(secret.expect("named")["figures"].is_null());
        let text = serde_json::to_string(&status).expect("json");
        assert!(!text.contains("\"cache\":\"secret\""), "{text}");
        // Steps' messages are not on the page's JSON; the size stays small.
        assert!(!text.contains("a long reason"), "{text}");
        assert!(text.len() < 64 << 10, "{} bytes", text.len());
    }
}
