/*-------------------------------------------------------------------------
 *
 * store.c
 *	  dlq_store: keep a failed message with its error context.
 *
 *	  One INSERT per call, its plan prepared once per backend.  The queue's
 *	  settings (max_attempts, retention) are read in the same statement; a
 *	  queue seen for the first time is created with defaults.  With a
 *	  dedup_key the INSERT becomes INSERT ... ON CONFLICT on the partial
 *	  unique index over open (pending, review) messages, which folds
 *	  repeated failures into one message safely under concurrent callers.
 *
 *	  Each form has two plans.  The fast one serves queues without
 *	  auto_retry: its SELECT has no volatile function, so the planner pulls
 *	  it up into a plain index scan of dlq.queues under the insert.  The full
 *	  one also computes next_retry_at with dlq.retry_delay(), whose jitter is
 *	  volatile and keeps a Subquery Scan (and its projection) in the plan,
 *	  about 6% more work per call (tests/bench, docs/bench.md).  A queue the
 *	  fast plan does not find (auto_retry, or not created yet) goes to the
 *	  full plan; the last auto_retry queue seen goes there directly.
 *
 *	  Since 1.1 the queue's row also decides the message's error_class (its
 *	  transient_sqlstates and permanent_sqlstates before the built-in
 *	  classes, dlq.sqlstate_class below), whether auto_retry schedules it
 *	  (retry_on) and whether its component is accepted (components), all in
 *	  the same statement: no extra round trip per call.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "dlq.h"
#include "version.h"

#define STORE_NARGS 11

/* The plans of dlq_store_message: [dedup][full], and for which schema. */
static SPIPlanPtr store_plans[2][2];
static bool store_plans_current;
static SPIPlanPtr ensure_queue_plan = NULL;
static SPIPlanPtr component_plan = NULL;

/* The last queue found to need the full plan (auto_retry), or "". */
static char auto_retry_queue[DLQ_MAX_NAME_BYTES + 1];

/*
 * Create the queue with default settings unless it exists, recording
 * created_by as its creator (the caller's user id, taken before switching to
 * the owner; InvalidOid records NULL, unknown).  Must be called as the
 * owner, inside SPI.
 */
void
dlq_ensure_queue(const char *queue, Oid created_by)
{
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	/* created_by is a column of the 1.1 schema. */
	dlq_require_current_schema();
	if (ensure_queue_plan == NULL)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, REGROLEOID};

		ensure_queue_plan = dlq_prepare_kept(
											 "INSERT INTO dlq.queues (queue, channel, created_by) VALUES ($1, $2, $3)"
											 " ON CONFLICT (queue) DO NOTHING",
											 3, types);
	}
	values[0] = CStringGetTextDatum(queue);
	values[1] = CStringGetTextDatum(dlq_default_channel(queue));
	values[2] = ObjectIdGetDatum(created_by);
	if (!OidIsValid(created_by))
		nulls[2] = 'n';
	dlq_execute_kept(ensure_queue_plan, values, nulls, false, 0, SPI_OK_INSERT);
}

/*
 * Run one of the store plans.  Returns false when its SELECT found no queue
 * row (so nothing was written); else sets *id and, when maybe_retry is not
 * NULL, whether the queue may have auto_retry (see the plans).
 */
static bool
store_run(SPIPlanPtr plan, Datum *values, char *nulls, int64 *id, bool *maybe_retry)
{
	bool		isnull;

	if (dlq_execute_kept(plan, values, nulls, false, 0, SPI_OK_INSERT_RETURNING) != 1)
		return false;
	*id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
	if (maybe_retry)
		*maybe_retry = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 2, &isnull));
	return true;
}

