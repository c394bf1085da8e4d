/*-------------------------------------------------------------------------
 *
 * move.c
 *	  Moving open messages to another queue: dlq_move and dlq_move_all, the
 *	  redrive to a custom destination of SQS.
 *
 *	  A move takes ids in batches of DLQ_BATCH_IDS (dlq_move_all finds them
 *	  with a keyset loop over the source queue's index, pending then
 *	  review), locks the open ones with FOR UPDATE SKIP LOCKED and changes
 *	  their queue in one statement per batch.  What a message keeps and what
 *	  it takes from the target queue:
 *
 *	  - kept: payload, error and its context, component, dedup_key,
 *		occurrences, attempts, stored_at, source_relation and operation;
 *	  - from the target: max_attempts, expires_at (now plus its
 *		retention), error_class (its SQLSTATE classified by the target's
 *		transient/permanent lists); status pending, or review when attempts
 *		already reach the target's max_attempts;
 *	  - cleared: next_retry_at (a moved message waits for a reprocess, not
 *		for the target's auto_retry), replay_request_id and any claim.
 *
 *	  Not moved, and counted in the summary:
 *	  - skipped: replaying messages (in a consumer's hands), closed ones,
 *		ones already in the target queue, and ones a concurrent call holds;
 *	  - conflicts: a dedup_key that an open message of the target holds,
 *		or that an earlier message of the same batch takes there; the
 *		message stays where it is.  A key a concurrent dlq_store takes
 *		meanwhile makes the batch run again, and the message a conflict;
 *	  - refused: what the target would never replay.  A queue bound to a
 *		table (replay_target) re-applies only rows captured from that table
 *		(DESIGN 7.1): any other message moved there would only fail with
 *		42501, so it is not moved; and a target with a components list
 *		takes only those components.  The replay code enforces the first
 *		rule on its own, whatever moved a message (replay.c).
 *
 *	  A paused source or target does not stop a move: pausing stops
 *	  replays, and a move replays nothing.  Every call is one request id
 *	  with a 'moved' event on each source queue (to) and on the target
 *	  (from), with the ids when there are few.  A dry run reads the same
 *	  statement without locks and without the UPDATE, and writes nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "dlq.h"
#include "filter.h"
#include "version.h"

/* One source queue of a call and what happened to its messages. */
typedef struct MoveQueue
{
	char	   *queue;
	DlqIdTally	moved;
	int64		conflicts;
	int64		refused;
} MoveQueue;

typedef struct MoveState
{
	const char *target;
	bool		dry_run;
	const char *actor;
	Datum		request_id;
	char	   *filters;		/* JSON members of move_all's filters, or "" */
	List	   *queues;			/* MoveQueue */
	int64		requested;
	int64		found;
	int64		moved;
	int64		conflicts;
	int64		refused;
} MoveState;

static SPIPlanPtr move_plan = NULL;
static SPIPlanPtr move_dry_plan = NULL;
static SPIPlanPtr found_plan = NULL;
static SPIPlanPtr target_plan = NULL;
static SPIPlanPtr candidates_plans[DLQ_FILTER_VARIANTS];

/*
 * The open messages of $1 (ids) not in $2 (the target) and their outcome:
 * refused, conflict or move.  %s is the locking clause.
 */
#define MOVE_CLASSIFY \
	"WITH c AS (SELECT m.message_id, m.queue, m.dedup_key, m.component, m.source_relation" \
	"  FROM dlq.messages m" \
	"  WHERE m.message_id = ANY ($1) AND m.slot = 0" \
	"  AND m.status IN ('pending', 'review') AND m.queue <> $2" \
	"  ORDER BY m.message_id%s)," \
	" k AS (SELECT c.queue, c.message_id, CASE" \
	"   WHEN q.replay_target IS NOT NULL" \
	"    AND c.source_relation IS DISTINCT FROM q.replay_target THEN 'refused'" \
	"   WHEN q.components IS NOT NULL" \
	"    AND NOT coalesce(c.component = ANY (q.components), false) THEN 'refused'" \
	"   WHEN c.dedup_key IS NOT NULL AND (EXISTS (SELECT 1 FROM dlq.messages o" \
	"     WHERE o.slot = 0 AND o.queue = $2 AND o.dedup_key = c.dedup_key" \
	"     AND o.status IN ('pending', 'review'))" \
	"    OR EXISTS (SELECT 1 FROM c e WHERE e.dedup_key = c.dedup_key" \
	"     AND e.message_id < c.message_id)) THEN 'conflict'" \
	"   ELSE 'move' END AS outcome" \
	"  FROM c JOIN dlq.queues q ON q.queue = $2)"

