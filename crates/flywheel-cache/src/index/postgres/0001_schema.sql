-- 1: the schema the embedded SQLite index reaches with its migrations 1 to 4 (sqlite.rs says
-- what each table is for), in PostgreSQL's types: BYTEA hashes, BIGINT times, sizes and
-- counts, identity ids; the same keys, foreign keys (ON DELETE CASCADE where SQLite has it)
-- and indexes. Text the index sorts or compares sorts bytewise (COLLATE "C"), as in SQLite,
-- whatever the database's own collation.
CREATE TABLE caches (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    visibility  TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
    priority    BIGINT NOT NULL,
    secret_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE tokens (
    hash        BYTEA PRIMARY KEY,
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    description TEXT
);
CREATE TABLE nars (
    nar_hash    BYTEA PRIMARY KEY,
    nar_size    BIGINT NOT NULL,
    file_hash   BYTEA NOT NULL,
    file_size   BIGINT NOT NULL,
    compression TEXT NOT NULL,
    stored_at   BIGINT NOT NULL
);
CREATE TABLE paths (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hash_part   TEXT COLLATE "C" NOT NULL UNIQUE,
    store_path  TEXT COLLATE "C" NOT NULL,
    nar_hash    BYTEA NOT NULL REFERENCES nars(nar_hash),
    deriver     TEXT,
    ca          TEXT,
    sigs        TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    last_access BIGINT NOT NULL
);
CREATE INDEX paths_nar ON paths(nar_hash);
CREATE INDEX paths_last_access ON paths(last_access);
CREATE TABLE refs (
    path        BIGINT NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    reference   TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (path, reference)
);
CREATE INDEX refs_reference ON refs(reference);
CREATE TABLE members (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    path        BIGINT NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    added_at    BIGINT NOT NULL,
    PRIMARY KEY (cache, path)
);
CREATE INDEX members_path ON members(path);
CREATE TABLE uploads (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    url         TEXT COLLATE "C" NOT NULL,
    nar_hash    BYTEA NOT NULL,
    nar_size    BIGINT NOT NULL,
    file_hash   BYTEA NOT NULL,
    file_size   BIGINT NOT NULL,
    compression TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (cache, url)
);
CREATE INDEX uploads_nar ON uploads(nar_hash);
CREATE INDEX uploads_created ON uploads(created_at);
CREATE TABLE upstream (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    hash_part   TEXT COLLATE "C" NOT NULL,
    store_path  TEXT COLLATE "C" NOT NULL,
    key_name    TEXT NOT NULL,
    recorded_at BIGINT NOT NULL,
    PRIMARY KEY (cache, hash_part)
);
CREATE TABLE files (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    body        BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    content_encoding TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (cache, name)
);
CREATE TABLE pins (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    keep_revisions BIGINT,
    keep_days   BIGINT,
    PRIMARY KEY (cache, name)
);
CREATE TABLE pin_revisions (
    cache       BIGINT NOT NULL,
    name        TEXT COLLATE "C" NOT NULL,
    revision    BIGINT NOT NULL,
    store_path  TEXT COLLATE "C" NOT NULL,
    pinned_at   BIGINT NOT NULL,
    PRIMARY KEY (cache, name, revision),
    FOREIGN KEY (cache, name) REFERENCES pins(cache, name) ON DELETE CASCADE
);
CREATE INDEX pin_revisions_path ON pin_revisions(cache, store_path);
-- `since` is in milliseconds.
CREATE TABLE dead_nars (
    nar_hash    BYTEA PRIMARY KEY,
    since       BIGINT NOT NULL
);
CREATE TABLE stats (
    cache       BIGINT NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
    key         TEXT COLLATE "C" NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (cache, key)
);
-- What GC removed, in order. Positions are not a sequence's: nextval is not transactional, so
-- two transactions could commit their positions out of order and a server that had read the
-- later one would never read the earlier. They are counted in gc_log_position's one row,
-- which each writer updates (and so holds locked) until it commits: positions are committed in
-- order, and the row says how far the log has reached even once every row is trimmed.
CREATE TABLE gc_log (
    seq         BIGINT PRIMARY KEY,
    cache       TEXT COLLATE "C" NOT NULL,
    hash_part   TEXT COLLATE "C" NOT NULL,
    at          BIGINT NOT NULL
);
CREATE TABLE gc_log_position (
    one         BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    last        BIGINT NOT NULL
);
INSERT INTO gc_log_position (one, last) VALUES (true, 0);
