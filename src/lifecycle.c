/*-------------------------------------------------------------------------
 *
 * lifecycle.c
 *	  Ending messages without a replay: dlq_discard, dlq_discard_all and
 *	  dlq_resolve.
 *
 *	  The by-id functions share lifecycle_by_ids: the ids in batches of
 *	  DLQ_BATCH_IDS, each batch one statement that changes the messages it
 *	  may and returns them, what existed counted for the summary.
 *	  dlq_discard_all walks the queue's index in keyset batches with FOR
 *	  UPDATE SKIP LOCKED, so messages locked by a concurrent call are left
 *	  alone.  Every call is one request id with one audit event per queue.
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
#include "version.h"

static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr discard_plan = NULL;
static SPIPlanPtr discard_all_plan = NULL;
static SPIPlanPtr resolve_plan = NULL;

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

static Jsonb *
lifecycle_summary(MemoryContext cxt, const char *request_id, const char *verb,
				  int64 done, int64 skipped, int64 not_found)
{
	char	   *s = psprintf("{\"request_id\": \"%s\", \"%s\": " INT64_FORMAT
							 ", \"skipped\": " INT64_FORMAT ", \"not_found\": " INT64_FORMAT "}",
							 request_id, verb, done, skipped, not_found);
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
			  List **tallies, int64 *done, int64 *found)
{
	for (int off = 0; off < nids; off += DLQ_BATCH_IDS)
	{
		Datum		value = dlq_id_array_datum(ids + off, Min(DLQ_BATCH_IDS, nids - off));

		*found += lifecycle_count_existing(value);
		dlq_execute_kept_moved(plan, &value, NULL, 0, expected_ret);
		*done += dlq_queue_tally_rows(tallies);
		SPI_freetuptable(SPI_tuptable);
	}
}

/*
 * The body of dlq_discard and dlq_resolve: run sql (prepared once into
 * *plan, through dlq_schema_sql; it takes a bigint[] and returns queue,
 * message_id of the rows it changed) over the ids in batches, audit one
 * "verb" event per queue, and return the summary.
 */
static Jsonb *
lifecycle_by_ids(const int64 *ids, int nids, SPIPlanPtr *plan, const char *sql,
				 const char *verb, Jsonb *detail)
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
		Oid			types[1] = {INT8ARRAYOID};

		*plan = dlq_prepare_kept(dlq_schema_sql(sql), 1, types);
	}
	lifecycle_run(*plan, strcmp(verb, "discarded") == 0 ?
				  SPI_OK_DELETE_RETURNING : SPI_OK_UPDATE_RETURNING,
				  ids, nids, &tallies, &done, &found);
	lifecycle_audit(tallies, verb, GetUserNameFromId(owner.caller, false),
					request_id, detail);
	summary = lifecycle_summary(caller_cxt,
								DatumGetCString(DirectFunctionCall1(uuid_out, request_id)),
								verb, done, found - done, nids - found);
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
									   "discarded", NULL));
}

static void
lifecycle_discard_prepare(void)
{
	Oid			types[5] = {TEXTOID, TEXTOID, TEXTOID, INTERVALOID, INT8OID};

	if (discard_all_plan != NULL)
		return;
	discard_all_plan = dlq_prepare_kept(
										"WITH c AS (SELECT message_id FROM dlq.messages"
										"  WHERE queue = $1 AND status = $2::dlq.status"
										"  AND ($3::text IS NULL OR component = $3)"
										"  AND ($4::interval IS NULL OR stored_at < now() - $4)"
										"  AND message_id > $5"
										"  ORDER BY message_id LIMIT 1000 FOR UPDATE SKIP LOCKED),"
										" d AS (DELETE FROM dlq.messages m USING c"
										"  WHERE m.message_id = c.message_id RETURNING m.message_id)"
										" SELECT (SELECT max(message_id) FROM c), (SELECT count(*) FROM d),"
										"  (SELECT array_agg(message_id) FROM"
										"   (SELECT message_id FROM d ORDER BY 1 LIMIT 101) x)",
										5, types);
}