static void
move_prepare(void)
{
	Oid			types[2] = {INT8ARRAYOID, TEXTOID};

	if (move_plan != NULL)
		return;
	move_plan = dlq_prepare_kept(psprintf(MOVE_CLASSIFY
										  ", u AS (UPDATE dlq.messages m SET queue = $2,"
										  "  max_attempts = q.max_attempts,"
										  "  error_class = dlq.sqlstate_class(m.sqlstate::text,"
										  "   q.transient_sqlstates, q.permanent_sqlstates),"
										  "  status = CASE WHEN m.attempts >= q.max_attempts"
										  "   THEN 'review' ELSE 'pending' END::dlq.status,"
										  "  expires_at = now() + q.retention, next_retry_at = NULL,"
										  "  replay_request_id = NULL, claimed_by = NULL,"
										  "  claim_expires_at = NULL"
										  "  FROM k, dlq.queues q"
										  "  WHERE k.outcome = 'move' AND m.message_id = k.message_id"
										  "  AND m.slot = 0 AND q.queue = $2"
										  "  RETURNING m.message_id)"
										  " SELECT k.queue, k.message_id,"
										  "  CASE WHEN u.message_id IS NOT NULL THEN 'moved'"
										  "   WHEN k.outcome = 'move' THEN 'skipped'"
										  "   ELSE k.outcome END"
										  " FROM k LEFT JOIN u ON u.message_id = k.message_id"
										  " ORDER BY k.queue, k.message_id",
										  " FOR UPDATE OF m SKIP LOCKED"),
								 2, types);
	move_dry_plan = dlq_prepare_kept(psprintf(MOVE_CLASSIFY
											  " SELECT k.queue, k.message_id,"
											  "  CASE k.outcome WHEN 'move' THEN 'moved' ELSE k.outcome END"
											  " FROM k ORDER BY k.queue, k.message_id", ""),
									 2, types);
	found_plan = dlq_prepare_kept("SELECT count(*) FROM dlq.messages WHERE message_id = ANY ($1)",
								  1, types);
}

static MoveQueue *
move_queue(MoveState *st, const char *queue)
{
	ListCell   *lc;
	MoveQueue  *mq;

	foreach(lc, st->queues)
	{
		mq = (MoveQueue *) lfirst(lc);
		if (strcmp(mq->queue, queue) == 0)
			return mq;
	}
	mq = palloc0(sizeof(MoveQueue));
	mq->queue = pstrdup(queue);
	st->queues = lappend(st->queues, mq);
	return mq;
}

/* Move one batch of at most DLQ_BATCH_IDS distinct ids, sorted. */
static void
move_batch(MoveState *st, const int64 *ids, int n, bool count_found)
{
	Datum		values[2];
	bool		isnull;
	SPITupleTable *tt;
	MoveQueue  *mq = NULL;

	move_prepare();
	values[0] = dlq_id_array_datum(ids, n);
	values[1] = CStringGetTextDatum(st->target);
	if (count_found)
	{
		dlq_execute_kept(found_plan, values, NULL, true, 1, SPI_OK_SELECT);
		st->found += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull));
		SPI_freetuptable(SPI_tuptable);
	}
	else
		st->found += n;

	if (st->dry_run)
		dlq_execute_kept(move_dry_plan, values, NULL, true, 0, SPI_OK_SELECT);
	else
		dlq_execute_kept_retried(move_plan, values, NULL, 0, SPI_OK_SELECT, DLQ_RETRY_DEDUP);
	tt = SPI_tuptable;
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *queue = TextDatumGetCString(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
		char	   *outcome = TextDatumGetCString(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));

		if (mq == NULL || strcmp(mq->queue, queue) != 0)
			mq = move_queue(st, queue);
		if (strcmp(outcome, "moved") == 0)
		{
			dlq_tally_add(&mq->moved, id);
			st->moved++;
		}
		else if (strcmp(outcome, "conflict") == 0)
		{
			mq->conflicts++;
			st->conflicts++;
		}
		else if (strcmp(outcome, "refused") == 0)
		{
			mq->refused++;
			st->refused++;
		}
	}
	SPI_freetuptable(tt);
}

