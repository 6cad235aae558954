//! [`Retention`] on the embedded SQLite index.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};

use super::retention::{DeleteGuard, GcMember, Pin, PinRevision, Removed, Retention, Usage};
use super::sqlite::{cache_id, db, hash32, hash_part_of, size, write_tx, SqliteIndex};
use super::sqlite_history::{hourly_key, this_hour};
use super::IndexError;

impl Retention for SqliteIndex {
    fn gc_snapshot(
        &self,
        cache: &str,
        member: &mut dyn FnMut(GcMember),
        reference: &mut dyn FnMut(i64, &str),
    ) -> Result<(), IndexError> {
        self.with(|conn| {
            // One read transaction: both queries see the same snapshot (WAL: writers go on).
            let tx = conn.unchecked_transaction().map_err(db)?;
            let id = cache_id(&tx, cache)?;
            {
                let mut stmt = tx
                    .prepare(
                        "SELECT p.id, p.hash_part, n.file_size, p.last_access, p.added_at
                         FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
                         WHERE p.cache = ?1 ORDER BY p.id",
                    )
                    .map_err(db)?;
                let mut rows = stmt.query([id]).map_err(db)?;
                while let Some(r) = rows.next().map_err(db)? {
                    let hash: String = r.get(1).map_err(db)?;
                    let hash_part = <[u8; 32]>::try_from(hash.as_bytes())
                        .map_err(|_| IndexError::Db(format!("a stored hash part is not 32 characters: {hash:?}")))?;
                    member(GcMember {
                        id: r.get(0).map_err(db)?,
                        hash_part,
                        file_size: size(r.get(2).map_err(db)?)?,
                        last_access: r.get(3).map_err(db)?,
                        added_at: r.get(4).map_err(db)?,
                    });
                }
            }
            {
                let mut stmt = tx
                    .prepare(
                        "SELECT r.path, r.reference FROM paths p JOIN refs r ON r.path = p.id WHERE p.cache = ?1
                         ORDER BY p.id",
                    )
                    .map_err(db)?;
                let mut rows = stmt.query([id]).map_err(db)?;
                while let Some(r) = rows.next().map_err(db)? {
                    let target = r.get_ref(1).map_err(db)?.as_str().map_err(|e| IndexError::Db(e.to_string()))?;
                    reference(r.get(0).map_err(db)?, target);
                }
            }
            tx.commit().map_err(db)
        })
    }

