-- 3: each cache's paths are its own, as SQLite's migration 6 (sqlite.rs says why). A row is
-- (cache, store path) with the NarHash, references and signatures uploaded to that cache; NARs
-- stay shared by NarHash. Every membership becomes a row of its own; one that joined a path
-- another cache held first is kept but marked `adopted` (`flywheel cache verify` lists it, and
-- the cache's next upload of the path replaces it).
--
-- Writers of paths and memberships wait here until this commits.
LOCK TABLE members, paths, refs IN ACCESS EXCLUSIVE MODE;

CREATE TABLE cache_paths (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    hash_part   TEXT COLLATE "C" NOT NULL,
    store_path  TEXT COLLATE "C" NOT NULL,
    nar_hash    BYTEA NOT NULL REFERENCES nars(nar_hash),
    deriver     TEXT,
    ca          TEXT,
    sigs        TEXT NOT NULL,
    added_at    BIGINT NOT NULL,
    last_access BIGINT NOT NULL,
    adopted     BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (cache, hash_part)
);
INSERT INTO cache_paths (cache, hash_part, store_path, nar_hash, deriver, ca, sigs, added_at, last_access, adopted)
    SELECT m.cache, p.hash_part, p.store_path, p.nar_hash, p.deriver, p.ca, p.sigs, m.added_at, p.last_access,
           EXISTS (SELECT 1 FROM members o WHERE o.path = m.path
                   AND (o.added_at < m.added_at OR (o.added_at = m.added_at AND o.cache < m.cache)))
    FROM members m JOIN paths p ON p.id = m.path
    ORDER BY m.cache, p.hash_part;
CREATE TABLE cache_refs (
    path        BIGINT NOT NULL REFERENCES cache_paths(id) ON DELETE CASCADE,
    reference   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (path, reference)
);
INSERT INTO cache_refs (path, reference)
    SELECT n.id, r.reference FROM cache_paths n JOIN paths p ON p.hash_part = n.hash_part JOIN refs r ON r.path = p.id;

-- The totals count rows from here on; they hold the same figures (a row per membership).
DROP TABLE members;
DROP TABLE refs;
DROP TABLE paths;
DROP FUNCTION cache_totals_member_added();
DROP FUNCTION cache_totals_members_removed();
DROP FUNCTION cache_totals_path_removed();
ALTER TABLE cache_paths RENAME TO paths;
ALTER TABLE cache_refs RENAME TO refs;
CREATE INDEX paths_nar ON paths(nar_hash, cache);
CREATE INDEX paths_last_access ON paths(last_access);
CREATE INDEX refs_reference ON refs(reference);

-- A push adds one path per statement: counted row by row, the totals row locked last in
-- add_path's transaction (after the NAR), so pushes to one cache queue only for the commit.
CREATE FUNCTION cache_totals_path_added() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO cache_totals (cache, paths, bytes)
        SELECT NEW.cache, 1, n.file_size FROM nars n WHERE n.nar_hash = NEW.nar_hash
    ON CONFLICT (cache) DO UPDATE
        SET paths = cache_totals.paths + 1, bytes = cache_totals.bytes + excluded.bytes;
    RETURN NULL;
END
$$;
CREATE TRIGGER paths_counted AFTER INSERT ON paths
    FOR EACH ROW EXECUTE FUNCTION cache_totals_path_added();

-- GC removes a batch of paths in one statement: counted once per statement. A path's bytes are
-- its NAR's, looked up here, so the path must go before its NAR (GC's order).
CREATE FUNCTION cache_totals_paths_removed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE cache_totals t SET paths = t.paths - g.paths, bytes = t.bytes - g.bytes
    FROM (SELECT o.cache, count(*) AS paths, coalesce(sum(n.file_size), 0) AS bytes
          FROM gone o LEFT JOIN nars n ON n.nar_hash = o.nar_hash
          GROUP BY o.cache) g
    WHERE t.cache = g.cache;
    RETURN NULL;
END
$$;
CREATE TRIGGER paths_uncounted AFTER DELETE ON paths REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION cache_totals_paths_removed();
