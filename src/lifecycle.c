/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *	  Ending messages without a replay: dlq_discard, dlq_discard_all,
 *	  dlq_resolve and dlq_resolve_all.
 *
 *	  The by-id functions share lifecycle_by_ids: the ids in batches of
 *	  DLQ_BATCH_IDS, each batch one statement that changes the messages it
 *	  may and returns them, what existed counted for the summary.
 *	  The _all functions share lifecycle_all: it walks the queue's index in
 *	  keyset batches with FOR UPDATE SKIP LOCKED, so messages locked by a
 *	  concurrent call are left alone, with the filters of filter.c; a dry
 *	  run counts what the filters select, without locks, and changes
 *	  nothing.  Every call is one request id with one audit event per
 *	  queue.
 *
 *	  A resolution (fixed, ignored, duplicate, manual) is kept on each
 *	  resolved message and on the event; it needs the 1.1 schema, which a
 *	  1.0 schema's two-argument dlq_resolve does without.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "dlq.h"
#include "filter.h"
#include "version.h"

static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr discard_plan = NULL;
static SPIPlanPtr resolve_plan = NULL;
static SPIPlanPtr resolve_as_plan = NULL;

/*
 * The _all statements per kind and filter variant: LIFECYCLE_DISCARD and
 * LIFECYCLE_RESOLVE change a batch, LIFECYCLE_COUNT counts for a dry run.
 */
typedef enum LifecycleKind
{
	LIFECYCLE_DISCARD,
	LIFECYCLE_RESOLVE,
	LIFECYCLE_COUNT
} LifecycleKind;

static SPIPlanPtr all_plans[3][DLQ_FILTER_VARIANTS];

/* Parameters of the _all statements before the filter's. */
#define LIFECYCLE_ALL_NARGS 5

/* How many of a batch of ids exist.  Inside SPI, as the owner. */
static int64
lifecycle_count_existing(Datum ids)
{
	bool		isnull;
	int64		n;

	if (count_plan == NULL)
	{
		Oid			types[1] = {INT8ARRAYOID};

		count_plan = dlq_prepare_kept(
									  "SELECT count(*) FROM dlq.messages WHERE message_id = ANY ($1)",
									  1, types);
	}
	dlq_execute_kept(count_plan, &ids, NULL, false, 1, SPI_OK_SELECT);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return n;
}

/* One audit event per queue of the tallies. */
static void
lifecycle_audit(List *tallies, const char *kind, const char *actor, Datum request_id,
				Jsonb *detail)
{
	ListCell   *lc;

	foreach(lc, tallies)
	{
		DlqQueueTally *t = (DlqQueueTally *) lfirst(lc);

		dlq_tally_audit(&t->tally, kind, actor, t->queue, request_id, detail);
	}
}

/* The summary; more (JSON members, each after ", ") ends it. */
static Jsonb *
lifecycle_summary(MemoryContext cxt, const char *request_id, const char *verb,
				  int64 done, int64 skipped, int64 not_found, const char *more)
{
	char	   *s = psprintf("{\"request_id\": \"%s\", \"%s\": " INT64_FORMAT
							 ", \"skipped\": " INT64_FORMAT ", \"not_found\": " INT64_FORMAT "%s}",
							 request_id, verb, done, skipped, not_found, more);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	Jsonb	   *j = dlq_jsonb(s);

	MemoryContextSwitchTo(old);
	return j;
}

/*
 * Run an id-batch plan ($1 ids) returning (queue, message_id)
 * of the messages it changed, over all ids; count what existed.  A DELETE
 * or UPDATE may wait for a message being closed, which moves it: see
 * dlq_execute_kept_moved.
 */
static void
lifecycle_run(SPIPlanPtr plan, int expected_ret, const int64 *ids, int nids,
			  Datum extra, List **tallies, int64 *done, int64 *found)
{
	for (int off = 0; off < nids; off += DLQ_BATCH_IDS)
	{
		Datum		values[2];

		values[0] = dlq_id_array_datum(ids + off, Min(DLQ_BATCH_IDS, nids - off));
		values[1] = extra;
		*found += lifecycle_count_existing(values[0]);
		dlq_execute_kept_moved(plan, values, NULL, 0, expected_ret);
		*done += dlq_queue_tally_rows(tallies);
		SPI_freetuptable(SPI_tuptable);
	}
}

