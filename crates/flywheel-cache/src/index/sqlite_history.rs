//! [`History`] on the embedded SQLite index (the tables and triggers of migration 5).

use rusqlite::params;

use super::history::{History, HourRow, StoredRun, HOURLY};
use super::retention::Usage;
use super::sqlite::{db, size, SqliteIndex};
use super::IndexError;

/// Unix seconds at the start of the current hour: the hour [`super::Retention::add_stats`]
/// adds to.
pub(super) fn this_hour() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(now / 3600 * 3600).unwrap_or(i64::MAX)
}

/// The hourly counter a counter's delta also goes to, if any: the [`HOURLY`] ones themselves,
/// and `nar_bytes` for each `nar_bytes_age_*`.
pub(super) fn hourly_key(key: &str) -> Option<&'static str> {
    if key.starts_with("nar_bytes_age_") {
        return Some("nar_bytes");
    }
    HOURLY.iter().find(|k| **k == key).copied()
}

/// A count or limit as SQL takes it.
pub(super) fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRun> {
    Ok(StoredRun {
        lane: r.get(0)?,
        run_id: r.get(1)?,
        started_at: r.get(2)?,
        status: r.get(3)?,
        received_at: r.get(4)?,
        record: r.get(5)?,
    })
}

impl History for SqliteIndex {
    fn cache_totals(&self) -> Result<Vec<(String, Usage)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.name, coalesce(t.paths, 0), coalesce(t.bytes, 0)
                     FROM caches c LEFT JOIN cache_totals t ON t.cache = c.id ORDER BY c.name",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))
                .map_err(db)?;
            rows.map(|r| {
                let (name, paths, bytes) = r.map_err(db)?;
                Ok((name, Usage { paths: size(paths)?, bytes: size(bytes)? }))
            })
            .collect()
        })
    }

    fn hourly_stats(&self, since: i64) -> Result<Vec<HourRow>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT c.name, h.hour, h.key, h.value FROM hourly_stats h JOIN caches c ON c.id = h.cache
                     WHERE h.hour >= ?1 ORDER BY c.name, h.hour, h.key",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([since], |r| {
                    Ok(HourRow { cache: r.get(0)?, hour: r.get(1)?, key: r.get(2)?, value: r.get(3)? })
                })
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn trim_hourly_stats(&self, before: i64) -> Result<(), IndexError> {
        self.with(|conn| {
            conn.execute("DELETE FROM hourly_stats WHERE hour < ?1", [before]).map_err(db)?;
            Ok(())
        })
    }

    fn record_gc_summary(&self, at: i64, summary: &str) -> Result<(), IndexError> {
        self.with(|conn| {
            conn.execute("INSERT INTO gc_summaries (at, summary) VALUES (?1, ?2)", params![at, summary]).map_err(db)?;
            Ok(())
        })
    }

    fn gc_summaries(&self, limit: usize) -> Result<Vec<(i64, String)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT at, summary FROM gc_summaries ORDER BY at DESC, id DESC LIMIT ?1")
                .map_err(db)?;
            let rows = stmt.query_map([count(limit)], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn trim_gc_summaries(&self, keep: usize) -> Result<(), IndexError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM gc_summaries WHERE id NOT IN (
                   SELECT id FROM gc_summaries ORDER BY at DESC, id DESC LIMIT ?1)",
                [count(keep)],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn put_canary_run(&self, run: &StoredRun) -> Result<(), IndexError> {
        self.with(|conn| put_run(conn, run))
    }

    fn publish_canary_run(&self, run: &StoredRun, max_lanes: usize, keep: usize) -> Result<(), IndexError> {
        self.with(|conn| {
            let tx = super::sqlite::write_tx(conn)?;
            let known: bool = tx
                .prepare_cached("SELECT 1 FROM canary_runs WHERE lane = ?1 LIMIT 1")
                .and_then(|mut s| s.exists([&run.lane]))
                .map_err(db)?;
            if !known {
                let lanes: i64 = tx
                    .query_row("SELECT count(*) FROM (SELECT DISTINCT lane FROM canary_runs)", [], |r| r.get(0))
                    .map_err(db)?;
                if lanes >= count(max_lanes) {
                    return Err(IndexError::TooManyLanes(max_lanes));
                }
            }
            put_run(&tx, run)?;
            tx.execute(
                "DELETE FROM canary_runs WHERE lane = ?1 AND run_id IN (
                   SELECT run_id FROM canary_runs WHERE lane = ?1
                   ORDER BY started_at DESC, received_at DESC, run_id DESC LIMIT -1 OFFSET ?2)",
                params![run.lane, count(keep.max(1))],
            )
            .map_err(db)?;
            tx.commit().map_err(db)
        })
    }

    fn canary_runs(&self, lane: &str, offset: usize, limit: usize) -> Result<Vec<StoredRun>, IndexError> {
        self.with(|conn| {
            // Runs that started and arrived at the same second come in an order of their own
            // (run id), the same in both backends.
            let mut stmt = conn
                .prepare_cached(
                    "SELECT lane, run_id, started_at, status, received_at, record FROM canary_runs WHERE lane = ?1
                     ORDER BY started_at DESC, received_at DESC, run_id DESC LIMIT ?2 OFFSET ?3",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![lane, count(limit), count(offset)], to_run).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn canary_lanes(&self) -> Result<Vec<String>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT lane FROM canary_runs ORDER BY lane").map_err(db)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn trim_canary_runs(&self, before: i64, keep: usize) -> Result<u64, IndexError> {
        self.with(|conn| {
            let removed = conn
                .execute(
                    "DELETE FROM canary_runs WHERE started_at < ?1 OR (lane, run_id) IN (
                       SELECT lane, run_id FROM (
                         SELECT lane, run_id, row_number() OVER (
                           PARTITION BY lane ORDER BY started_at DESC, received_at DESC, run_id DESC) AS n
                         FROM canary_runs)
                       WHERE n > ?2)",
                    params![before, count(keep)],
                )
                .map_err(db)?;
            Ok(removed as u64)
        })
    }
}

fn put_run(conn: &rusqlite::Connection, run: &StoredRun) -> Result<(), IndexError> {
    conn.execute(
        "INSERT INTO canary_runs (lane, run_id, started_at, status, received_at, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (lane, run_id) DO UPDATE SET started_at = excluded.started_at,
           status = excluded.status, received_at = excluded.received_at, record = excluded.record",
        params![run.lane, run.run_id, run.started_at, run.status, run.received_at, run.record],
    )
    .map_err(db)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rusqlite::Connection;

    use super::*;
    use crate::index::retention::DeleteGuard;
    use crate::index::sqlite::MIGRATIONS;
    use crate::index::{test_cache as cache, Index, NarRecord, PathRecord, Retention, Scope, TokenRecord};

    fn store_path(i: usize) -> String {
        format!("/nix/store/{i:032}-p{i}")
    }

    fn nar(i: usize) -> NarRecord {
        let mut h = [0u8; 32];
        h[..8].copy_from_slice(&(i as u64).to_be_bytes());
        NarRecord {
            nar_hash: h,
            nar_size: 1000 + i as u64,
            file_hash: [i as u8; 32],
            file_size: 100 * i as u64,
            compression: "zstd".into(),
        }
    }

    /// Path `i` with NAR `n`.
    fn path(i: usize, n: usize, refs: &[usize]) -> PathRecord {
        let mut references: Vec<String> = refs.iter().map(|&r| store_path(r)).collect();
        references.sort();
        PathRecord { store_path: store_path(i), nar: nar(n), references, deriver: None, ca: None, sigs: vec![] }
    }

    fn push(idx: &SqliteIndex, cache: &str, p: &PathRecord) {
        let url = format!("nar/{}", p.store_path);
        idx.record_upload(cache, &url, &p.nar, 1).unwrap();
        idx.add_path(cache, p, Some(&url), 1).unwrap();
    }

    fn id_of(idx: &SqliteIndex, cache: &str, i: usize) -> i64 {
        let mut id = None;
        idx.gc_snapshot(
            cache,
            &mut |m| {
                if m.hash_part == format!("{i:032}").as_bytes() {
                    id = Some(m.id)
                }
            },
            &mut |_, _| {},
        )
        .unwrap();
        id.unwrap()
    }

    /// The kept totals, each checked against what `usage_by_access` counts from the paths.
    fn totals(idx: &SqliteIndex) -> Vec<(String, u64, u64)> {
        let totals = idx.cache_totals().unwrap();
        let names: Vec<String> = idx.caches().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(totals.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names, "every cache, by name");
        for (name, usage) in &totals {
            let counted = *idx.usage_by_access(name, 0, &[]).unwrap().last().unwrap();
            assert_eq!(*usage, counted, "{name}: kept totals and the paths' sum differ");
        }
        totals.into_iter().map(|(n, u)| (n, u.paths, u.bytes)).collect()
    }

    const ALL: DeleteGuard<'static> =
        DeleteGuard { added_before: i64::MAX, accessed_before: i64::MAX, in_use: &|_, _| false };

    #[test]
    fn totals_follow_each_caches_paths_as_the_paths_sum_them() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        for c in ["main", "other", "Empty"] {
            idx.create_cache(&cache(c)).unwrap();
        }
        assert_eq!(totals(&idx), [("Empty".into(), 0, 0), ("main".into(), 0, 0), ("other".into(), 0, 0)]);
        push(&idx, "main", &path(1, 1, &[]));
        push(&idx, "main", &path(2, 2, &[1]));
        // Another path with the same NAR: the cache pays for it again (as usage counts it).
        push(&idx, "main", &path(3, 1, &[]));
        push(&idx, "other", &path(4, 4, &[]));
        // The same path uploaded to other too: its own row, counted there; pushed again: not
        // counted twice.
        push(&idx, "other", &path(1, 1, &[]));
        push(&idx, "other", &path(1, 1, &[]));
        push(&idx, "main", &path(4, 4, &[]));
        assert_eq!(totals(&idx), [("Empty".into(), 0, 0), ("main".into(), 4, 800), ("other".into(), 2, 500)]);

        // Collected from main: 2 (its own NAR dies), 1 (still in other), 3 (its NAR still used
        // by 1); 4 is not asked for.
        let ids = [2, 1, 3].map(|i| id_of(&idx, "main", i));
        assert_eq!(idx.gc_remove("main", &ids, &ALL, 5).unwrap().len(), 3);
        assert_eq!(totals(&idx), [("Empty".into(), 0, 0), ("main".into(), 1, 400), ("other".into(), 2, 500)]);
        // The last holder of 1: its path and the NAR go.
        let id = id_of(&idx, "other", 1);
        assert_eq!(idx.gc_remove("other", &[id], &ALL, 6).unwrap()[0].dead_nar, Some(nar(1).nar_hash));
        assert_eq!(totals(&idx), [("Empty".into(), 0, 0), ("main".into(), 1, 400), ("other".into(), 1, 400)]);

        // A removal GC skips (still referred to) takes nothing off.
        push(&idx, "other", &path(5, 5, &[]));
        push(&idx, "other", &path(6, 6, &[5]));
        let id = id_of(&idx, "other", 5);
        assert!(idx.gc_remove("other", &[id], &ALL, 7).unwrap().is_empty());
        assert_eq!(totals(&idx), [("Empty".into(), 0, 0), ("main".into(), 1, 400), ("other".into(), 3, 1500)]);
        let usage = idx.usage_by_access("other", 0, &[]).unwrap();
        assert_eq!((usage[0].paths, usage[0].bytes), (3, 1500), "the same as summing the paths");
    }

    #[test]
    fn totals_are_counted_from_the_memberships_an_index_of_schema_4_has() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("index.db");
        {
            // Made as the flywheel before migration 5 made it, and filled the way it filled it.
            let mut conn = Connection::open(&file).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &MIGRATIONS[..4] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            tx.execute_batch(
                "INSERT INTO caches (id, name, visibility, priority, secret_key, created_at) VALUES
                   (1, 'main', 'public', 40, 'k', 1), (2, 'other', 'private', 41, 'k', 1), (3, 'idle', 'public', 41, 'k', 1);
                 INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at) VALUES
                   (x'01', 1000, x'01', 100, 'zstd', 1), (x'02', 2000, x'02', 200, 'zstd', 1);
                 INSERT INTO paths (id, hash_part, store_path, nar_hash, sigs, uploaded_at, last_access) VALUES
                   (1, 'a', '/nix/store/a-a', x'01', '', 1, 1), (2, 'b', '/nix/store/b-b', x'02', '', 1, 1),
                   (3, 'c', '/nix/store/c-c', x'02', '', 1, 1);
                 INSERT INTO members (cache, path, added_at) VALUES (1, 1, 1), (1, 2, 1), (2, 1, 1), (2, 2, 1), (2, 3, 1);
                 INSERT INTO tokens (hash, cache, scope, created_at, expires_at, description) VALUES
                   (zeroblob(32), 2, 'admin', 5, 9, 'ci');",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let idx = SqliteIndex::open(&file).unwrap();
        let version: i64 = idx.with(|c| c.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(totals(&idx), [("idle".into(), 0, 0), ("main".into(), 2, 300), ("other".into(), 3, 500)]);
        // The tokens came along, and the new scope is allowed now (and nothing else).
        let old = idx.token(&[0; 32]).unwrap().unwrap();
        assert_eq!(
            (old.cache.as_str(), old.scope, old.expires_at, old.description.as_deref()),
            ("other", Scope::Admin, Some(9), Some("ci"))
        );
        let canary = TokenRecord {
            hash: [3; 32],
            cache: "main".into(),
            scope: Scope::Canary,
            created_at: 7,
            expires_at: None,
            description: Some("runner".into()),
        };
        idx.add_token(&canary).unwrap();
        assert_eq!(idx.token(&[3; 32]).unwrap(), Some(canary));
        let bogus = idx.with(|c| {
            c.execute("INSERT INTO tokens (hash, cache, scope, created_at) VALUES (x'04', 1, 'root', 1)", [])
                .map_err(db)
        });
        assert!(bogus.is_err(), "the scope is still checked");
        // The triggers count from there on.
        push(&idx, "idle", &path(7, 7, &[]));
        assert_eq!(totals(&idx)[0], ("idle".into(), 1, 700));
    }

    #[test]
    fn counters_are_kept_by_the_hour_nar_bytes_summed() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        idx.create_cache(&cache("main")).unwrap();
        idx.create_cache(&cache("B")).unwrap();
        let d = |c: &str, k: &str, v: i64| (c.to_string(), k.to_string(), v);
        let before = this_hour();
        idx.add_stats(&[
            d("main", "narinfo_hits", 2),
            d("main", "nar_bytes_age_1d", 100),
            d("main", "nar_bytes_age_30d", 50),
            d("main", "narinfo_misses", 3),
            d("main", "narinfo_hits", 1),
            d("B", "nar_downloads", 1),
            d("main", "gc_removed", 9),
            d("nope", "narinfo_hits", 5),
        ])
        .unwrap();
        idx.gc_barrier(&["main".into()]).unwrap();
        let after = this_hour();
        let rows = idx.hourly_stats(0).unwrap();
        let hour = rows[0].hour;
        assert!(hour % 3600 == 0 && (before..=after).contains(&hour), "{hour}");
        let shown: Vec<(&str, &str, i64)> = rows.iter().map(|r| (r.cache.as_str(), r.key.as_str(), r.value)).collect();
        assert_eq!(
            shown,
            [
                ("B", "nar_downloads", 1),
                ("main", "nar_bytes", 150),
                ("main", "narinfo_hits", 3),
                ("main", "narinfo_misses", 3)
            ],
            "by cache, hour and key; gc counters only in stats"
        );
        let stats = idx.stats("main").unwrap();
        assert!(stats.contains(&("gc_runs".into(), 1)) && stats.contains(&("nar_bytes_age_1d".into(), 100)));

        // An older hour: listed first in its cache, trimmed by age.
        idx.with(|c| {
            c.execute("INSERT INTO hourly_stats (cache, hour, key, value) SELECT id, ?1, 'nar_bytes', 7 FROM caches WHERE name = 'main'", [hour - 7200])
                .map_err(db)
        })
        .unwrap();
        let rows = idx.hourly_stats(hour - 7200).unwrap();
        assert_eq!((rows[1].cache.as_str(), rows[1].hour, rows[1].value), ("main", hour - 7200, 7));
        assert_eq!(idx.hourly_stats(hour - 3600).unwrap().len(), 4, "from `since` on");
        assert!(idx.hourly_stats(hour + 3600).unwrap().is_empty());
        idx.trim_hourly_stats(hour).unwrap();
        assert_eq!(idx.hourly_stats(0).unwrap().len(), 4);
        idx.trim_hourly_stats(hour + 1).unwrap();
        assert!(idx.hourly_stats(0).unwrap().is_empty());
    }

    #[test]
    fn gc_summaries_newest_first_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        assert!(idx.gc_summaries(10).unwrap().is_empty());
        for (at, s) in [(10, "a"), (30, "c"), (20, "b"), (30, "d")] {
            idx.record_gc_summary(at, s).unwrap();
        }
        let all = idx.gc_summaries(10).unwrap();
        assert_eq!(
            all,
            [(30, "d".into()), (30, "c".into()), (20, "b".into()), (10, "a".into())],
            "by time, then as recorded"
        );
        assert_eq!(idx.gc_summaries(2).unwrap(), all[..2]);
        idx.trim_gc_summaries(3).unwrap();
        assert_eq!(idx.gc_summaries(10).unwrap(), all[..3]);
        idx.trim_gc_summaries(0).unwrap();
        assert!(idx.gc_summaries(10).unwrap().is_empty());
    }

    fn run(lane: &str, id: &str, started_at: i64, received_at: i64) -> StoredRun {
        StoredRun {
            lane: lane.into(),
            run_id: id.into(),
            started_at,
            status: "pass".into(),
            received_at,
            record: format!("{{\"run\":\"{id}\"}}"),
        }
    }

    #[test]
    fn canary_runs_are_kept_by_lane_newest_first_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        for r in [
            run("main", "r1", 100, 101),
            run("main", "r2", 200, 205),
            run("main", "r3", 200, 201),
            run("main", "r4", 50, 300),
            run("pr", "x", 10, 11),
            run("B", "y", 500, 501),
        ] {
            idx.put_canary_run(&r).unwrap();
        }
        // Published again: replaced whole.
        let again = StoredRun { status: "fail".into(), record: "{}".into(), ..run("main", "r1", 150, 400) };
        idx.put_canary_run(&again).unwrap();
        let ids = |lane: &str, limit: usize| -> Vec<String> {
            idx.canary_runs(lane, 0, limit).unwrap().into_iter().map(|r| r.run_id).collect()
        };
        assert_eq!(ids("main", 10), ["r2", "r3", "r1", "r4"], "by start, then receipt");
        assert_eq!(ids("main", 2), ["r2", "r3"]);
        assert_eq!(idx.canary_runs("main", 0, 10).unwrap()[2], again);
        assert!(ids("nope", 10).is_empty());
        assert_eq!(idx.canary_lanes().unwrap(), ["B", "main", "pr"], "bytewise");

        // Older than 60 (r4, x), and beyond the newest 2 of each lane (r1).
        assert_eq!(idx.trim_canary_runs(60, 2).unwrap(), 3);
        assert_eq!(ids("main", 10), ["r2", "r3"]);
        assert_eq!(idx.canary_lanes().unwrap(), ["B", "main"]);
        assert_eq!(idx.trim_canary_runs(0, 2).unwrap(), 0);
        assert_eq!(idx.trim_canary_runs(0, 1).unwrap(), 1);
        assert_eq!(ids("main", 10), ["r2"]);
        assert_eq!(idx.trim_canary_runs(0, 0).unwrap(), 2);
        assert!(idx.canary_lanes().unwrap().is_empty());
    }

    #[test]
    fn a_canary_token_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
        idx.create_cache(&cache("main")).unwrap();
        let t = TokenRecord {
            hash: [5; 32],
            cache: "main".into(),
            scope: Scope::Canary,
            created_at: 3,
            expires_at: Some(10),
            description: Some("runner".into()),
        };
        idx.add_token(&t).unwrap();
        assert_eq!(idx.token(&[5; 32]).unwrap(), Some(t.clone()));
        assert_eq!(idx.tokens().unwrap(), [t]);
    }
}
