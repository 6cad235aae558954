//! [`History`] on the PostgreSQL index (the tables and triggers of `postgres/0002_status.sql`).
//! Same answers as SQLite's, in the same orders: the text they sort by is `COLLATE "C"`.

use super::history::{History, HourRow, StoredRun};
use super::postgres::{get, PostgresIndex, LOCK_LANES};
use super::retention::Usage;
use super::sqlite::size;
use super::sqlite_history::count;
use super::IndexError;

fn to_run(r: &postgres::Row) -> Result<StoredRun, super::postgres::Fail> {
    Ok(StoredRun {
        lane: get(r, 0)?,
        run_id: get(r, 1)?,
        started_at: get(r, 2)?,
        status: get(r, 3)?,
        received_at: get(r, 4)?,
        record: get(r, 5)?,
    })
}

impl History for PostgresIndex {
    fn cache_totals(&self) -> Result<Vec<(String, Usage)>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT c.name, coalesce(t.paths, 0), coalesce(t.bytes, 0)
                 FROM caches c LEFT JOIN cache_totals t ON t.cache = c.id ORDER BY c.name",
                &[],
            )?;
            rows.iter()
                .map(|r| Ok((get(r, 0)?, Usage { paths: size(get(r, 1)?)?, bytes: size(get(r, 2)?)? })))
                .collect()
        })
    }

    fn hourly_stats(&self, since: i64) -> Result<Vec<HourRow>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT c.name, h.hour, h.key, h.value FROM hourly_stats h JOIN caches c ON c.id = h.cache
                 WHERE h.hour >= $1 ORDER BY c.name, h.hour, h.key",
                &[&since],
            )?;
            rows.iter()
                .map(|r| Ok(HourRow { cache: get(r, 0)?, hour: get(r, 1)?, key: get(r, 2)?, value: get(r, 3)? }))
                .collect()
        })
    }

    fn trim_hourly_stats(&self, before: i64) -> Result<(), IndexError> {
        // Retried: two servers trimming at once may lock the same rows in different orders.
        self.write(|db| {
            db.exec("DELETE FROM hourly_stats WHERE hour < $1", &[&before])?;
            Ok(())
        })
    }

    fn record_gc_summary(&self, at: i64, summary: &str) -> Result<(), IndexError> {
        self.read(|db| {
            db.exec("INSERT INTO gc_summaries (at, summary) VALUES ($1, $2)", &[&at, &summary])?;
            Ok(())
        })
    }

    fn gc_summaries(&self, limit: usize) -> Result<Vec<(i64, String)>, IndexError> {
        self.read(|db| {
            let rows =
                db.query("SELECT at, summary FROM gc_summaries ORDER BY at DESC, id DESC LIMIT $1", &[&count(limit)])?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
        })
    }

    fn trim_gc_summaries(&self, keep: usize) -> Result<(), IndexError> {
        self.write(|db| {
            db.exec(
                "DELETE FROM gc_summaries WHERE id NOT IN (
                   SELECT id FROM gc_summaries ORDER BY at DESC, id DESC LIMIT $1)",
                &[&count(keep)],
            )?;
            Ok(())
        })
    }

    fn put_canary_run(&self, run: &StoredRun) -> Result<(), IndexError> {
        self.read(|db| {
            db.exec(
                "INSERT INTO canary_runs (lane, run_id, started_at, status, received_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (lane, run_id) DO UPDATE SET started_at = excluded.started_at,
                   status = excluded.status, received_at = excluded.received_at, record = excluded.record",
                &[&run.lane, &run.run_id, &run.started_at, &run.status, &run.received_at, &run.record],
            )?;
            Ok(())
        })
    }

    fn publish_canary_run(&self, run: &StoredRun, max_lanes: usize, keep: usize) -> Result<(), IndexError> {
        self.write(|db| {
            // One publisher at a time decides on a new lane: two servers cannot both take the
            // last one.
            db.exec("SELECT pg_advisory_xact_lock($1, $2)", &[&super::postgres::LOCK_CLASS, &LOCK_LANES])?;
            let known = db.opt("SELECT 1 FROM canary_runs WHERE lane = $1 LIMIT 1", &[&run.lane])?.is_some();
            if !known {
                let lanes: i64 = get(&db.one("SELECT count(DISTINCT lane) FROM canary_runs", &[])?, 0)?;
                if lanes >= count(max_lanes) {
                    return Err(IndexError::TooManyLanes(max_lanes).into());
                }
            }
            db.exec(
                "INSERT INTO canary_runs (lane, run_id, started_at, status, received_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (lane, run_id) DO UPDATE SET started_at = excluded.started_at,
                   status = excluded.status, received_at = excluded.received_at, record = excluded.record",
                &[&run.lane, &run.run_id, &run.started_at, &run.status, &run.received_at, &run.record],
            )?;
            db.exec(
                "DELETE FROM canary_runs WHERE lane = $1 AND run_id IN (
                   SELECT run_id FROM canary_runs WHERE lane = $1
                   ORDER BY started_at DESC, received_at DESC, run_id DESC OFFSET $2)",
                &[&run.lane, &count(keep.max(1))],
            )?;
            Ok(())
        })
    }

    fn canary_runs(&self, lane: &str, offset: usize, limit: usize) -> Result<Vec<StoredRun>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT lane, run_id, started_at, status, received_at, record FROM canary_runs WHERE lane = $1
                 ORDER BY started_at DESC, received_at DESC, run_id DESC LIMIT $2 OFFSET $3",
                &[&lane, &count(limit), &count(offset)],
            )?;
            rows.iter().map(to_run).collect()
        })
    }

    fn canary_lanes(&self) -> Result<Vec<String>, IndexError> {
        self.read(|db| {
            let rows = db.query("SELECT DISTINCT lane FROM canary_runs ORDER BY lane", &[])?;
            rows.iter().map(|r| get(r, 0)).collect()
        })
    }

    fn trim_canary_runs(&self, before: i64, keep: usize) -> Result<u64, IndexError> {
        self.write(|db| {
            Ok(db.exec(
                "DELETE FROM canary_runs WHERE started_at < $1 OR (lane, run_id) IN (
                   SELECT lane, run_id FROM (
                     SELECT lane, run_id, row_number() OVER (
                       PARTITION BY lane ORDER BY started_at DESC, received_at DESC, run_id DESC) AS n
                     FROM canary_runs) ranked
                   WHERE n > $2)",
                &[&before, &count(keep)],
            )?)
        })
    }
}