/*
 * The body of dlq_discard and dlq_resolve: run sql (prepared once into
 * *plan, through dlq_schema_sql; it takes a bigint[] and, when extra_type
 * is valid, extra as $2, and returns queue, message_id of the rows it
 * changed) over the ids in batches, audit one "verb" event per queue, and
 * return the summary.
 */
static Jsonb *
lifecycle_by_ids(const int64 *ids, int nids, SPIPlanPtr *plan, const char *sql,
				 Oid extra_type, Datum extra, const char *verb, Jsonb *detail)
{
	DlqOwnerContext owner;
	MemoryContext caller_cxt = CurrentMemoryContext;
	List	   *tallies = NIL;
	int64		done = 0;
	int64		found = 0;
	Datum		request_id = dlq_new_request_id();
	Jsonb	   *summary;

	dlq_become_owner(&owner);
	SPI_connect();
	if (*plan == NULL)
	{
		Oid			types[2] = {INT8ARRAYOID, extra_type};

		*plan = dlq_prepare_kept(dlq_schema_sql(sql), OidIsValid(extra_type) ? 2 : 1, types);
	}
	lifecycle_run(*plan, strcmp(verb, "discarded") == 0 ?
				  SPI_OK_DELETE_RETURNING : SPI_OK_UPDATE_RETURNING,
				  ids, nids, extra, &tallies, &done, &found);
	lifecycle_audit(tallies, verb, GetUserNameFromId(owner.caller, false),
					request_id, detail);
	summary = lifecycle_summary(caller_cxt,
								DatumGetCString(DirectFunctionCall1(uuid_out, request_id)),
								verb, done, found - done, nids - found, "");
	SPI_finish();
	dlq_restore_caller(&owner);
	return summary;
}

PG_FUNCTION_INFO_V1(dlq_discard);

/*
 * dlq_discard(message_ids bigint[]) returns jsonb
 *
 * Delete messages for good.  Replaying messages are in a consumer's hands
 * and are skipped; so is nothing else.  Waits for concurrent changes to the
 * same messages and decides on their outcome.
 */
Datum
dlq_discard(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);
	PG_RETURN_JSONB_P(lifecycle_by_ids(ids, nids, &discard_plan,
									   "DELETE FROM dlq.messages WHERE message_id = ANY ($1)"
									   " AND status <> 'replaying'"
									   " RETURNING queue, message_id",
									   InvalidOid, (Datum) 0, "discarded", NULL));
}


/*
 * The statement of an _all function of this kind and filter variant:
 * $1 queue, $2 status, $3 older_than (or NULL), $4 cursor, $5 resolution,
 * then the filter's parameters.  LIFECYCLE_COUNT returns the count of what
 * the filters select; the others change one keyset batch after the cursor
 * and return the batch's last id (NULL when none was left), the count of
 * the messages changed and the first 101 of their ids.
 */
static SPIPlanPtr
lifecycle_all_plan(LifecycleKind kind, const DlqFilter *filter)
{
	int			flags = dlq_filter_flags(filter);
	Oid			types[LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS] =
	{TEXTOID, TEXTOID, INTERVALOID, INT8OID, TEXTOID};
	StringInfoData where;
	StringInfoData sql;

	if (all_plans[kind][flags] != NULL)
		return all_plans[kind][flags];

	dlq_filter_types(types + LIFECYCLE_ALL_NARGS);
	initStringInfo(&where);
	appendStringInfoString(&where,
						   " WHERE m.queue = $1 AND m.status = $2::dlq.status"
						   " AND ($3::pg_catalog.interval IS NULL OR m.stored_at < now() - $3)");
	dlq_filter_sql(&where, flags, "m", LIFECYCLE_ALL_NARGS + 1);
	initStringInfo(&sql);
	if (kind == LIFECYCLE_COUNT)
		appendStringInfo(&sql, "SELECT count(*) FROM dlq.messages m%s", where.data);
	else
		appendStringInfo(&sql,
						 "WITH c AS (SELECT m.message_id FROM dlq.messages m%s"
						 "  AND m.message_id > $4"
						 "  ORDER BY m.message_id LIMIT %d FOR UPDATE OF m SKIP LOCKED),"
						 " d AS (%s RETURNING m.message_id)"
						 " SELECT (SELECT max(message_id) FROM c), (SELECT count(*) FROM d),"
						 "  (SELECT array_agg(message_id) FROM"
						 "   (SELECT message_id FROM d ORDER BY 1 LIMIT 101) x)",
						 where.data, DLQ_BATCH_IDS,
						 kind == LIFECYCLE_DISCARD ?
						 "DELETE FROM dlq.messages m USING c WHERE m.message_id = c.message_id" :
						 "UPDATE dlq.messages m SET status = 'resolved', resolved_at = now(),"
						 "  resolution = $5, claimed_by = NULL, claim_expires_at = NULL,"
						 "  next_retry_at = NULL" DLQ_SET_CLOSING_SLOT
						 " FROM c WHERE m.message_id = c.message_id[[ AND m.slot = 0]]");
	all_plans[kind][flags] = dlq_prepare_kept(dlq_schema_sql(sql.data),
											  LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS, types);
	return all_plans[kind][flags];
}

