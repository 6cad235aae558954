//! [`Retention`] on the PostgreSQL index.
//!
//! Only one collection runs at a time ([`super::Index::try_gc_lock`]), so only one transaction
//! at a time deletes paths, records dead NARs, trims the removal log or unlinks NARs; servers
//! add paths, pins, uploads and accesses concurrently with it. GC's deletions lock what they
//! check (see `postgres.rs`), so a concurrent push or pin never loses a path its closure needs.

use std::collections::{HashMap, HashSet};

use super::postgres::{cache_id, get, Fail, PostgresIndex};
use super::retention::{DeleteGuard, GcMember, Pin, PinRevision, Removed, Retention, Usage};
use super::sqlite::{hash32, hash_part_of, size};
use super::sqlite_history::{hourly_key, this_hour};
use super::IndexError;

impl Retention for PostgresIndex {
    fn gc_snapshot(
        &self,
        cache: &str,
        member: &mut dyn FnMut(GcMember),
        reference: &mut dyn FnMut(i64, &str),
    ) -> Result<(), IndexError> {
        // One repeatable-read transaction: both queries see the same snapshot (writers go on).
        self.once(true, |db| {
            let id = cache_id(db, cache)?;
            db.stream(
                "SELECT p.id, p.hash_part, n.file_size, p.last_access, p.added_at
                 FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
                 WHERE p.cache = $1 ORDER BY p.id",
                &[&id],
                |r| {
                    let hash: &str = get(r, 1)?;
                    let hash_part = <[u8; 32]>::try_from(hash.as_bytes())
                        .map_err(|_| IndexError::Db(format!("a stored hash part is not 32 characters: {hash:?}")))?;
                    member(GcMember {
                        id: get(r, 0)?,
                        hash_part,
                        file_size: size(get(r, 2)?)?,
                        last_access: get(r, 3)?,
                        added_at: get(r, 4)?,
                    });
                    Ok(())
                },
            )?;
            db.stream(
                "SELECT r.path, r.reference FROM paths p JOIN refs r ON r.path = p.id WHERE p.cache = $1
                 ORDER BY r.path, r.reference",
                &[&id],
                |r| {
                    reference(get(r, 0)?, get(r, 1)?);
                    Ok(())
                },
            )
        })
    }