/*
 * The four INSERT plans of dlq_store_message: with or without dedup_key,
 * and for a queue without auto_retry (no next_retry_at to compute) or any.
 *
 * On the 1.1 schema the SELECT also classifies the SQLSTATE with the
 * queue's transient_sqlstates and permanent_sqlstates
 * (dlq.sqlstate_class(), immutable, so the fast plan stays a plain index
 * scan), finds no queue row when its components refuse the component (then
 * store_refuse_component says why), and the full plan schedules a retry
 * only for a message auto_retry may retry (retry_on).  A 1.0 schema gets
 * 1.0's statements, with the built-in class computed in C ($6).
 */
static void
store_prepare(void)
{
	Oid			types[STORE_NARGS] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
		TEXTOID, JSONBOID, JSONBOID, TEXTOID, REGCLASSOID, TEXTOID};
	const char *insert =
		"INSERT INTO dlq.messages AS m"
		" (queue, component, payload, error, sqlstate, error_class,"
		"  error_detail, metadata, dedup_key, source_relation, operation,"
		"  max_attempts, expires_at, next_retry_at)"
		" SELECT $1, $2, $3, $4, $5, %s, $7, $8, $9, $10, $11,"
		"  q.max_attempts, now() + q.retention, %s"
		" FROM dlq.queues q WHERE q.queue = $1%s%s";
	/*
	 * The unique index over open messages' keys includes the partition key
	 * slot since 1.1 (dlq--1.0--1.1.sql, "Storage"): a session that
	 * prepared for 1.0 prepares again once the schema is updated.
	 */
	bool		current = dlq_schema_current();
	const char *dedup =
		" ON CONFLICT (queue, dedup_key[[, slot]])"
		" WHERE dedup_key IS NOT NULL AND status IN ('pending', 'review')"
		" DO UPDATE SET occurrences = m.occurrences + 1,"
		"  error = excluded.error, sqlstate = excluded.sqlstate,"
		"  error_class = excluded.error_class,"
		"  error_detail = excluded.error_detail,"
		"  last_failed_at = now()"
		"[[, next_retry_at = CASE WHEN m.status = 'pending'"
		"  THEN coalesce(m.next_retry_at, excluded.next_retry_at)"
		"  ELSE m.next_retry_at END]]";
	const char *class = current ? DLQ_QUEUE_ERROR_CLASS("$5", "q") : "$6";
	const char *fast_retry = "NULL::timestamptz";
	const char *full_retry = current ?
		"CASE WHEN q.auto_retry AND (q.retry_on = 'all' OR "
		DLQ_QUEUE_ERROR_CLASS("$5", "q") " = 'transient')"
		" THEN now() + dlq.retry_delay(q, 1) END" :
		"CASE WHEN q.auto_retry THEN now() + dlq.retry_delay(q, 1) END";
	const char *components = current ?
		" AND (q.components IS NULL OR $2 IS NULL OR $2 = ANY (q.components))" : "";

	if (store_plans[0][0] != NULL && store_plans_current == current)
		return;
	store_plans_current = current;
	for (int d = 0; d < 2; d++)
		for (int full = 0; full < 2; full++)
		{
			char	   *sql = psprintf(insert, class, full ? full_retry : fast_retry,
									   full ? "" : " AND NOT q.auto_retry", components);

			/*
			 * The second column is false only for a message inserted
			 * without next_retry_at that auto_retry would have retried:
			 * its queue has no auto_retry (now).
			 */
			if (store_plans[d][full] != NULL)
				SPI_freeplan(store_plans[d][full]);
			store_plans[d][full] =
				dlq_prepare_kept(dlq_schema_sql(psprintf("%s%s RETURNING m.message_id,"
														 " m.occurrences > 1 OR m.next_retry_at IS NOT NULL"
														 " OR m.error_class = 'permanent'",
														 sql, d ? dedup : "")),
							  STORE_NARGS, types);
		}
}

/*
 * Raise 22023 when the queue exists and its components refuse component
 * (a NULL component is always accepted); nothing for a queue that does not
 * exist (yet).  On a 1.0 schema, which has no components, nothing.  Inside
 * SPI, as the owner.  dlq_store finds a refused component without this
 * (no queue row for its INSERT) and calls it only to say so.
 */
