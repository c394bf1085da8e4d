-- Privileges: nothing to PUBLIC, roles get what they need, storage is written
-- as the extension owner, and a hostile search_path cannot hijack it.
\set VERBOSITY default
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'dlq\_%' ORDER BY 1;
SELECT pg_has_role('dlq_operator', 'dlq_reader', 'MEMBER') AS operator_is_reader;

-- No API function is executable by PUBLIC.
SELECT p.proname FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'dlq'
 WHERE has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1;

CREATE ROLE app_writer LOGIN IN ROLE dlq_writer;
CREATE ROLE app_reader LOGIN IN ROLE dlq_reader;
CREATE ROLE nobody LOGIN;

SET ROLE app_writer;
SELECT dlq_store('sec', '{"secret": "card"}', 'declined') > 0 AS stored_without_table_privileges;
SELECT dlq_test.err($$SELECT count(*) FROM dlq.messages$$);
SELECT dlq_test.err($$SELECT * FROM dlq_list('sec')$$);
SELECT dlq_test.err($$INSERT INTO dlq.messages (queue, payload, error, error_class, max_attempts)
VALUES ('sec', '{}', 'forged', 'permanent', 1)$$);
RESET ROLE;
SELECT count(*) AS forged FROM dlq.messages WHERE error = 'forged';

SET ROLE app_reader;
SELECT payload FROM dlq_list('sec');
SELECT count(*) FROM dlq.messages WHERE queue = 'sec';
SELECT dlq_test.err($$SELECT dlq_store('sec', '{}', 'reader cannot store')$$);
SELECT dlq_test.err($$UPDATE dlq.messages SET error = 'tampered'$$);
RESET ROLE;
SELECT count(*) AS tampered FROM dlq.messages WHERE error = 'tampered';

SET ROLE nobody;
SELECT dlq_test.err($$SELECT * FROM dlq_list('sec')$$);
SELECT dlq_test.err($$SELECT * FROM dlq_get(1)$$);
SELECT dlq_test.err($$SELECT dlq_store('sec', '{}', 'e')$$);
SELECT dlq_test.err($$SELECT count(*) FROM dlq.messages$$);
RESET ROLE;

-- A search_path that shadows pg_catalog functions and operators cannot run
-- code as the extension owner.
CREATE SCHEMA evil;
GRANT USAGE ON SCHEMA evil TO app_writer;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql
AS $$ SELECT '2000-01-01'::timestamptz $$;
GRANT EXECUTE ON FUNCTION evil.now() TO app_writer;
SET ROLE app_writer;
SET search_path = evil, pg_catalog, public;
SELECT dlq_store('sec', '{"n": 2}', 'with hostile path') AS hostile_id \gset
RESET search_path;
RESET ROLE;
SELECT stored_at > '2020-01-01' AS real_clock, expires_at > '2020-01-01' AS real_expiry
  FROM dlq.messages WHERE message_id = :hostile_id;

DROP SCHEMA evil CASCADE;
DROP ROLE app_writer, app_reader, nobody;