/* What an _all function selects: queue, status, older_than, filter. */
typedef struct LifecycleAll
{
	const char *queue;
	const char *status;
	Interval   *older_than;		/* or NULL */
	DlqFilter	filter;
	const char *resolution;		/* LIFECYCLE_RESOLVE */
} LifecycleAll;

static void
lifecycle_all_values(const LifecycleAll *a, int64 cursor, Datum *values, char *nulls)
{
	memset(nulls, ' ', LIFECYCLE_ALL_NARGS);
	values[0] = CStringGetTextDatum(a->queue);
	values[1] = CStringGetTextDatum(a->status);
	if (a->older_than)
		values[2] = IntervalPGetDatum(a->older_than);
	else
		nulls[2] = 'n';
	values[3] = Int64GetDatum(cursor);
	if (a->resolution)
		values[4] = CStringGetTextDatum(a->resolution);
	else
		nulls[4] = 'n';
	dlq_filter_values(&a->filter, values + LIFECYCLE_ALL_NARGS, nulls + LIFECYCLE_ALL_NARGS);
}

/*
 * One keyset batch of an _all function after *cursor: change, tally, move
 * the cursor.  Returns false when no message was left to look at.  The
 * statement may wait for a message being closed, which moves it: see
 * dlq_execute_kept_moved.
 */
static bool
lifecycle_all_batch(LifecycleKind kind, const LifecycleAll *a, int64 *cursor,
					List **tallies, int64 *done)
{
	Datum		values[LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS];
	char		nulls[LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS];
	bool		isnull;
	Datum		d;
	DlqQueueTally *t;

	lifecycle_all_values(a, *cursor, values, nulls);
	if (dlq_execute_kept_moved(lifecycle_all_plan(kind, &a->filter), values, nulls, 0,
							   SPI_OK_SELECT) != 1)
		elog(ERROR, "could not change messages in bulk");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	*cursor = DatumGetInt64(d);
	t = dlq_queue_tally(tallies, a->queue);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
	if (!isnull)
	{
		int			n;
		int64	   *got = dlq_id_array_values(DatumGetArrayTypeP(d), &n);

		for (int i = 0; i < n; i++)
			dlq_tally_add(&t->tally, got[i]);
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
		/* the ids beyond the first 101 only count */
		t->tally.count += DatumGetInt64(d) - n;
		*done += DatumGetInt64(d);
	}
	SPI_freetuptable(SPI_tuptable);
	return true;
}

/*
 * The body of the _all functions: in a dry run, count what the filters
 * select; else change it batch by batch and audit one "verb" event.
 * Returns the count.
 */