/*
 * Check the target queue (it must exist: 42704) and start the call, as the
 * owner inside SPI.
 */
static void
move_begin(MoveState *st, DlqOwnerContext *owner, const char *target, bool dry_run)
{
	memset(st, 0, sizeof(*st));
	st->target = target;
	st->dry_run = dry_run;
	st->filters = "";
	st->request_id = dlq_new_request_id();
	dlq_become_owner(owner);
	SPI_connect();
	st->actor = GetUserNameFromId(owner->caller, false);
	if (target_plan == NULL)
	{
		Oid			types[1] = {TEXTOID};

		target_plan = dlq_prepare_kept("SELECT 1 FROM dlq.queues WHERE queue = $1", 1, types);
	}
	{
		Datum		value = CStringGetTextDatum(target);

		dlq_execute_kept(target_plan, &value, NULL, true, 1, SPI_OK_SELECT);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("target queue \"%s\" does not exist", target),
					 errhint("Create it with dlq_configure('%s').", target)));
		SPI_freetuptable(SPI_tuptable);
	}
}

static int
move_queue_cmp(const ListCell *a, const ListCell *b)
{
	return strcmp(((MoveQueue *) lfirst(a))->queue, ((MoveQueue *) lfirst(b))->queue);
}

/*
 * Audit the moves, a 'moved' event on each source queue and one per source
 * on the target, unless a dry run; return the summary in result_cxt.
 */
static Jsonb *
move_finish(MoveState *st, MemoryContext result_cxt, bool by_ids)
{
	ListCell   *lc;
	char	   *request_id = DatumGetCString(DirectFunctionCall1(uuid_out, st->request_id));
	char	   *json;
	MemoryContext old;
	Jsonb	   *summary;

	list_sort(st->queues, move_queue_cmp);
	foreach(lc, st->queues)
	{
		MoveQueue  *mq = (MoveQueue *) lfirst(lc);

		if (st->dry_run || mq->moved.count == 0)
			continue;
		dlq_tally_audit(&mq->moved, "moved", st->actor, mq->queue, st->request_id,
						dlq_jsonb(psprintf("{\"to\": %s, \"conflicts\": " INT64_FORMAT
										   ", \"refused\": " INT64_FORMAT "%s}",
										   dlq_json_quote(st->target), mq->conflicts,
										   mq->refused, st->filters)));
		dlq_tally_audit(&mq->moved, "moved", st->actor, st->target, st->request_id,
						dlq_jsonb(psprintf("{\"from\": %s}", dlq_json_quote(mq->queue))));
	}

	json = psprintf("{\"request_id\": \"%s\", \"moved\": " INT64_FORMAT
					", \"conflicts\": " INT64_FORMAT ", \"refused\": " INT64_FORMAT
					", \"skipped\": " INT64_FORMAT "%s, \"dry_run\": %s}",
					request_id, st->moved, st->conflicts, st->refused,
					st->found - st->moved - st->conflicts - st->refused,
					by_ids ? psprintf(", \"not_found\": " INT64_FORMAT,
									  st->requested - st->found) : "",
					st->dry_run ? "true" : "false");
	old = MemoryContextSwitchTo(result_cxt);
	summary = dlq_jsonb(json);
	MemoryContextSwitchTo(old);
	return summary;
}

PG_FUNCTION_INFO_V1(dlq_move);

/*
 * dlq_move(message_ids bigint[], target_queue text) returns jsonb
 *
 * {"request_id", "moved", "conflicts", "refused", "skipped", "not_found",
 * "dry_run": false}
 */
Datum
dlq_move(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;
	char	   *target;
	DlqOwnerContext owner;
	MoveState	st;
	MemoryContext caller_cxt = CurrentMemoryContext;
	Jsonb	   *summary;

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);
	target = dlq_check_name("target queue name", PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
							false);
	dlq_require_current_schema();

	move_begin(&st, &owner, target, false);
	st.requested = nids;
	for (int off = 0; off < nids; off += DLQ_BATCH_IDS)
		move_batch(&st, ids + off, Min(DLQ_BATCH_IDS, nids - off), true);
	summary = move_finish(&st, caller_cxt, true);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(summary);
}