void
dlq_check_component(const char *queue, const char *component)
{
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;

	if (component == NULL || !dlq_schema_current())
		return;
	if (component_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, TEXTOID};

		component_plan = dlq_prepare_kept(
										  "SELECT components IS NULL OR $2 = ANY (components)"
										  " FROM dlq.queues WHERE queue = $1",
										  2, types);
	}
	values[0] = CStringGetTextDatum(queue);
	values[1] = CStringGetTextDatum(component);
	if (dlq_execute_kept(component_plan, values, nulls, true, 1, SPI_OK_SELECT) == 1 &&
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("component \"%s\" is not one of queue \"%s\"'s components",
						component, queue),
				 errhint("An operator lists the components a queue accepts with dlq_configure(queue, components => ...); an empty array accepts any.")));
}

/*
 * Store one message and return its id.  Arguments are already validated.
 * Must be called as the owner, inside SPI.
 */
int64
dlq_store_message(const DlqStoreArgs *args)
{
	Datum		values[STORE_NARGS];
	char		nulls[STORE_NARGS];
	bool		dedup;
	bool		maybe_retry;
	int64		id;

	store_prepare();

	memset(nulls, ' ', sizeof(nulls));
	values[0] = CStringGetTextDatum(args->queue);
#define SET_TEXT(i, v) \
	do { if (v) values[i] = CStringGetTextDatum(v); else nulls[i] = 'n'; } while (0)
#define SET_JSONB(i, v) \
	do { if (v) values[i] = JsonbPGetDatum(v); else nulls[i] = 'n'; } while (0)
	SET_TEXT(1, args->component);
	values[2] = JsonbPGetDatum(args->payload);
	values[3] = CStringGetTextDatum(args->error);
	SET_TEXT(4, args->sqlstate);
	values[5] = CStringGetTextDatum(dlq_error_class(args->sqlstate));
	SET_JSONB(6, args->error_detail);
	SET_JSONB(7, args->metadata);
	SET_TEXT(8, args->dedup_key);
	if (OidIsValid(args->source_relation))
		values[9] = ObjectIdGetDatum(args->source_relation);
	else
		nulls[9] = 'n';
	SET_TEXT(10, args->operation);
#undef SET_TEXT
#undef SET_JSONB

	dedup = args->dedup_key != NULL;
	for (int attempt = 0; attempt < 2; attempt++)
	{
		if (strcmp(args->queue, auto_retry_queue) != 0 &&
			store_run(store_plans[dedup][0], values, nulls, &id, NULL))
			return id;
		if (store_run(store_plans[dedup][1], values, nulls, &id, &maybe_retry))
		{
			/* Remember an auto_retry queue; forget it once it has changed. */
			if (maybe_retry)
				strlcpy(auto_retry_queue, args->queue, sizeof(auto_retry_queue));
			else if (strcmp(args->queue, auto_retry_queue) == 0)
				auto_retry_queue[0] = '\0';
			return id;
		}
		/* Refused by the queue's components, or its first message. */
		dlq_check_component(args->queue, args->component);
		dlq_ensure_queue(args->queue, args->created_by);
	}
	elog(ERROR, "queue \"%s\" vanished while a message was stored", args->queue);
	return 0;					/* keep compiler quiet */
}

PG_FUNCTION_INFO_V1(dlq_sqlstate_class);

/*
 * dlq.sqlstate_class(sqlstate text, transient_sqlstates text[],
 *					  permanent_sqlstates text[]) returns text
 *
 * The error class of a SQLSTATE for a queue with these overrides (each may
 * be NULL): a listed 5-character code first, then a listed 2-character
 * class, then the built-in classes (dlq_error_class).  A code or class in
 * both lists, which dlq_configure refuses, counts as permanent.  A NULL
 * SQLSTATE is permanent.  Immutable, so that it costs dlq_store's INSERT
 * one call and no change of plan.
 */