static int64
lifecycle_all(LifecycleKind kind, const LifecycleAll *a, bool dry_run, const char *verb,
			  Datum request_id, Jsonb *detail)
{
	DlqOwnerContext owner;
	List	   *tallies = NIL;
	int64		done = 0;
	int64		cursor = 0;

	dlq_become_owner(&owner);
	SPI_connect();
	dlq_check_queue_exists(a->queue);
	if (dry_run)
	{
		Datum		values[LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS];
		char		nulls[LIFECYCLE_ALL_NARGS + DLQ_FILTER_NARGS];
		bool		isnull;

		lifecycle_all_values(a, 0, values, nulls);
		dlq_execute_kept(lifecycle_all_plan(LIFECYCLE_COUNT, &a->filter), values, nulls,
						 true, 1, SPI_OK_SELECT);
		done = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										   &isnull));
		SPI_freetuptable(SPI_tuptable);
	}
	else
	{
		while (lifecycle_all_batch(kind, a, &cursor, &tallies, &done))
			;
		lifecycle_audit(tallies, verb, GetUserNameFromId(owner.caller, false),
						request_id, detail);
	}
	SPI_finish();
	dlq_restore_caller(&owner);
	return done;
}

PG_FUNCTION_INFO_V1(dlq_discard_all);

/*
 * dlq_discard_all(queue, status, component, older_than, sqlstate,
 *				   error_class, since, until, dry_run) returns jsonb
 *
 * Delete every message of the queue in one status (not replaying) that
 * passes the filters and was stored longer ago than older_than, in keyset
 * batches.  Messages locked by a concurrent call are left alone.  A 1.0
 * schema calls it with the first four arguments only.
 */
Datum
dlq_discard_all(PG_FUNCTION_ARGS)
{
	static const DlqFilterArgs filter_args = {2, 4, 5, 6, 7};
	LifecycleAll a = {0};
	bool		dry_run;
	Datum		request_id = dlq_new_request_id();
	int64		done;

	a.queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	a.status = dlq_check_status(PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1), false);
	if (strcmp(a.status, "replaying") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot discard replaying messages"),
				 errdetail("Replaying messages are in the hands of consumers."),
				 errhint("Wait for them to be acknowledged or to time out, or resolve them with dlq_resolve.")));
	dlq_filter_parse(fcinfo, &filter_args, &a.filter);
	a.older_than = dlq_check_interval(fcinfo, 3, "older_than", true, DLQ_MAX_AGE_YEARS);
	dry_run = dlq_arg_dry_run(fcinfo, 8);

	done = lifecycle_all(LIFECYCLE_DISCARD, &a, dry_run, "discarded", request_id, NULL);
	PG_RETURN_JSONB_P(lifecycle_summary(CurrentMemoryContext,
										DatumGetCString(DirectFunctionCall1(uuid_out, request_id)),
										"discarded", done, 0, 0,
										dry_run ? ", \"dry_run\": true" : ""));
}

/* A resolution: fixed, ignored, duplicate or manual (22023), not NULL (22004). */
static const char *
lifecycle_check_resolution(FunctionCallInfo fcinfo, int argno)
{
	static const char *const resolutions[] = {"fixed", "ignored", "duplicate", "manual"};
	char	   *s;

	dlq_check_not_null(fcinfo, argno, "resolution");
	dlq_check_size("resolution", (struct varlena *) PG_GETARG_TEXT_PP(argno));
	s = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	for (int i = 0; i < lengthof(resolutions); i++)
		if (strcmp(s, resolutions[i]) == 0)
			return resolutions[i];
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid resolution \"%s\"", s),
			 errhint("Use one of fixed, ignored, duplicate or manual.")));
	return NULL;				/* keep compiler quiet */
}