    fn store_paths(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, IndexError> {
        self.read(|db| {
            let mut found: HashMap<i64, String> = HashMap::with_capacity(ids.len());
            for r in db.query("SELECT id, store_path FROM paths WHERE id = ANY($1)", &[&ids])? {
                found.insert(get(&r, 0)?, get(&r, 1)?);
            }
            Ok(ids.iter().filter_map(|id| Some((*id, found.get(id)?.clone()))).collect())
        })
    }

    fn gc_remove(
        &self,
        cache: &str,
        ids: &[i64],
        guard: &DeleteGuard<'_>,
        now: i64,
    ) -> Result<Vec<Removed>, IndexError> {
        self.write(|db| {
            let cache_id = cache_id(db, cache)?;
            struct Candidate {
                added_at: i64,
                last_access: i64,
                store_path: String,
                hash_part: String,
                file_size: i64,
                nar_hash: Vec<u8>,
            }
            // The cache's paths that may go, locked: until this commits, no push can start
            // referring to one of them, no pin can name one (both lock the path first), and any
            // that was doing so has committed and is seen below.
            let mut candidates: HashMap<i64, Candidate> = HashMap::new();
            for r in db.query(
                "SELECT p.id, p.added_at, p.last_access, p.store_path, p.hash_part, n.file_size, p.nar_hash
                 FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
                 WHERE p.cache = $1 AND p.id = ANY($2) ORDER BY p.id FOR UPDATE OF p",
                &[&cache_id, &ids],
            )? {
                candidates.insert(
                    get(&r, 0)?,
                    Candidate {
                        added_at: get(&r, 1)?,
                        last_access: get(&r, 2)?,
                        store_path: get(&r, 3)?,
                        hash_part: get(&r, 4)?,
                        file_size: get(&r, 5)?,
                        nar_hash: get(&r, 6)?,
                    },
                );
            }
            let store_paths: Vec<&str> = candidates.values().map(|c| c.store_path.as_str()).collect();
            let mut pinned: HashSet<String> = HashSet::new();
            for r in db.query(
                "SELECT store_path FROM pin_revisions WHERE cache = $1 AND store_path = ANY($2)",
                &[&cache_id, &store_paths],
            )? {
                pinned.insert(get(&r, 0)?);
            }
            // Every path of the cache that refers to a candidate: (referenced, referrer).
            let mut referrers: HashMap<String, Vec<i64>> = HashMap::new();
            for r in db.query(
                "SELECT r.reference, r.path FROM refs r JOIN paths p ON p.id = r.path AND p.cache = $1
                 WHERE r.reference = ANY($2)",
                &[&cache_id, &store_paths],
            )? {
                referrers.entry(get(&r, 0)?).or_default().push(get(&r, 1)?);
            }
            // In the order given, as SQLite decides one by one: a path goes unless a path
            // still refers to it (one not removed before it here), a pin names it, or the
            // guard says it is new or in use.
            let mut gone: HashSet<i64> = HashSet::new();
            let mut order: Vec<i64> = Vec::new();
            for &id in ids {
                let Some(c) = candidates.get(&id) else { continue };
                if gone.contains(&id) {
                    continue;
                }
                let referred = || {
                    referrers.get(&c.store_path).is_some_and(|from| from.iter().any(|r| *r != id && !gone.contains(r)))
                };
                if c.added_at > guard.added_before
                    || c.last_access > guard.accessed_before
                    || (guard.in_use)(cache, &c.hash_part)
                    || referred()
                    || pinned.contains(&c.store_path)
                {
                    continue;
                }
                gone.insert(id);
                order.push(id);
            }
            if order.is_empty() {
                return Ok(Vec::new());
            }
            db.exec("DELETE FROM paths WHERE cache = $1 AND id = ANY($2)", &[&cache_id, &order])?;
            let listings: Vec<String> = order.iter().map(|id| format!("{}.ls", candidates[id].hash_part)).collect();
            db.exec("DELETE FROM files WHERE cache = $1 AND name = ANY($2)", &[&cache_id, &listings])?;
            let forgotten: HashMap<i64, Vec<u8>> =
                order.iter().map(|id| (*id, candidates[id].nar_hash.clone())).collect();
            // Their NARs, unless a path of any cache still uses one (they share the bytes):
            // locked first, then checked in a statement of its own (a fresh snapshot), so a push
            // adding a path with one of them has either committed (and is seen) or waits, and
            // then finds the NAR gone.
            let mut nars: Vec<&[u8]> = forgotten.values().map(Vec::as_slice).collect();
            nars.sort_unstable();
            nars.dedup();
            let mut dead: HashSet<Vec<u8>> = HashSet::new();
            if !nars.is_empty() {
                db.exec("SELECT nar_hash FROM nars WHERE nar_hash = ANY($1) ORDER BY nar_hash FOR UPDATE", &[&nars])?;
                for r in db.query(
                    "DELETE FROM nars n WHERE n.nar_hash = ANY($1)
                       AND NOT EXISTS (SELECT 1 FROM paths p WHERE p.nar_hash = n.nar_hash)
                     RETURNING n.nar_hash",
                    &[&nars],
                )? {
                    dead.insert(get(&r, 0)?);
                }
                let dead_list: Vec<&[u8]> = dead.iter().map(Vec::as_slice).collect();
                db.exec(
                    "INSERT INTO dead_nars (nar_hash, since) SELECT unnest($1::bytea[]), $2 ON CONFLICT DO NOTHING",
                    &[&dead_list, &now],
                )?;
            }
            // A dead NAR is reported with the last path removed that used it (SQLite, going one
            // by one, finds it unused only then).
            let mut removed: Vec<Removed> = Vec::with_capacity(order.len());
            let mut reported: HashSet<&[u8]> = HashSet::new();
            for id in order.iter().rev() {
                let c = &candidates[id];
                let dead_nar = match forgotten.get(id) {
                    Some(nar) if dead.contains(nar) && reported.insert(nar.as_slice()) => Some(hash32(nar.clone())?),
                    _ => None,
                };
                removed.push(Removed {
                    id: *id,
                    store_path: c.store_path.clone(),
                    file_size: size(c.file_size)?,
                    dead_nar,
                });
            }
            removed.reverse();
            db.exec(
                "INSERT INTO stats (cache, key, value) VALUES ($1, 'gc_removed', $2)
                 ON CONFLICT (cache, key) DO UPDATE SET value = stats.value + excluded.value",
                &[&cache_id, &(removed.len() as i64)],
            )?;
            // Positions taken under the position row's lock, held until this commits: see the
            // schema. (Only GC writes the log, one collection at a time; the lock keeps the
            // positions in commit order even if that ever changes.)
            let hash_parts = removed.iter().map(|r| hash_part_of(&r.store_path)).collect::<Result<Vec<&str>, _>>()?;
            let end: i64 = get(
                &db.one("UPDATE gc_log_position SET last = last + $1 RETURNING last", &[&(hash_parts.len() as i64)])?,
                0,
            )?;
            db.exec(
                "INSERT INTO gc_log (seq, cache, hash_part, at)
                 SELECT $1 + h.n, $2, h.hash_part, $3 FROM unnest($4::text[]) WITH ORDINALITY AS h(hash_part, n)",
                &[&(end - hash_parts.len() as i64), &cache, &(now / 1000), &hash_parts],
            )?;
            Ok(removed)
        })
    }

    fn pins(&self, cache: &str) -> Result<Vec<Pin>, IndexError> {
        self.read(|db| {
            let id = cache_id(db, cache)?;
            let count = |v: Option<i64>| v.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
            let mut pins: Vec<Pin> = Vec::new();
            // One statement: the pins and their revisions from one snapshot.
            for r in db.query(
                "SELECT p.name, p.keep_revisions, p.keep_days, r.revision, r.store_path, r.pinned_at
                 FROM pins p LEFT JOIN pin_revisions r ON r.cache = p.cache AND r.name = p.name
                 WHERE p.cache = $1 ORDER BY p.name, r.revision DESC",
                &[&id],
            )? {
                let name: String = get(&r, 0)?;
                if pins.last().is_none_or(|p| p.name != name) {
                    pins.push(Pin {
                        name,
                        keep_revisions: count(get(&r, 1)?),
                        keep_days: count(get(&r, 2)?),
                        revisions: Vec::new(),
                    });
                }
                if let (Some(revision), Some(store_path), Some(pinned_at)) = (get(&r, 3)?, get(&r, 4)?, get(&r, 5)?) {
                    if let Some(pin) = pins.last_mut() {
                        pin.revisions.push(PinRevision { revision, store_path, pinned_at });
                    }
                }
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
        let (keep_revisions, keep_days) = (keep_revisions.map(i64::from), keep_days.map(i64::from));
        self.write(|db| {
            let id = cache_id(db, cache)?;
            // The path locked: GC cannot remove it before this pin is committed.
            let path = db.opt(
                "SELECT id FROM paths WHERE cache = $1 AND hash_part = $2 AND store_path = $3 FOR KEY SHARE",
                &[&id, &hash_part_of(store_path)?, &store_path],
            )?;
            let Some(path) = path else {
                return Err(IndexError::NotInCache { cache: cache.to_string(), path: store_path.to_string() }.into());
            };
            let path: i64 = get(&path, 0)?;
            db.exec("UPDATE paths SET last_access = greatest(last_access, $2) WHERE id = $1", &[&path, &now])?;
            // The upsert locks the pin's row: pins of the same name take their turns from here,
            // each seeing the revisions the one before committed.
            db.exec(
                "INSERT INTO pins (cache, name, keep_revisions, keep_days) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (cache, name) DO UPDATE SET keep_revisions = excluded.keep_revisions,
                   keep_days = excluded.keep_days",
                &[&id, &name, &keep_revisions, &keep_days],
            )?;
            let latest = db.opt(
                "SELECT revision, store_path FROM pin_revisions WHERE cache = $1 AND name = $2
                 ORDER BY revision DESC LIMIT 1",
                &[&id, &name],
            )?;
            let latest: Option<(i64, String)> =
                latest.map(|r| Ok::<_, Fail>((get(&r, 0)?, get(&r, 1)?))).transpose()?;
            let revision = match latest {
                Some((rev, path)) if path == store_path => {
                    db.exec(
                        "UPDATE pin_revisions SET pinned_at = $4 WHERE cache = $1 AND name = $2 AND revision = $3",
                        &[&id, &name, &rev, &now],
                    )?;
                    rev
                }
                other => {
                    let rev = other.map_or(1, |(r, _)| r + 1);
                    db.exec(
                        "INSERT INTO pin_revisions (cache, name, revision, store_path, pinned_at)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&id, &name, &rev, &store_path, &now],
                    )?;
                    rev
                }
            };
            Ok(PinRevision { revision, store_path: store_path.to_string(), pinned_at: now })
        })
    }

    fn release_pin_revisions(&self, cache: &str, released: &[(String, i64)]) -> Result<(), IndexError> {
        let (names, revisions): (Vec<&str>, Vec<i64>) = released.iter().map(|(n, r)| (n.as_str(), *r)).unzip();
        let mut pins = names.clone();
        pins.sort_unstable();
        pins.dedup();
        self.write(|db| {
            let id = cache_id(db, cache)?;
            if names.is_empty() {
                return Ok(());
            }
            // The pins' rows, as a pin locks them: a concurrent pin numbers its revision after.
            db.exec(
                "SELECT name FROM pins WHERE cache = $1 AND name = ANY($2) ORDER BY name FOR NO KEY UPDATE",
                &[&id, &pins],
            )?;
            db.exec(
                "DELETE FROM pin_revisions r USING unnest($2::text[], $3::bigint[]) AS d(name, revision)
                 WHERE r.cache = $1 AND r.name = d.name AND r.revision = d.revision",
                &[&id, &names, &revisions],
            )?;
            Ok(())
        })
    }

    fn trim_gc_log(&self, before: i64) -> Result<(), IndexError> {
        self.read(|db| {
            db.exec("DELETE FROM gc_log WHERE at < $1", &[&before])?;
            Ok(())
        })
    }

    fn expire_uploads(&self, before: i64, now: i64) -> Result<u64, IndexError> {
        self.write(|db| {
            // An upload a push is consuming is locked by it: this waits, then finds it gone.
            let deleted = db.query("DELETE FROM uploads WHERE created_at < $1 RETURNING nar_hash", &[&before])?;
            let mut nars: Vec<Vec<u8>> = deleted.iter().map(|r| get(r, 0)).collect::<Result<_, _>>()?;
            nars.sort_unstable();
            nars.dedup();
            db.exec(
                "INSERT INTO dead_nars (nar_hash, since) SELECT u.h, $2 FROM unnest($1::bytea[]) AS u(h)
                 WHERE NOT EXISTS (SELECT 1 FROM nars WHERE nar_hash = u.h)
                   AND NOT EXISTS (SELECT 1 FROM uploads WHERE nar_hash = u.h)
                 ON CONFLICT DO NOTHING",
                &[&nars, &now],
            )?;
            Ok(deleted.len() as u64)
        })
    }

    fn dead_nars(&self, before: i64, limit: usize) -> Result<Vec<[u8; 32]>, IndexError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(|db| {
            let rows = db.query(
                "SELECT nar_hash FROM dead_nars WHERE since <= $1 ORDER BY nar_hash LIMIT $2",
                &[&before, &limit],
            )?;
            rows.iter().map(|r| Ok(hash32(get(r, 0)?)?)).collect()
        })
    }

    fn bury_nars(
        &self,
        nars: &[[u8; 32]],
        unlink: &(dyn Fn(&[u8; 32]) -> std::io::Result<()> + Sync),
    ) -> Result<Vec<[u8; 32]>, IndexError> {
        use rayon::prelude::*;
        let hashes: Vec<&[u8]> = nars.iter().map(|n| &n[..]).collect();
        // Not retried: unlinking is not undone with the transaction. GC calls this under the
        // exclusive NAR lock, so no upload can start using one of these NARs meanwhile; one
        // statement (one snapshot) sees a push that consumes an upload either before (the
        // upload) or after (the NAR).
        self.once(false, |db| {
            let mut used: HashSet<Vec<u8>> = HashSet::new();
            for r in db.query(
                "SELECT u.h FROM unnest($1::bytea[]) AS u(h)
                 WHERE EXISTS (SELECT 1 FROM nars WHERE nar_hash = u.h) OR EXISTS (SELECT 1 FROM uploads WHERE nar_hash = u.h)",
                &[&hashes],
            )? {
                used.insert(get(&r, 0)?);
            }
            db.exec("DELETE FROM dead_nars WHERE nar_hash = ANY($1)", &[&hashes])?;
            let unused: Vec<[u8; 32]> = nars.iter().filter(|n| !used.contains(&n[..])).copied().collect();
            // An error leaves the transaction uncommitted, so the dead NARs are tried again.
            let results: Vec<std::io::Result<()>> = unused.par_iter().map(unlink).collect();
            let mut buried = Vec::new();
            for (nar, r) in unused.into_iter().zip(results) {
                match r {
                    Ok(()) => buried.push(nar),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IndexError::Db(format!("removing a NAR: {e}")).into()),
                }
            }
            Ok(buried)
        })
    }

    fn known_nars(&self) -> Result<HashSet<[u8; 32]>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT nar_hash FROM nars UNION SELECT nar_hash FROM uploads UNION SELECT nar_hash FROM dead_nars",
                &[],
            )?;
            rows.iter().map(|r| Ok(hash32(get(r, 0)?)?)).collect()
        })
    }

    /// Nothing to do: every commit is durable as the server is configured
    /// (`synchronous_commit`), and GC's short transactions need no larger cache.
    fn gc_mode(&self, _fast: bool) -> Result<(), IndexError> {
        Ok(())
    }

    fn gc_barrier(&self, caches: &[String]) -> Result<(), IndexError> {
        let runs: Vec<(String, String, i64)> = caches.iter().map(|c| (c.clone(), "gc_runs".to_string(), 1)).collect();
        self.add_stats(&runs)
    }

    fn add_stats(&self, deltas: &[(String, String, i64)]) -> Result<(), IndexError> {
        // Summed per counter first (one statement may not update a row twice), in key order
        // (two servers' additions lock their rows in the same order).
        let mut sums: std::collections::BTreeMap<(&str, &str), i64> = std::collections::BTreeMap::new();
        for (cache, key, delta) in deltas {
            let s = sums.entry((cache, key)).or_insert(0);
            *s = s.saturating_add(*delta);
        }
        if sums.is_empty() {
            return Ok(());
        }
        // The status page's counters by the hour, summed the same way.
        let hour = this_hour();
        let mut hourly: std::collections::BTreeMap<(&str, &str), i64> = std::collections::BTreeMap::new();
        for (cache, key, delta) in deltas {
            if let Some(key) = hourly_key(key) {
                let s = hourly.entry((cache, key)).or_insert(0);
                *s = s.saturating_add(*delta);
            }
        }
        let (caches, keys, values) = columns(sums);
        let (hourly_caches, hourly_keys, hourly_values) = columns(hourly);
        self.write(|db| {
            // Unknown caches are skipped, as SQLite's INSERT … SELECT skips them.
            db.exec(
                "INSERT INTO stats (cache, key, value)
                 SELECT c.id, d.key, d.delta FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(cache, key, delta)
                 JOIN caches c ON c.name = d.cache ORDER BY c.id, d.key
                 ON CONFLICT (cache, key) DO UPDATE SET value = stats.value + excluded.value",
                &[&caches, &keys, &values],
            )?;
            if !hourly_caches.is_empty() {
                db.exec(
                    "INSERT INTO hourly_stats (cache, hour, key, value)
                     SELECT c.id, $4, d.key, d.delta
                     FROM unnest($1::text[], $2::text[], $3::bigint[]) AS d(cache, key, delta)
                     JOIN caches c ON c.name = d.cache ORDER BY c.id, d.key
                     ON CONFLICT (cache, hour, key) DO UPDATE SET value = hourly_stats.value + excluded.value",
                    &[&hourly_caches, &hourly_keys, &hourly_values, &hour],
                )?;
            }
            Ok(())
        })
    }

    fn stats(&self, cache: &str) -> Result<Vec<(String, i64)>, IndexError> {
        self.read(|db| {
            let id = cache_id(db, cache)?;
            let rows = db.query("SELECT key, value FROM stats WHERE cache = $1 ORDER BY key", &[&id])?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
        })
    }

    fn usage_by_access(&self, cache: &str, now: i64, bounds: &[i64]) -> Result<Vec<Usage>, IndexError> {
        self.once(true, |db| {
            let id = cache_id(db, cache)?;
            let mut out = vec![Usage::default(); bounds.len() + 1];
            db.stream(
                "SELECT p.last_access, n.file_size FROM paths p
                 JOIN nars n ON n.nar_hash = p.nar_hash WHERE p.cache = $1",
                &[&id],
                |r| {
                    let (at, bytes): (i64, i64) = (get(r, 0)?, get(r, 1)?);
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
                    Ok(())
                },
            )?;
            Ok(out)
        })
    }

    fn stored_usage(&self) -> Result<Usage, IndexError> {
        self.read(|db| {
            let r = db.one("SELECT count(*), coalesce(sum(file_size), 0)::bigint FROM nars", &[])?;
            Ok(Usage { paths: size(get(&r, 0)?)?, bytes: size(get(&r, 1)?)? })
        })
    }
}

/// Summed counters as the columns `unnest` takes: caches, keys, values.
fn columns<'a>(sums: std::collections::BTreeMap<(&'a str, &'a str), i64>) -> (Vec<&'a str>, Vec<&'a str>, Vec<i64>) {
    let mut caches = Vec::with_capacity(sums.len());
    let mut keys = Vec::with_capacity(sums.len());
    let mut values = Vec::with_capacity(sums.len());
    for ((c, k), v) in sums {
        caches.push(c);
        keys.push(k);
        values.push(v);
    }
    (caches, keys, values)
}