Datum
dlq_sqlstate_class(PG_FUNCTION_ARGS)
{
	char		sqlstate[6];
	int			found = 0;		/* 2: a code matched, 1: a class, 0: neither */
	bool		permanent = false;

	if (PG_ARGISNULL(0) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)) != 5)
		PG_RETURN_TEXT_P(cstring_to_text("permanent"));
	text_to_cstring_buffer(PG_GETARG_TEXT_PP(0), sqlstate, sizeof(sqlstate));

	for (int list = 1; list <= 2; list++)
	{
		ArrayIterator it;
		Datum		elem;
		bool		isnull;

		if (PG_ARGISNULL(list))
			continue;
		it = array_create_iterator(PG_GETARG_ARRAYTYPE_P(list), 0, NULL);
		while (array_iterate(it, &elem, &isnull))
		{
			text	   *t;
			int			len;
			int			match;

			if (isnull)
				continue;
			t = DatumGetTextPP(elem);
			len = VARSIZE_ANY_EXHDR(t);
			if (len == 5 && strncmp(VARDATA_ANY(t), sqlstate, 5) == 0)
				match = 2;
			else if (len == 2 && strncmp(VARDATA_ANY(t), sqlstate, 2) == 0)
				match = 1;
			else
				continue;
			if (match > found || (match == found && list == 2))
			{
				found = match;
				permanent = list == 2;
			}
		}
		array_free_iterator(it);
	}
	if (found == 0)
		PG_RETURN_TEXT_P(cstring_to_text(dlq_error_class(sqlstate)));
	PG_RETURN_TEXT_P(cstring_to_text(permanent ? "permanent" : "transient"));
}

PG_FUNCTION_INFO_V1(dlq_store);

/*
 * dlq_store(queue, payload, error, component, sqlstate, error_detail,
 *			 metadata, dedup_key) returns bigint
 */
Datum
dlq_store(PG_FUNCTION_ARGS)
{
	DlqStoreArgs args = {0};
	DlqOwnerContext owner;
	int64		id;

	args.queue = dlq_check_name("queue name",
								PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);

	dlq_check_not_null(fcinfo, 1, "payload");
	args.payload = PG_GETARG_JSONB_P(1);
	dlq_check_payload_size("payload", VARSIZE(args.payload));

	dlq_check_not_null(fcinfo, 2, "error");
	args.error = text_to_cstring(PG_GETARG_TEXT_PP(2));
	if (args.error[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("error must not be empty"),
				 errhint("Pass the message of the failure that sent this message to the DLQ.")));
	dlq_check_payload_size("error text", strlen(args.error));

	args.component = dlq_check_name("component",
									PG_ARGISNULL(3) ? NULL : PG_GETARG_TEXT_PP(3), true);
	args.sqlstate = dlq_check_sqlstate(PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4));
	args.error_detail = PG_ARGISNULL(5) ? NULL : PG_GETARG_JSONB_P(5);
	dlq_check_json_object("error_detail", args.error_detail);
	dlq_check_size("error_detail", (struct varlena *) args.error_detail);
	args.metadata = PG_ARGISNULL(6) ? NULL : PG_GETARG_JSONB_P(6);
	dlq_check_json_object("metadata", args.metadata);
	dlq_check_size("metadata", (struct varlena *) args.metadata);

	if (!PG_ARGISNULL(7))
	{
		char	   *key = text_to_cstring(PG_GETARG_TEXT_PP(7));

		if (key[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("dedup_key must not be empty"),
					 errhint("Pass NULL to store the message without deduplication.")));
		if (strlen(key) > DLQ_MAX_DEDUP_KEY_BYTES)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("dedup_key is too long"),
					 errdetail("It is %d bytes; the limit is %d bytes.",
							   (int) strlen(key), DLQ_MAX_DEDUP_KEY_BYTES)));
		args.dedup_key = key;
	}

	args.created_by = GetUserId();
	dlq_become_owner(&owner);
	SPI_connect();
	id = dlq_store_message(&args);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_INT64(id);
}