/* A note: at most 54000 bytes, or NULL. */
static char *
lifecycle_check_note(FunctionCallInfo fcinfo, int argno)
{
	if (argno >= PG_NARGS() || PG_ARGISNULL(argno))
		return NULL;
	dlq_check_size("note", (struct varlena *) PG_GETARG_TEXT_PP(argno));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

PG_FUNCTION_INFO_V1(dlq_resolve);

/*
 * dlq_resolve(message_ids bigint[], note text, resolution text) returns
 * jsonb
 *
 * Close open messages (pending, replaying, review) without replay, with a
 * resolution kept on each.  A 1.0 schema calls it without resolution and
 * has no column for it.
 */
Datum
dlq_resolve(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;
	char	   *note;
	const char *resolution = NULL;
	StringInfoData detail;

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);
	note = lifecycle_check_note(fcinfo, 1);
	if (PG_NARGS() > 2)
		resolution = lifecycle_check_resolution(fcinfo, 2);

	initStringInfo(&detail);
	if (note)
		appendStringInfo(&detail, ", \"note\": %s", dlq_json_quote(note));
	if (resolution)
		appendStringInfo(&detail, ", \"resolution\": %s", dlq_json_quote(resolution));

	/* status as text: driven by the primary key, see dlq_ack */
	if (resolution == NULL)
		PG_RETURN_JSONB_P(lifecycle_by_ids(ids, nids, &resolve_plan,
										   "UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),"
										   "  claimed_by = NULL, claim_expires_at = NULL, next_retry_at = NULL"
										   DLQ_SET_CLOSING_SLOT
										   " WHERE message_id = ANY ($1)[[ AND slot = 0]]"
										   " AND status::text IN ('pending', 'replaying', 'review')"
										   " RETURNING queue, message_id",
										   InvalidOid, (Datum) 0, "resolved",
										   detail.len ? dlq_jsonb(psprintf("{%s}", detail.data + 2)) : NULL));

	dlq_require_current_schema();
	PG_RETURN_JSONB_P(lifecycle_by_ids(ids, nids, &resolve_as_plan,
									   "UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),"
									   "  resolution = $2,"
									   "  claimed_by = NULL, claim_expires_at = NULL, next_retry_at = NULL"
									   DLQ_SET_CLOSING_SLOT
									   " WHERE message_id = ANY ($1)[[ AND slot = 0]]"
									   " AND status::text IN ('pending', 'replaying', 'review')"
									   " RETURNING queue, message_id",
									   TEXTOID, CStringGetTextDatum(resolution), "resolved",
									   dlq_jsonb(psprintf("{%s}", detail.data + 2))));
}

PG_FUNCTION_INFO_V1(dlq_resolve_all);

/*
 * dlq_resolve_all(queue, status, component, sqlstate, error_class, since,
 *				   until, note, resolution, dry_run) returns jsonb
 *
 * Close every open message of the queue in one status, pending or review,
 * that passes the filters, without replay.  Replaying messages are in
 * consumers' hands: as dlq_discard_all, it refuses them (dlq_resolve closes
 * them one by one).  Returns {"request_id", "resolved", "dry_run"}.
 */
Datum
dlq_resolve_all(PG_FUNCTION_ARGS)
{
	static const DlqFilterArgs filter_args = {2, 3, 4, 5, 6};
	LifecycleAll a = {0};
	char	   *note;
	bool		dry_run;
	Datum		request_id = dlq_new_request_id();
	StringInfoData detail;
	int64		done;

	a.queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	a.status = dlq_check_status(PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1), false);
	if (strcmp(a.status, "replaying") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot resolve replaying messages in bulk"),
				 errdetail("Replaying messages are in the hands of consumers."),
				 errhint("Wait for them to be acknowledged or to time out, or resolve them by id with dlq_resolve.")));
	if (strcmp(a.status, "pending") != 0 && strcmp(a.status, "review") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot resolve %s messages", a.status),
				 errdetail("Only open messages, pending or review, can be resolved.")));
	dlq_filter_parse(fcinfo, &filter_args, &a.filter);
	note = lifecycle_check_note(fcinfo, 7);
	a.resolution = lifecycle_check_resolution(fcinfo, 8);
	dry_run = dlq_arg_dry_run(fcinfo, 9);
	dlq_require_current_schema();

	initStringInfo(&detail);
	appendStringInfo(&detail, "{\"status\": %s, \"resolution\": %s",
					 dlq_json_quote(a.status), dlq_json_quote(a.resolution));
	if (note)
		appendStringInfo(&detail, ", \"note\": %s", dlq_json_quote(note));
	dlq_filter_json(&detail, &a.filter);
	appendStringInfoChar(&detail, '}');

	done = lifecycle_all(LIFECYCLE_RESOLVE, &a, dry_run, "resolved", request_id,
						 dlq_jsonb(detail.data));
	PG_RETURN_JSONB_P(dlq_jsonb(psprintf("{\"request_id\": \"%s\", \"resolved\": " INT64_FORMAT
										 ", \"dry_run\": %s}",
										 DatumGetCString(DirectFunctionCall1(uuid_out, request_id)),
										 done, dry_run ? "true" : "false")));
}
