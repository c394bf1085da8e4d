-- A dropped replay target: its queues are unbound at once (audited), so a
-- later table that happens to get the same OID never receives their rows.
\set VERBOSITY default
CREATE ROLE sec_drop_w LOGIN IN ROLE dlq_writer;
GRANT CREATE ON SCHEMA public TO sec_drop_w;

SET ROLE sec_drop_w;
CREATE TABLE sd_t (id int PRIMARY KEY, v int NOT NULL);
SELECT dlq_attach('sd_t');
INSERT INTO sd_t VALUES (1, 1), (2, NULL);
CREATE TABLE sd_other (id int);
RESET ROLE;
SELECT queue, replay_target IS NOT NULL AS bound FROM dlq.queues WHERE queue = 'sd_t';

-- Dropping an unrelated table changes nothing.
SET ROLE sec_drop_w;
DROP TABLE sd_other;
RESET ROLE;
SELECT queue, replay_target IS NOT NULL AS bound FROM dlq.queues WHERE queue = 'sd_t';

-- The writer, who has no right on dlq's tables, drops its bound table.
SET ROLE sec_drop_w;
DROP TABLE sd_t;
RESET ROLE;
SELECT queue, replay_target FROM dlq.queues WHERE queue = 'sd_t';
SELECT kind, actor, detail FROM dlq.events
 WHERE queue = 'sd_t' AND kind = 'configured' AND detail->>'reason' = 'table dropped';
-- The captured message stays (nothing is lost), and replaying it now hands
-- it to consumers instead of inserting it anywhere.
SELECT count(*) AS kept FROM dlq.messages WHERE queue = 'sd_t';

-- Dropping several tables at once, one of them bound through a partitioned parent.
SET ROLE sec_drop_w;
CREATE TABLE sd_p (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE sd_p1 PARTITION OF sd_p FOR VALUES FROM (0) TO (100);
SELECT dlq_attach('sd_p');
CREATE TABLE sd_u (id int);
SELECT dlq_attach('sd_u');
DROP TABLE sd_p, sd_u;
RESET ROLE;
SELECT queue, replay_target FROM dlq.queues WHERE queue IN ('sd_p', 'sd_u') ORDER BY 1;

-- Clean up.
DELETE FROM dlq.messages WHERE queue LIKE 'sd\_%';
DELETE FROM dlq.queues WHERE queue LIKE 'sd\_%';
REVOKE CREATE ON SCHEMA public FROM sec_drop_w;
DROP ROLE sec_drop_w;