    fn store_paths(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT store_path FROM paths WHERE id = ?1").map_err(db)?;
            let mut out = Vec::with_capacity(ids.len());
            for &id in ids {
                if let Some(p) = stmt.query_row([id], |r| r.get::<_, String>(0)).optional().map_err(db)? {
                    out.push((id, p));
                }
            }
            Ok(out)
        })
    }

    fn gc_remove(
        &self,
        cache: &str,
        ids: &[i64],
        guard: &DeleteGuard<'_>,
        now: i64,
    ) -> Result<Vec<Removed>, IndexError> {
        let cache_name = cache;
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let cache = cache_id(&tx, cache)?;
            let mut removed = Vec::new();
            {
                let mut member = tx
                    .prepare_cached(
                        "SELECT p.added_at, p.last_access, p.store_path, p.hash_part, p.nar_hash, n.file_size
                         FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
                         WHERE p.cache = ?1 AND p.id = ?2",
                    )
                    .map_err(db)?;
                let mut referred = tx
                    .prepare_cached(
                        "SELECT 1 FROM refs r JOIN paths p ON p.id = r.path AND p.cache = ?1
                         WHERE r.reference = ?2 AND r.path != ?3 LIMIT 1",
                    )
                    .map_err(db)?;
                let mut pinned = tx
                    .prepare_cached("SELECT 1 FROM pin_revisions WHERE cache = ?1 AND store_path = ?2")
                    .map_err(db)?;
                let mut nar_used = tx.prepare_cached("SELECT 1 FROM paths WHERE nar_hash = ?1").map_err(db)?;
                let mut delete_listing =
                    tx.prepare_cached("DELETE FROM files WHERE cache = ?1 AND name = ?2").map_err(db)?;
                let mut delete_path = tx.prepare_cached("DELETE FROM paths WHERE id = ?1").map_err(db)?;
                let mut delete_nar = tx.prepare_cached("DELETE FROM nars WHERE nar_hash = ?1").map_err(db)?;
                let mut record_dead = tx
                    .prepare_cached("INSERT INTO dead_nars (nar_hash, since) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
                    .map_err(db)?;
                for &id in ids {
                    type Row = (i64, i64, String, String, Vec<u8>, i64);
                    let row: Option<Row> = member
                        .query_row(params![cache, id], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                        })
                        .optional()
                        .map_err(db)?;
                    let Some((added_at, last_access, store_path, hash_part, nar_hash, file_size)) = row else {
                        continue;
                    };
                    if added_at > guard.added_before
                        || last_access > guard.accessed_before
                        || (guard.in_use)(cache_name, &hash_part)
                        || referred.exists(params![cache, store_path, id]).map_err(db)?
                        || pinned.exists(params![cache, store_path]).map_err(db)?
                    {
                        continue;
                    }
                    delete_listing.execute(params![cache, format!("{hash_part}.ls")]).map_err(db)?;
                    delete_path.execute([id]).map_err(db)?;
                    // The NAR goes when no path of any cache uses it (they share the bytes).
                    let mut dead_nar = None;
                    if !nar_used.exists([&nar_hash]).map_err(db)? {
                        delete_nar.execute([&nar_hash]).map_err(db)?;
                        record_dead.execute(params![&nar_hash, now]).map_err(db)?;
                        dead_nar = Some(hash32(nar_hash)?);
                    }
                    removed.push(Removed { id, store_path, file_size: size(file_size)?, dead_nar });
                }
            }
            if !removed.is_empty() {
                let bytes: u64 = removed.iter().map(|r| r.file_size).sum();
                tx.execute(
                    "UPDATE cache_totals SET paths = paths - ?2, bytes = bytes - ?3 WHERE cache = ?1",
                    params![cache, removed.len() as i64, i64::try_from(bytes).unwrap_or(i64::MAX)],
                )
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO stats (cache, key, value) VALUES (?1, 'gc_removed', ?2)
                     ON CONFLICT (cache, key) DO UPDATE SET value = value + excluded.value",
                    params![cache, removed.len() as i64],
                )
                .map_err(db)?;
                let mut log =
                    tx.prepare_cached("INSERT INTO gc_log (cache, hash_part, at) VALUES (?1, ?2, ?3)").map_err(db)?;
                for r in &removed {
                    log.execute(params![cache_name, hash_part_of(&r.store_path)?, now / 1000]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)?;
            Ok(removed)
        })
    }

    fn pins(&self, cache: &str) -> Result<Vec<Pin>, IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            let mut pins = Vec::new();
            let mut stmt = conn
                .prepare("SELECT name, keep_revisions, keep_days FROM pins WHERE cache = ?1 ORDER BY name")
                .map_err(db)?;
            let rows = stmt
                .query_map([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?, r.get::<_, Option<i64>>(2)?))
                })
                .map_err(db)?;
            let count = |v: Option<i64>| v.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            for row in rows {
                let (name, keep_revisions, keep_days) = row.map_err(db)?;
                pins.push(Pin {
                    name,
                    keep_revisions: count(keep_revisions),
                    keep_days: count(keep_days),
                    revisions: vec![],
                });
            }
            let mut revs = conn
                .prepare(
                    "SELECT revision, store_path, pinned_at FROM pin_revisions WHERE cache = ?1 AND name = ?2
                     ORDER BY revision DESC",
                )
                .map_err(db)?;
            for pin in &mut pins {
                pin.revisions = revs
                    .query_map(params![id, pin.name], |r| {
                        Ok(PinRevision { revision: r.get(0)?, store_path: r.get(1)?, pinned_at: r.get(2)? })
                    })
                    .map_err(db)?
                    .collect::<Result<_, _>>()
                    .map_err(db)?;
            }
            Ok(pins)
        })
    }

    fn pin(
        &self,
        cache: &str,
        name: &str,
        store_path: &str,
        keep_revisions: Option<u32>,
        keep_days: Option<u32>,
        now: i64,
    ) -> Result<PinRevision, IndexError> {
        super::retention::check_pin_name(name)?;
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let id = cache_id(&tx, cache)?;
            let path: Option<i64> = tx
                .query_row(
                    "SELECT id FROM paths WHERE cache = ?1 AND hash_part = ?2 AND store_path = ?3",
                    params![id, hash_part_of(store_path)?, store_path],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(path) = path else {
                return Err(IndexError::NotInCache { cache: cache.to_string(), path: store_path.to_string() });
            };
            tx.execute("UPDATE paths SET last_access = max(last_access, ?2) WHERE id = ?1", params![path, now])
                .map_err(db)?;
            tx.execute(
                "INSERT INTO pins (cache, name, keep_revisions, keep_days) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (cache, name) DO UPDATE SET keep_revisions = excluded.keep_revisions,
                   keep_days = excluded.keep_days",
                params![id, name, keep_revisions, keep_days],
            )
            .map_err(db)?;
            let latest: Option<(i64, String)> = tx
                .query_row(
                    "SELECT revision, store_path FROM pin_revisions WHERE cache = ?1 AND name = ?2
                     ORDER BY revision DESC LIMIT 1",
                    params![id, name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let revision = match latest {
                Some((rev, path)) if path == store_path => {
                    tx.execute(
                        "UPDATE pin_revisions SET pinned_at = ?4 WHERE cache = ?1 AND name = ?2 AND revision = ?3",
                        params![id, name, rev, now],
                    )
                    .map_err(db)?;
                    rev
                }
                other => {
                    let rev = other.map_or(1, |(r, _)| r + 1);
                    tx.execute(
                        "INSERT INTO pin_revisions (cache, name, revision, store_path, pinned_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![id, name, rev, store_path, now],
                    )
                    .map_err(db)?;
                    rev
                }
            };
            tx.commit().map_err(db)?;
            Ok(PinRevision { revision, store_path: store_path.to_string(), pinned_at: now })
        })
    }

    fn release_pin_revisions(&self, cache: &str, released: &[(String, i64)]) -> Result<(), IndexError> {
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let id = cache_id(&tx, cache)?;
            for (name, rev) in released {
                tx.execute(
                    "DELETE FROM pin_revisions WHERE cache = ?1 AND name = ?2 AND revision = ?3",
                    params![id, name, rev],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn trim_gc_log(&self, before: i64) -> Result<(), IndexError> {
        self.with(|conn| {
            conn.execute("DELETE FROM gc_log WHERE at < ?1", [before]).map_err(db)?;
            Ok(())
        })
    }

    fn expire_uploads(&self, before: i64, now: i64) -> Result<u64, IndexError> {
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let nars: Vec<Vec<u8>> = tx
                .prepare("SELECT DISTINCT nar_hash FROM uploads WHERE created_at < ?1")
                .and_then(|mut s| s.query_map([before], |r| r.get(0))?.collect())
                .map_err(db)?;
            let expired = tx.execute("DELETE FROM uploads WHERE created_at < ?1", [before]).map_err(db)?;
            for nar in nars {
                tx.execute(
                    "INSERT INTO dead_nars (nar_hash, since) SELECT ?1, ?2
                     WHERE NOT EXISTS (SELECT 1 FROM nars WHERE nar_hash = ?1)
                       AND NOT EXISTS (SELECT 1 FROM uploads WHERE nar_hash = ?1)
                     ON CONFLICT DO NOTHING",
                    params![nar, now],
                )
                .map_err(db)?;
            }
            tx.commit().map_err(db)?;
            Ok(expired as u64)
        })
    }

    fn dead_nars(&self, before: i64, limit: usize) -> Result<Vec<[u8; 32]>, IndexError> {
        self.with(|conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt =
                conn.prepare_cached("SELECT nar_hash FROM dead_nars WHERE since <= ?1 LIMIT ?2").map_err(db)?;
            let rows = stmt.query_map(params![before, limit], |r| r.get::<_, Vec<u8>>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(hash32)).collect()
        })
    }

    fn bury_nars(
        &self,
        nars: &[[u8; 32]],
        unlink: &(dyn Fn(&[u8; 32]) -> std::io::Result<()> + Sync),
    ) -> Result<Vec<[u8; 32]>, IndexError> {
        use rayon::prelude::*;
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let mut unused = Vec::new();
            {
                let mut used = tx
                    .prepare_cached(
                        "SELECT 1 FROM nars WHERE nar_hash = ?1 UNION ALL SELECT 1 FROM uploads WHERE nar_hash = ?1",
                    )
                    .map_err(db)?;
                let mut forget = tx.prepare_cached("DELETE FROM dead_nars WHERE nar_hash = ?1").map_err(db)?;
                for nar in nars {
                    if !used.exists([&nar[..]]).map_err(db)? {
                        unused.push(*nar);
                    }
                    forget.execute([&nar[..]]).map_err(db)?;
                }
            }
            // Unlinking is the kernel's work, directory by directory: in parallel. An error
            // leaves the transaction uncommitted, so the dead NARs are tried again next time.
            let results: Vec<std::io::Result<()>> = unused.par_iter().map(unlink).collect();
            let mut buried = Vec::new();
            for (nar, r) in unused.into_iter().zip(results) {
                match r {
                    Ok(()) => buried.push(nar),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IndexError::Db(format!("removing a NAR: {e}"))),
                }
            }
            tx.commit().map_err(db)?;
            Ok(buried)
        })
    }

    fn known_nars(&self) -> Result<HashSet<[u8; 32]>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT nar_hash FROM nars UNION SELECT nar_hash FROM uploads UNION SELECT nar_hash FROM dead_nars",
                )
                .map_err(db)?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(hash32)).collect()
        })
    }

    fn gc_mode(&self, fast: bool) -> Result<(), IndexError> {
        self.with(|conn| {
            // WAL with synchronous=NORMAL: commits are not synced, the next synced commit (or
            // checkpoint) makes them durable in order.
            conn.pragma_update(None, "synchronous", if fast { "NORMAL" } else { "FULL" }).map_err(db)?;
            conn.pragma_update(None, "cache_size", if fast { -65_536 } else { -2_000 }).map_err(db)?;
            // Checkpointing every 1000 pages would write the same index pages back again and
            // again; GC checkpoints once, when it leaves this mode (readers never wait for it).
            conn.pragma_update(None, "wal_autocheckpoint", if fast { 0 } else { 1000 }).map_err(db)?;
            if !fast {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).map_err(db)?;
            }
            Ok(())
        })
    }

    fn gc_barrier(&self, caches: &[String]) -> Result<(), IndexError> {
        let runs: Vec<(String, String, i64)> = caches.iter().map(|c| (c.clone(), "gc_runs".to_string(), 1)).collect();
        self.with(|conn| conn.pragma_update(None, "synchronous", "FULL").map_err(db))?;
        // The WAL is one file written in order: syncing it for this commit syncs all before.
        let written = self.add_stats(&runs);
        self.with(|conn| conn.pragma_update(None, "synchronous", "NORMAL").map_err(db))?;
        written
    }

    fn add_stats(&self, deltas: &[(String, String, i64)]) -> Result<(), IndexError> {
        let hour = this_hour();
        self.with(|conn| {
            let tx = write_tx(conn)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO stats (cache, key, value) SELECT id, ?2, ?3 FROM caches WHERE name = ?1
                         ON CONFLICT (cache, key) DO UPDATE SET value = value + excluded.value",
                    )
                    .map_err(db)?;
                // The status page's counters by the hour, in the same transaction.
                let mut hourly = tx
                    .prepare_cached(
                        "INSERT INTO hourly_stats (cache, hour, key, value) SELECT id, ?2, ?3, ?4 FROM caches
                         WHERE name = ?1
                         ON CONFLICT (cache, hour, key) DO UPDATE SET value = value + excluded.value",
                    )
                    .map_err(db)?;
                for (cache, key, delta) in deltas {
                    stmt.execute(params![cache, key, delta]).map_err(db)?;
                    if let Some(key) = hourly_key(key) {
                        hourly.execute(params![cache, hour, key, delta]).map_err(db)?;
                    }
                }
            }
            tx.commit().map_err(db)
        })
    }

    fn stats(&self, cache: &str) -> Result<Vec<(String, i64)>, IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            let mut stmt = conn.prepare("SELECT key, value FROM stats WHERE cache = ?1 ORDER BY key").map_err(db)?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn usage_by_access(&self, cache: &str, now: i64, bounds: &[i64]) -> Result<Vec<Usage>, IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            let mut out = vec![Usage::default(); bounds.len() + 1];
            let mut stmt = conn
                .prepare(
                    "SELECT p.last_access, n.file_size FROM paths p
                     JOIN nars n ON n.nar_hash = p.nar_hash WHERE p.cache = ?1",
                )
                .map_err(db)?;
            let mut rows = stmt.query([id]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                let (at, bytes): (i64, i64) = (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
                let bytes = size(bytes)?;
                let age = now.saturating_sub(at);
                for (i, &bound) in bounds.iter().enumerate() {
                    if age <= bound {
                        out[i].paths += 1;
                        out[i].bytes += bytes;
                    }
                }
                let all = &mut out[bounds.len()];
                all.paths += 1;
                all.bytes += bytes;
            }
            Ok(out)
        })
    }

    fn stored_usage(&self) -> Result<Usage, IndexError> {
        self.with(|conn| {
            let (n, bytes): (i64, i64) = conn
                .query_row("SELECT count(*), coalesce(sum(file_size), 0) FROM nars", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?;
            Ok(Usage { paths: size(n)?, bytes: size(bytes)? })
        })
    }
}
