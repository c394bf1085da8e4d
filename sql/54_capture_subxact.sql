-- A capture flush inside a subtransaction stores only the rows diverted at
-- that level or deeper: rows diverted by an outer level stay buffered for
-- that level's own flush, so a subtransaction that rolls back never takes
-- them with it.  Every flush is covered: the end of a statement (the AFTER
-- STATEMENT trigger dlq_attach adds), every CAPTURE_BATCH (1000) rows, and
-- before commit; in savepoints, plpgsql exception blocks and COPY.  Each
-- check compares dlq.messages with the rows of the levels that survived,
-- and dlq.counts with dlq.messages.
SET client_min_messages = warning;

-- sx.ok(queue, ids): does the queue hold exactly one message per id (the
-- payload's "id"), and does dlq.counts agree with dlq.messages?
CREATE SCHEMA sx;
CREATE FUNCTION sx.ok(q text, ids int[]) RETURNS text LANGUAGE sql AS $$
    WITH got AS (SELECT (payload->>'id')::int AS id FROM dlq.messages WHERE queue = q),
         want AS (SELECT unnest(ids) AS id)
    SELECT CASE
        WHEN (SELECT count(*) FROM got) <> (SELECT count(*) FROM want)
          OR EXISTS (SELECT id FROM want EXCEPT ALL SELECT id FROM got)
        THEN format('wrong: %s messages, %s expected, %s missing', (SELECT count(*) FROM got),
                    (SELECT count(*) FROM want),
                    (SELECT count(*) FROM (SELECT id FROM want EXCEPT ALL SELECT id FROM got) m))
        WHEN (SELECT coalesce(sum(n), 0) FROM dlq.counts WHERE queue = q) <> (SELECT count(*) FROM got)
        THEN 'counts differ'
        ELSE 'ok' END
$$;

-- Tables with dlq_attach (a flush at the end of each statement), and
-- tables with a hand-written dlq_capture trigger only (rows wait for commit
-- or for 1000 rows).
CREATE TABLE sx_a (id int PRIMARY KEY, v int NOT NULL);
CREATE TABLE sx_b (id int PRIMARY KEY, v int NOT NULL);
SELECT dlq_attach('sx_a', 'sx_a_q');
SELECT dlq_attach('sx_b', 'sx_b_q');
CREATE TABLE sx_m (id int, v int NOT NULL);
CREATE TRIGGER t BEFORE INSERT ON sx_m FOR EACH ROW EXECUTE FUNCTION dlq_capture('sx_m_q');
CREATE TABLE sx_n (id int, v int NOT NULL);
CREATE TRIGGER t BEFORE INSERT ON sx_n FOR EACH ROW EXECUTE FUNCTION dlq_capture('sx_n_q');

-- 1. Statement-end flush in a plpgsql exception block of another BEFORE
-- trigger (the hostile review's reproduction).  Each row of sx_a writes a
-- bad row into sx_b inside a block; the block rolls back for even v.  The
-- diverted (1, NULL) of the outer statement survives; sx_b keeps only the
-- rows of blocks that did not roll back.
CREATE FUNCTION sx.side() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO sx_b VALUES (NEW.id, NULL);
        IF NEW.v IS NULL OR NEW.v % 2 = 0 THEN
            RAISE EXCEPTION 'side effect undone';
        END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER aaa BEFORE INSERT ON sx_a FOR EACH ROW EXECUTE FUNCTION sx.side();
INSERT INTO sx_a VALUES (1, NULL), (2, 2), (3, 3), (4, NULL), (5, 4);
SELECT * FROM sx_a ORDER BY id;
SELECT sx.ok('sx_a_q', '{1,4}') AS a, sx.ok('sx_b_q', '{3}') AS b;

-- 2. The same through COPY: 3000 rows, every third one diverted at the
-- outer level, and a block per row that diverts a row into sx_b and rolls
-- back for even ids.
DELETE FROM sx_a;
DELETE FROM dlq.messages WHERE queue IN ('sx_a_q', 'sx_b_q');
CREATE OR REPLACE FUNCTION sx.side() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO sx_b VALUES (NEW.id, NULL);
        IF NEW.id % 2 = 0 THEN
            RAISE EXCEPTION 'side effect undone';
        END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NEW;
END $$;
CREATE TEMP TABLE sx_src AS
SELECT g AS id, CASE WHEN g % 3 = 0 THEN NULL ELSE g END AS v FROM generate_series(1, 3000) g;
SELECT current_setting('data_directory') || '/dlq_sx_test.csv' AS csv \gset
COPY sx_src TO :'csv' WITH (FORMAT csv);
COPY sx_a FROM :'csv' WITH (FORMAT csv);
SELECT count(*) AS loaded FROM sx_a;
SELECT sx.ok('sx_a_q', (SELECT array_agg(g) FROM generate_series(3, 3000, 3) g)) AS a,
       sx.ok('sx_b_q', (SELECT array_agg(g) FROM generate_series(1, 3000, 2) g)) AS b;

-- 3. The 1000-row flush inside a block, in COPY: the block's rows go into
-- sx_m (no statement-end flush), so every 1000th buffered row flushes inside
-- a block; half of the blocks roll back.
DELETE FROM sx_a;
DELETE FROM dlq.messages WHERE queue IN ('sx_a_q', 'sx_b_q');
CREATE OR REPLACE FUNCTION sx.side() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO sx_m VALUES (NEW.id, NULL);
        IF NEW.id % 2 = 0 THEN
            RAISE EXCEPTION 'side effect undone';
        END IF;
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN NEW;
END $$;
COPY sx_a FROM :'csv' WITH (FORMAT csv);
SELECT sx.ok('sx_a_q', (SELECT array_agg(g) FROM generate_series(3, 3000, 3) g)) AS a,
       sx.ok('sx_m_q', (SELECT array_agg(g) FROM generate_series(1, 3000, 2) g)) AS m;
DROP TRIGGER aaa ON sx_a;
DELETE FROM sx_a;
DELETE FROM dlq.messages WHERE queue IN ('sx_a_q', 'sx_m_q');

-- 4. Savepoints: rows of the transaction and of released savepoints wait
-- for commit; a statement-end flush inside a savepoint that is rolled back
-- (directly or with an enclosing one) must not take them along.
BEGIN;
INSERT INTO sx_m VALUES (1, NULL);              -- top level
SAVEPOINT s1;
INSERT INTO sx_m VALUES (2, NULL);              -- s1, released below
RELEASE s1;
SAVEPOINT s2;
SAVEPOINT s3;
INSERT INTO sx_m VALUES (3, NULL);              -- s3, gone with s2
INSERT INTO sx_a VALUES (4, NULL);              -- flushed in s3, gone with s2
RELEASE s3;
ROLLBACK TO s2;
INSERT INTO sx_a VALUES (5, NULL);              -- flushed in s2 (kept)
SAVEPOINT s4;
INSERT INTO sx_m VALUES (6, NULL);              -- s4, rolled back
INSERT INTO sx_a VALUES (7, NULL);              -- flushed in s4, rolled back
ROLLBACK TO s4;
SAVEPOINT s5;
INSERT INTO sx_m VALUES (8, NULL);              -- s5, released
SAVEPOINT s6;
INSERT INTO sx_a VALUES (9, NULL);              -- flushed in s6, released
RELEASE s6;
RELEASE s5;
COMMIT;
SELECT sx.ok('sx_m_q', '{1,2,8}') AS m, sx.ok('sx_a_q', '{5,9}') AS a;
DELETE FROM dlq.messages WHERE queue IN ('sx_a_q', 'sx_m_q');

-- 5. The 1000-row flush in a savepoint: 10 rows of the transaction wait in
-- the buffer; a savepoint diverts 2500 rows (flushes after 1000 buffered
-- rows) and rolls back; another diverts 1500 and is released.
BEGIN;
INSERT INTO sx_m SELECT g, NULL FROM generate_series(1, 10) g;
SAVEPOINT s1;
INSERT INTO sx_m SELECT g, NULL FROM generate_series(101, 2600) g;
SELECT count(*) > 0 AS flushed_in_s1 FROM dlq.messages WHERE queue = 'sx_m_q';
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO sx_m SELECT g, NULL FROM generate_series(3001, 4500) g;
RELEASE s2;
COMMIT;
SELECT sx.ok('sx_m_q', (SELECT array_agg(g) FROM generate_series(1, 10) g)
                       || (SELECT array_agg(g) FROM generate_series(3001, 4500) g)) AS m;
DELETE FROM dlq.messages WHERE queue = 'sx_m_q';

-- 6. Batches stay whole when outer rows are kept: 999 rows of the
-- transaction wait; a savepoint that rolls back and one that is released
-- divert more.  Past 1000 buffered rows a savepoint's rows are not stored one
-- at a time: the released one's go in a batch of 1000, the rest at commit.
-- A statement trigger on dlq.messages records the size of every batch.
CREATE TABLE sx_batches (n bigint);
CREATE FUNCTION sx.batch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.sx_batches SELECT count(*) FROM new_rows WHERE queue = 'sx_n_q' HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE TRIGGER sx_batch AFTER INSERT ON dlq.messages REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sx.batch();
BEGIN;
INSERT INTO sx_n SELECT g, NULL FROM generate_series(1, 999) g;
SAVEPOINT s1;
INSERT INTO sx_n SELECT g, NULL FROM generate_series(1001, 1050) g;
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO sx_n SELECT g, NULL FROM generate_series(2001, 3500) g;
RELEASE s2;
COMMIT;
DROP TRIGGER sx_batch ON dlq.messages;
SELECT string_agg(n::text, ' ') AS batches FROM sx_batches;
SELECT sx.ok('sx_n_q', (SELECT array_agg(g) FROM generate_series(1, 999) g)
                       || (SELECT array_agg(g) FROM generate_series(2001, 3500) g)) AS n;
DELETE FROM dlq.messages WHERE queue = 'sx_n_q';

-- 7. Nested plpgsql exception blocks in one DO block: the outer block is
-- released, the inner one rolls back after a statement-end flush.
DO $$
BEGIN
    INSERT INTO sx_m VALUES (1, NULL);          -- top level
    BEGIN
        INSERT INTO sx_m VALUES (2, NULL);      -- outer block, kept
        BEGIN
            INSERT INTO sx_m VALUES (3, NULL);  -- inner block, rolled back
            INSERT INTO sx_a VALUES (4, NULL);  -- flushed in the inner block
            RAISE EXCEPTION 'inner undone';
        EXCEPTION WHEN raise_exception THEN NULL;
        END;
        INSERT INTO sx_a VALUES (5, NULL);      -- flushed in the outer block
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
END $$;
SELECT sx.ok('sx_m_q', '{1,2}') AS m, sx.ok('sx_a_q', '{5}') AS a;
DELETE FROM dlq.messages WHERE queue IN ('sx_a_q', 'sx_m_q');

-- 8. A block that is released keeps its flushed rows and the outer ones
-- (dlq_test.try runs its statement in a block); one whose statement fails
-- drops only its own.
BEGIN;
INSERT INTO sx_m VALUES (1, NULL);
SELECT dlq_test.try($$INSERT INTO sx_a VALUES (2, NULL), (3, 3)$$);
SELECT dlq_test.try($$INSERT INTO sx_a VALUES (4, NULL), (1 / 0, 5)$$);
COMMIT;
SELECT sx.ok('sx_m_q', '{1}') AS m, sx.ok('sx_a_q', '{2}') AS a;
SELECT * FROM sx_a ORDER BY id;

SELECT dlq_detach('sx_a');
SELECT dlq_detach('sx_b');
DELETE FROM dlq.messages WHERE queue LIKE 'sx\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sx\_%';
DROP TABLE sx_a, sx_b, sx_m, sx_n, sx_batches;
DROP SCHEMA sx CASCADE;