/*
 * The candidates of dlq_move_all: $1 queue, $2 status, $3 cursor, $4
 * limit, then the filter.
 */
static SPIPlanPtr
move_candidates_plan(const DlqFilter *filter)
{
	int			flags = dlq_filter_flags(filter);

	if (candidates_plans[flags] == NULL)
	{
		Oid			types[4 + DLQ_FILTER_NARGS] = {TEXTOID, TEXTOID, INT8OID, INT4OID};
		StringInfoData sql;

		dlq_filter_types(types + 4);
		initStringInfo(&sql);
		appendStringInfoString(&sql,
							   "SELECT m.message_id FROM dlq.messages m"
							   " WHERE m.slot = 0 AND m.queue = $1 AND m.status = $2::dlq.status"
							   " AND m.message_id > $3");
		dlq_filter_sql(&sql, flags, "m", 5);
		appendStringInfoString(&sql, " ORDER BY m.message_id LIMIT $4");
		candidates_plans[flags] = dlq_prepare_kept(sql.data, 4 + DLQ_FILTER_NARGS, types);
	}
	return candidates_plans[flags];
}

/* One status of dlq_move_all, in keyset batches, up to max_messages in all. */
static void
move_all_pass(MoveState *st, const char *queue, const DlqFilter *filter, const char *status,
			  int64 max_messages)
{
	int64	   *ids = palloc(sizeof(int64) * DLQ_BATCH_IDS);
	int64		cursor = 0;
	SPIPlanPtr	plan = move_candidates_plan(filter);

	while (st->requested < max_messages)
	{
		Datum		values[4 + DLQ_FILTER_NARGS];
		char		nulls[4 + DLQ_FILTER_NARGS] = {' ', ' ', ' ', ' '};
		int			limit = (int) Min((int64) DLQ_BATCH_IDS, max_messages - st->requested);
		int			n;

		values[0] = CStringGetTextDatum(queue);
		values[1] = CStringGetTextDatum(status);
		values[2] = Int64GetDatum(cursor);
		values[3] = Int32GetDatum(limit);
		dlq_filter_values(filter, values + 4, nulls + 4);
		dlq_execute_kept(plan, values, nulls, true, 0, SPI_OK_SELECT);
		n = dlq_spi_ids(ids);
		if (n == 0)
			break;
		cursor = ids[n - 1];
		st->requested += n;
		move_batch(st, ids, n, false);
		if (n < limit)
			break;
	}
}

PG_FUNCTION_INFO_V1(dlq_move_all);

/*
 * dlq_move_all(queue, target_queue, component, sqlstate, error_class,
 *				since, until, max_messages, dry_run) returns jsonb
 *
 * The pending, then the review messages of a queue that pass the filters,
 * oldest first, at most max_messages of them.  {"request_id", "moved",
 * "conflicts", "refused", "skipped", "dry_run"}
 */
Datum
dlq_move_all(PG_FUNCTION_ARGS)
{
	static const DlqFilterArgs filter_args = {2, 3, 4, 5, 6};
	char	   *queue;
	char	   *target;
	DlqFilter	filter;
	int64		max_messages;
	bool		dry_run;
	DlqOwnerContext owner;
	MoveState	st;
	MemoryContext caller_cxt = CurrentMemoryContext;
	StringInfoData filters;
	Jsonb	   *summary;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	target = dlq_check_name("target queue name", PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1),
							false);
	if (strcmp(queue, target) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cannot move messages of queue \"%s\" into itself", queue)));
	dlq_filter_parse(fcinfo, &filter_args, &filter);
	max_messages = dlq_arg_max_messages(fcinfo, 7, "Pass NULL to move every message.");
	dry_run = dlq_arg_dry_run(fcinfo, 8);
	dlq_require_current_schema();
	initStringInfo(&filters);
	dlq_filter_json(&filters, &filter);

	move_begin(&st, &owner, target, dry_run);
	st.filters = filters.data;
	dlq_check_queue_exists(queue);
	move_all_pass(&st, queue, &filter, "pending", max_messages);
	move_all_pass(&st, queue, &filter, "review", max_messages);
	summary = move_finish(&st, caller_cxt, false);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(summary);
}
