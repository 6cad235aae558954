-- 2: what the status page shows, as SQLite's migration 5 (sqlite.rs says why each is kept),
-- kept as things change so that a page view reads a few rows, never every path.
--
-- Writers of memberships wait here until this commits: the totals start from every
-- membership committed before, and the triggers count every one after.
LOCK TABLE members IN SHARE ROW EXCLUSIVE MODE;

-- Tokens may have the canary scope. The check is the one PostgreSQL named after its column in
-- 0001; dropping it by that name fails loudly should it ever be named otherwise.
ALTER TABLE tokens
    DROP CONSTRAINT tokens_scope_check,
    ADD CONSTRAINT tokens_scope_check CHECK (scope IN ('read', 'write', 'admin', 'canary'));

-- Each cache's paths and the bytes of their stored NARs. The functions resolve tables with
-- the search_path they were created under, whoever's session fires them.
CREATE TABLE cache_totals (
    cache       BIGINT PRIMARY KEY REFERENCES caches(id) ON DELETE CASCADE,
    paths       BIGINT NOT NULL,
    bytes       BIGINT NOT NULL
);
INSERT INTO cache_totals (cache, paths, bytes)
    SELECT m.cache, count(*), sum(n.file_size)
    FROM members m JOIN paths p ON p.id = m.path JOIN nars n ON n.nar_hash = p.nar_hash
    GROUP BY m.cache;

-- A push adds one membership per statement: counted row by row. The totals row is locked
-- last in add_path's transaction (after the NAR), so pushes to one cache queue only for the
-- commit.
CREATE FUNCTION cache_totals_member_added() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO cache_totals (cache, paths, bytes)
        SELECT NEW.cache, 1, n.file_size FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
        WHERE p.id = NEW.path
    ON CONFLICT (cache) DO UPDATE
        SET paths = cache_totals.paths + 1, bytes = cache_totals.bytes + excluded.bytes;
    RETURN NULL;
END
$$;
CREATE TRIGGER members_counted AFTER INSERT ON members
    FOR EACH ROW EXECUTE FUNCTION cache_totals_member_added();

-- GC removes a batch of memberships in one statement: counted once per statement (one update
-- of the cache's row, not one per path). A membership's bytes are its path's NAR's, looked up
-- here, so it must go before its path (GC's order). GC thus holds the cache's row before it
-- locks the paths and NARs it may forget: a push to the same cache of a path sharing one of
-- those NARs can deadlock with it (rare: two paths, one NAR), and is retried.
CREATE FUNCTION cache_totals_members_removed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE cache_totals t SET paths = t.paths - g.paths, bytes = t.bytes - g.bytes
    FROM (SELECT o.cache, count(*) AS paths, coalesce(sum(n.file_size), 0) AS bytes
          FROM gone o LEFT JOIN paths p ON p.id = o.path LEFT JOIN nars n ON n.nar_hash = p.nar_hash
          GROUP BY o.cache) g
    WHERE t.cache = g.cache;
    RETURN NULL;
END
$$;
CREATE TRIGGER members_uncounted AFTER DELETE ON members REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION cache_totals_members_removed();

-- Should a path ever go before its memberships (they then go by the cascade, after it, and
-- find no path), its bytes come off each cache that still holds it here, and the memberships
-- take off only themselves.
CREATE FUNCTION cache_totals_path_removed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE cache_totals SET bytes = bytes - (SELECT file_size FROM nars WHERE nar_hash = OLD.nar_hash)
    WHERE cache IN (SELECT cache FROM members WHERE path = OLD.id);
    RETURN OLD;
END
$$;
CREATE TRIGGER paths_uncounted BEFORE DELETE ON paths
    FOR EACH ROW EXECUTE FUNCTION cache_totals_path_removed();

CREATE TABLE hourly_stats (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    hour        BIGINT NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (cache, hour, key)
);
CREATE INDEX hourly_stats_hour ON hourly_stats(hour);
CREATE TABLE gc_summaries (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    summary     TEXT NOT NULL
);
CREATE INDEX gc_summaries_at ON gc_summaries(at, id);
CREATE TABLE canary_runs (
    lane        TEXT COLLATE "C" NOT NULL,
    run_id      TEXT COLLATE "C" NOT NULL,
    started_at  BIGINT NOT NULL,   -- unix milliseconds
    status      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (lane, run_id)
);
CREATE INDEX canary_runs_started ON canary_runs(lane, started_at);