/*
 * One keyset batch of dlq_discard_all after *cursor: delete, tally, move
 * the cursor.  Returns false when no message was left to look at.
 */
static bool
lifecycle_discard_batch(const char *queue, const char *status, const char *component,
						Interval *older_than, int64 *cursor, List **tallies, int64 *done)
{
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	bool		isnull;
	Datum		d;
	DlqQueueTally *t;

	values[0] = CStringGetTextDatum(queue);
	values[1] = CStringGetTextDatum(status);
	if (component)
		values[2] = CStringGetTextDatum(component);
	else
		nulls[2] = 'n';
	if (older_than)
		values[3] = IntervalPGetDatum(older_than);
	else
		nulls[3] = 'n';
	values[4] = Int64GetDatum(*cursor);
	if (dlq_execute_kept_moved(discard_all_plan, values, nulls, 0, SPI_OK_SELECT) != 1)
		elog(ERROR, "could not discard messages");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return false;
	*cursor = DatumGetInt64(d);
	t = dlq_queue_tally(tallies, queue);
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

PG_FUNCTION_INFO_V1(dlq_discard_all);

/*
 * dlq_discard_all(queue, status, component, older_than) returns jsonb
 *
 * Delete every message of the queue in one status (not replaying),
 * optionally of one component and stored longer ago than older_than, in
 * keyset batches.  Messages locked by a concurrent call are left alone.
 */
Datum
dlq_discard_all(PG_FUNCTION_ARGS)
{
	char	   *queue;
	const char *status;
	char	   *component;
	Interval   *older_than = NULL;
	DlqOwnerContext owner;
	MemoryContext caller_cxt = CurrentMemoryContext;
	List	   *tallies = NIL;
	int64		done = 0;
	int64		cursor = 0;
	Datum		request_id = dlq_new_request_id();
	Jsonb	   *summary;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	status = dlq_check_status(PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1), false);
	if (strcmp(status, "replaying") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot discard replaying messages"),
				 errdetail("Replaying messages are in the hands of consumers."),
				 errhint("Wait for them to be acknowledged or to time out, or resolve them with dlq_resolve.")));
	component = dlq_check_name("component", PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2), true);
	older_than = dlq_check_interval(fcinfo, 3, "older_than", true, DLQ_MAX_AGE_YEARS);

	dlq_become_owner(&owner);
	SPI_connect();
	dlq_check_queue_exists(queue);
	lifecycle_discard_prepare();
	while (lifecycle_discard_batch(queue, status, component, older_than, &cursor,
								   &tallies, &done))
		;
	lifecycle_audit(tallies, "discarded", GetUserNameFromId(owner.caller, false),
					request_id, NULL);
	summary = lifecycle_summary(caller_cxt,
								DatumGetCString(DirectFunctionCall1(uuid_out, request_id)),
								"discarded", done, 0, 0);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(summary);
}

PG_FUNCTION_INFO_V1(dlq_resolve);

/*
 * dlq_resolve(message_ids bigint[], note text) returns jsonb
 *
 * Close open messages (pending, replaying, review) without replay.
 */
Datum
dlq_resolve(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;
	Jsonb	   *detail = NULL;
	char	   *note = NULL;

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);
	if (!PG_ARGISNULL(1))
	{
		dlq_check_size("note", (struct varlena *) PG_GETARG_TEXT_PP(1));
		note = text_to_cstring(PG_GETARG_TEXT_PP(1));
		detail = dlq_jsonb(psprintf("{\"note\": %s}", dlq_json_quote(note)));
	}

	/* status as text: driven by the primary key, see dlq_ack */
	PG_RETURN_JSONB_P(lifecycle_by_ids(ids, nids, &resolve_plan,
									   "UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),"
									   "  claimed_by = NULL, claim_expires_at = NULL, next_retry_at = NULL"
									   DLQ_SET_CLOSING_SLOT
									   " WHERE message_id = ANY ($1)[[ AND slot = 0]]"
									   " AND status::text IN ('pending', 'replaying', 'review')"
									   " RETURNING queue, message_id",
									   "resolved", detail));
}
