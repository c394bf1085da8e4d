/*-------------------------------------------------------------------------
 *
 * replay.c
 *	  Replaying messages: dlq_reprocess and dlq_reprocess_all.  The rest
 *	  of the operator's side of the lifecycle (discard, resolve) is in
 *	  lifecycle.c; the consumer's side in consumer.c.
 *
 *	  A replay takes ids in batches of DLQ_BATCH_IDS (the _all form finds
 *	  them with a keyset loop over the queue's index, so a million messages
 *	  never need a million-element array).  Each batch first counts what
 *	  exists and checks every queue it touches once (paused, live consumer,
 *	  privileges on the replay target, EXECUTE on the replay handler), then
 *	  locks the eligible messages
 *	  with FOR UPDATE SKIP LOCKED: a message locked by a concurrent replay or
 *	  discard is skipped, never replayed twice.
 *
 *	  Queues without a replay target hand their messages to consumers:
 *	  pending (or, with force, review) becomes replaying in one UPDATE per
 *	  batch, and at the end ONE notification per queue is queued, sent by
 *	  PostgreSQL at commit.  Queues with a replay target re-apply each row
 *	  to the table, authorised by the caller and inserted as the table's
 *	  owner in a security-restricted operation (capture.h): success
 *	  resolves the message, failure records the new error on the same
 *	  message and sends it back to pending, or to review once it has used
 *	  max_attempts replays.  Only rows captured from the target are
 *	  ever re-applied to it: any other message in such a queue (a writer's
 *	  dlq_store, rows captured from another table) goes to review with
 *	  42501, audited, whoever replays it.  Queues with a replay handler
 *	  call it once per message, as the caller (handler.c), with the same
 *	  outcomes; they need no live consumer.
 *
 *	  Re-applies and handler calls run a few messages per subtransaction
 *	  (dlq_isolate_run, handler.h): any error of one message is its failure
 *	  and undoes only what was done for it, except query cancel and the rest
 *	  of class 57, and for a table a missing privilege, which fail the call.
 *	  Only the re-apply or the call runs inside; the batch's messages are
 *	  resolved in one statement, and failures recorded, outside.  Code a
 *	  replay runs (a handler, a target's trigger) may not start a replay
 *	  (55000), and a handler that changes its own message fails with 55000.
 *
 *	  Every call is one request id; every queue it touched gets one audit
 *	  event per kind of outcome, with the ids when there are few, and the
 *	  caller's reason and ticket on the replay_requested and redriven ones.
 *
 *	  dlq_reprocess_all takes the filters of filter.c and dry_run.  A dry run
 *	  makes every check a real call makes (a paused queue, no live consumer
 *	  and missing privileges on the replay target fail it the same way), then
 *	  only reads: each message that would be handed to consumers,
 *	  re-applied or given to a handler counts as replayed (no handler is
 *	  called), and one that would be refused (not
 *	  captured from the target) as failed, the only failure known without
 *	  trying.  Nothing is locked, changed, notified or audited.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "capture.h"
#include "dlq.h"
#include "filter.h"
#include "handler.h"
#include "history.h"
#include "version.h"

/* At most this many failures are listed in a replay summary. */
#define DLQ_MAX_FAILURES 100

/* One queue a call touched, with what happened to its messages. */
typedef struct ReplayQueue
{
	char	   *queue;
	bool		settings_read;	/* settings read, not paused */
	bool		checked;		/* and checked for replay */
	bool		update_checked; /* UPDATE privilege on the target checked */
	Oid			target;			/* replay target, or InvalidOid */
	Oid			handler_fn;		/* replay handler, or InvalidOid */
	Oid			handler_owner;	/* its owner when it was bound */
	DlqHandler *handler;		/* opened for the caller once checked */
	char	   *channel;
	DlqIdTally	handed;			/* moved to replaying */
	DlqIdTally	redriven;		/* taken from review with force */
	DlqIdTally	reapplied;		/* re-applied to the target, or handled */
	DlqIdTally	failed;			/* re-apply or handler failed */
	DlqIdTally	refused;		/* not captured from the target: to review */
	DlqAttemptLog *failed_log;	/* the failed attempts, for replay_failed */
	DlqAttemptLog *refused_log; /* the refused ones */
} ReplayQueue;

typedef struct ReplayState
{
	DlqOwnerContext *owner;
	const char *actor;
	Datum		request_id;
	char	   *request_id_str;
	bool		force;
	bool		dry_run;		/* read and count only */
	Jsonb	   *detail;			/* reason and ticket, or NULL */
	List	   *queues;			/* ReplayQueue */
	int64		requested;
	int64		found;
	int64		nfailures;
	StringInfoData failures;	/* JSON array elements, comma separated */
	DlqIsolate	iso;			/* failures caught per message (handler.h) */
	MemoryContext batch_cxt;
} ReplayState;

/*
 * One message of a batch re-applied to its table or handed to its
 * handler inside the runs of dlq_isolate_run, with its outcome.
 */
typedef struct ReplayItem
{
	int64		id;
	ReplayQueue *rq;
	bool		was_review;
	Datum		arg;			/* payload, or dlq.message for its handler */
	const char *operation;
	ItemPointerData tid;		/* handler: the locked row in messages_live */
	DlqReapplyResult result;
} ReplayItem;

typedef struct ReplayRun
{
	ReplayState *st;
	ReplayItem *items;
	bool		handlers;		/* the items go to handlers */
} ReplayRun;

static SPIPlanPtr info_plan = NULL;
static SPIPlanPtr settings_plan = NULL;
static SPIPlanPtr hand_plan = NULL;
static SPIPlanPtr lock_target_plan = NULL;
static SPIPlanPtr lock_handler_plan = NULL;
static SPIPlanPtr untouched_plan = NULL;
static SPIPlanPtr reapplied_plan = NULL;
static SPIPlanPtr reapply_failed_plan = NULL;
static SPIPlanPtr last_replay_plan = NULL;
static SPIPlanPtr candidates_plans[DLQ_FILTER_VARIANTS];
static SPIPlanPtr dry_plan = NULL;

/* Raise 42501 unless the caller may write to a replay target. */
static void
replay_check_target_privilege(ReplayState *st, ReplayQueue *rq, AclMode mode)
{
	if (pg_class_aclcheck(rq->target, st->owner->caller, mode) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to replay into table %s",
						get_rel_name(rq->target) ? get_rel_name(rq->target) : "?"),
				 errdetail("Queue \"%s\" re-applies its rows to that table on behalf of the caller, which lacks %s on it.",
						   rq->queue, mode == ACL_INSERT ? "INSERT" : "UPDATE")));
}

/*
 * Open a queue's replay handler for the caller: it exists, and the caller
 * may execute it (handler.c; 42883, 42501 for the whole call).
 */
static void
replay_open_handler(ReplayState *st, ReplayQueue *rq)
{
	MemoryContext cxt = MemoryContextGetParent(st->batch_cxt);

	rq->handler = MemoryContextAllocZero(cxt, sizeof(DlqHandler));
	dlq_handler_open(rq->handler, rq->handler_fn, rq->handler_owner, st->owner->caller,
					 rq->queue, cxt);
}

static ReplayQueue *
replay_queue(ReplayState *st, const char *queue)
{
	ListCell   *lc;
	ReplayQueue *rq;
	MemoryContext old;

	foreach(lc, st->queues)
	{
		rq = (ReplayQueue *) lfirst(lc);
		if (strcmp(rq->queue, queue) == 0)
			return rq;
	}
	old = MemoryContextSwitchTo(MemoryContextGetParent(st->batch_cxt));
	rq = palloc0(sizeof(ReplayQueue));
	rq->queue = pstrdup(queue);
	st->queues = lappend(st->queues, rq);
	MemoryContextSwitchTo(old);
	return rq;
}

/*
 * Read a queue's settings and check that its messages may be replayed now:
 * not paused (55000); a consumer listening unless the queue does without
 * (DLQ01); privileges on the replay target (42501).  Once per queue per
 * call; an error undoes the whole call.
 */
static void
replay_check_queue(ReplayState *st, ReplayQueue *rq, bool eligible, bool needs_update)
{
	if (!rq->checked && !(rq->settings_read && !eligible))
	{
		Datum		value = CStringGetTextDatum(rq->queue);
		HeapTuple	row;
		TupleDesc	desc;
		bool		isnull;
		bool		paused;
		bool		require_listener;
		Datum		d;

		if (settings_plan == NULL)
		{
			Oid			types[1] = {TEXTOID};

			settings_plan = dlq_prepare_kept(dlq_schema_sql(
											 "SELECT paused, replay_target, channel, require_listener"
											 "[[, replay_handler, replay_handler_owner]]"
											 " FROM dlq.queues WHERE queue = $1"),
											 1, types);
		}
		dlq_execute_kept(settings_plan, &value, NULL, false, 1, SPI_OK_SELECT);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("queue \"%s\" does not exist", rq->queue)));
		row = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		paused = DatumGetBool(SPI_getbinval(row, desc, 1, &isnull));
		d = SPI_getbinval(row, desc, 2, &isnull);
		rq->target = isnull ? InvalidOid : DatumGetObjectId(d);
		rq->channel = MemoryContextStrdup(MemoryContextGetParent(st->batch_cxt),
										  TextDatumGetCString(SPI_getbinval(row, desc, 3, &isnull)));
		require_listener = DatumGetBool(SPI_getbinval(row, desc, 4, &isnull));
		rq->handler_fn = InvalidOid;
		if (desc->natts >= 5)
		{
			d = SPI_getbinval(row, desc, 5, &isnull);
			rq->handler_fn = isnull ? InvalidOid : DatumGetObjectId(d);
			d = SPI_getbinval(row, desc, 6, &isnull);
			rq->handler_owner = isnull ? InvalidOid : DatumGetObjectId(d);
		}
		SPI_freetuptable(SPI_tuptable);

		if (paused)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("queue \"%s\" is paused", rq->queue),
					 errdetail("Nothing was replayed."),
					 errhint("Resume it with dlq_resume('%s').", rq->queue)));
		rq->settings_read = true;
		if (!eligible)
			return;
		if (!OidIsValid(rq->target) && !OidIsValid(rq->handler_fn) && require_listener &&
			!dlq_consumer_alive(rq->queue))
			ereport(ERROR,
					(errcode(ERRCODE_DLQ_NO_CONSUMER),
					 errmsg("no consumer is listening on queue \"%s\"", rq->queue),
					 errdetail("Nothing was replayed: replayed messages would wait until a consumer appears."),
					 errhint("Start a consumer that calls dlq_listen('%s'), or configure the queue with require_listener => false.",
							 rq->queue)));
		if (OidIsValid(rq->handler_fn))
			replay_open_handler(st, rq);
		else if (OidIsValid(rq->target))
			replay_check_target_privilege(st, rq, ACL_INSERT);
		rq->checked = true;
	}
	if (needs_update && OidIsValid(rq->target) && !rq->update_checked)
	{
		replay_check_target_privilege(st, rq, ACL_UPDATE);
		rq->update_checked = true;
	}
}

static void
replay_add_failure(ReplayState *st, int64 id, const char *sqlstate, const char *error)
{
	if (st->nfailures < DLQ_MAX_FAILURES)
	{
		MemoryContext old = MemoryContextSwitchTo(MemoryContextGetParent(st->batch_cxt));

		if (st->nfailures > 0)
			appendStringInfoString(&st->failures, ", ");
		appendStringInfo(&st->failures, "{\"message_id\": " INT64_FORMAT ", \"sqlstate\": %s, \"error\": %s}",
						 id, sqlstate && sqlstate[0] ? dlq_json_quote(sqlstate) : "null",
						 dlq_json_quote(error ? error : ""));
		MemoryContextSwitchTo(old);
	}
	st->nfailures++;
}

/*
 * A message that was not captured from its queue's replay target is never
 * inserted there, whoever stored it and whoever replays it (DESIGN 7.1):
 * fill *result with the refusal.
 */
static void
replay_refuse_foreign(Oid target, DlqReapplyResult *result)
{
	result->ok = false;
	strlcpy(result->sqlstate, "42501", sizeof(result->sqlstate));
	result->error = psprintf("message was not captured from table %s; only rows captured from a table are replayed into it",
							 DatumGetCString(DirectFunctionCall1(regclassout,
																 ObjectIdGetDatum(target))));
}

/* The plans of a replay batch, prepared together once per backend. */
static void
replay_prepare(void)
{
	Oid			types[3] = {INT8ARRAYOID, BOOLOID, UUIDOID};
	Oid			failed_types[8] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, UUIDOID,
	BOOLOID, BOOLOID};
	Oid			reapplied_types[2] = {INT8ARRAYOID, UUIDOID};

	if (info_plan != NULL)
		return;
	info_plan = dlq_prepare_kept(
								 "SELECT m.queue, count(*),"
								 "  count(*) FILTER (WHERE m.status = 'pending'"
								 "   OR ($2 AND m.status = 'review' AND m.replay_request_id IS DISTINCT FROM $3)),"
								 "  coalesce(bool_or(m.operation = 'UPDATE'), false)"
								 " FROM dlq.messages m WHERE m.message_id = ANY ($1)"
								 " GROUP BY m.queue ORDER BY m.queue",
								 3, types);
	hand_plan = dlq_prepare_kept(dlq_schema_sql(
								 "WITH c AS (SELECT m.message_id, m.status AS old_status"
								 "  FROM dlq.messages m JOIN dlq.queues q"
								 "   ON q.queue = m.queue AND q.replay_target IS NULL[[ AND q.replay_handler IS NULL]]"
								 "  WHERE m.message_id = ANY ($1)[[ AND m.slot = 0]] AND (m.status = 'pending'"
								 "   OR ($2 AND m.status = 'review' AND m.replay_request_id IS DISTINCT FROM $3))"
								 "  ORDER BY m.message_id FOR UPDATE OF m SKIP LOCKED)"
								 " UPDATE dlq.messages m SET status = 'replaying',"
								 "  attempts = CASE WHEN c.old_status = 'review' THEN 1 ELSE m.attempts + 1 END,"
								 "  replay_request_id = $3, claimed_by = NULL, claim_expires_at = NULL,"
								 "  next_retry_at = NULL"
								 " FROM c WHERE m.message_id = c.message_id[[ AND m.slot = 0]]"
								 " RETURNING m.queue, m.message_id, c.old_status = 'review'"),
								 3, types);
	lock_target_plan = dlq_prepare_kept(dlq_schema_sql(
										"SELECT m.message_id, m.queue, m.status = 'review', m.payload, m.operation,"
										"  m.source_relation"
										" FROM dlq.messages m JOIN dlq.queues q"
										"  ON q.queue = m.queue AND q.replay_target IS NOT NULL"
										"[[ AND q.replay_handler IS NULL]]"
										" WHERE m.message_id = ANY ($1)[[ AND m.slot = 0]] AND (m.status = 'pending'"
										"  OR ($2 AND m.status = 'review' AND m.replay_request_id IS DISTINCT FROM $3))"
										" ORDER BY m.message_id FOR UPDATE OF m SKIP LOCKED"),
										3, types);
	/* a dry run: what would be handed or re-applied, read without locks */
	dry_plan = dlq_prepare_kept(
								"SELECT m.message_id, m.queue, m.status = 'review',"
								"  m.source_relation IS NOT DISTINCT FROM q.replay_target"
								" FROM dlq.messages m JOIN dlq.queues q ON q.queue = m.queue"
								" WHERE m.message_id = ANY ($1) AND (m.status = 'pending'"
								"  OR ($2 AND m.status = 'review' AND m.replay_request_id IS DISTINCT FROM $3))"
								" ORDER BY m.message_id",
								3, types);
	/* $8: straight to review, whatever attempts are left */
	reapply_failed_plan = dlq_prepare_kept(dlq_schema_sql(
										   "UPDATE dlq.messages m SET"
										   "  attempts = CASE WHEN $7 THEN 1 ELSE m.attempts + 1 END,"
										   "  status = CASE WHEN $8 OR (CASE WHEN $7 THEN 1 ELSE m.attempts + 1 END)"
										   "   >= m.max_attempts THEN 'review' ELSE 'pending' END::dlq.status,"
										   "  error = $2, sqlstate = $3, error_class = coalesce("
										   "[[dlq.sqlstate_class($3::text, q.transient_sqlstates, q.permanent_sqlstates), ]]$4),"
										   "  error_detail = $5,"
										   "  last_failed_at = now(), replay_request_id = $6,"
										   "  claimed_by = NULL, claim_expires_at = NULL,"
										   "  next_retry_at = CASE WHEN $8 OR (CASE WHEN $7 THEN 1 ELSE m.attempts + 1 END)"
										   "   >= m.max_attempts THEN NULL"
										   "   WHEN q.auto_retry THEN now() + dlq.retry_delay(q,"
										   "    CASE WHEN $7 THEN 1 ELSE m.attempts + 1 END) END"
										   " FROM dlq.queues q WHERE q.queue = m.queue AND m.message_id = $1[[ AND m.slot = 0]]"
										   " RETURNING m.attempts"),
										   8, failed_types);
	reapplied_plan = dlq_prepare_kept(dlq_schema_sql(
									  "UPDATE dlq.messages SET status = 'resolved', resolved_at = now(),"
									  "  attempts = CASE WHEN status = 'review' THEN 1 ELSE attempts + 1 END,"
									  "  replay_request_id = $2, next_retry_at = NULL,"
									  "  claimed_by = NULL, claim_expires_at = NULL"
									  DLQ_SET_CLOSING_SLOT
									  " WHERE message_id = ANY ($1)[[ AND slot = 0]]"),
									  2, reapplied_types);
}

/*
 * The plans of handler replays, which need the current schema: lock the
 * messages of handler queues (message_id, queue, was_review, payload, the
 * row's ctid in messages_live, the message as a dlq.message); and after a
 * run, the first of its rows (tid[]) that changed, by ordinal.
 */
static void
replay_prepare_handlers(void)
{
	Oid			types[3] = {INT8ARRAYOID, BOOLOID, UUIDOID};
	Oid			tid_types[1] = {TIDARRAYOID};

	if (lock_handler_plan != NULL)
		return;
	dlq_require_current_schema();
	lock_handler_plan = dlq_prepare_kept(dlq_schema_sql(
										 "SELECT m.message_id, m.queue, m.status = 'review', m.payload, m.ctid,"
										 "  ROW(" DLQ_MESSAGE_COLUMNS ")::dlq.message"
										 " FROM dlq.messages m JOIN dlq.queues q"
										 "  ON q.queue = m.queue AND q.replay_handler IS NOT NULL"
										 " WHERE m.message_id = ANY ($1) AND m.slot = 0 AND (m.status = 'pending'"
										 "  OR ($2 AND m.status = 'review' AND m.replay_request_id IS DISTINCT FROM $3))"
										 " ORDER BY m.message_id FOR UPDATE OF m SKIP LOCKED"),
										 3, types);
	untouched_plan = dlq_prepare_kept(
									  "SELECT min(u.i) FROM unnest($1) WITH ORDINALITY u(t, i)"
									  " WHERE NOT EXISTS (SELECT FROM dlq.messages_live l WHERE l.ctid = u.t)",
									  1, tid_types);
}

/*
 * The attempt log of a queue's failed (or refused) re-applies, made on
 * first use in the context of the call.
 */
static DlqAttemptLog *
replay_attempt_log(ReplayState *st, ReplayQueue *rq, bool refused)
{
	DlqAttemptLog **log = refused ? &rq->refused_log : &rq->failed_log;

	if (*log == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(MemoryContextGetParent(st->batch_cxt));
		char	   *extra = NULL;

		if (refused)
			extra = psprintf("\"sqlstate\": \"42501\", \"reason\": \"not captured from the replay target\", \"replay_target\": %s",
							 dlq_json_quote(DatumGetCString(DirectFunctionCall1(regclassout,
																			   ObjectIdGetDatum(rq->target)))));
		*log = dlq_attempt_log_create("replay_failed", st->actor, rq->queue,
									  st->request_id, extra);
		MemoryContextSwitchTo(old);
	}
	return *log;
}

/*
 * Record a failed re-apply on its message: the new error, back to pending
 * (review once max_attempts are used, or at once when refused), and in the
 * call's tallies, attempt logs and failure list.
 */
static void
replay_record_failure(ReplayState *st, ReplayQueue *rq, int64 id, bool was_review,
					  bool refused, const DlqReapplyResult *result)
{
	Datum		values[8];
	char		nulls[8];
	bool		isnull;
	int32		attempt;

	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(result->error ? result->error : "replay failed");
	if (result->sqlstate[0])
		values[2] = CStringGetTextDatum(result->sqlstate);
	else
		nulls[2] = 'n';
	values[3] = CStringGetTextDatum(dlq_error_class(result->sqlstate[0] ? result->sqlstate : NULL));
	if (result->error_detail)
		values[4] = JsonbPGetDatum(result->error_detail);
	else
		nulls[4] = 'n';
	values[5] = st->request_id;
	values[6] = BoolGetDatum(was_review);
	values[7] = BoolGetDatum(refused);
	if (dlq_execute_kept(reapply_failed_plan, values, nulls, false, 0,
						 SPI_OK_UPDATE_RETURNING) != 1)
		elog(ERROR, "could not record the failed replay of message " INT64_FORMAT, id);
	attempt = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										  &isnull));
	SPI_freetuptable(SPI_tuptable);
	dlq_tally_add(refused ? &rq->refused : &rq->failed, id);
	dlq_attempt_log_add(replay_attempt_log(st, rq, refused), id, attempt,
						result->sqlstate, result->error ? result->error : "replay failed");
	replay_add_failure(st, id, result->sqlstate, result->error);
}

/* Resolve the messages whose rows were re-applied. */
static void
replay_resolve_reapplied(ReplayState *st, const int64 *ids, int n)
{
	Datum		values[2];

	values[0] = dlq_id_array_datum(ids, n);
	values[1] = st->request_id;
	if (dlq_execute_kept(reapplied_plan, values, NULL, false, 0, SPI_OK_UPDATE) != n)
		elog(ERROR, "could not resolve re-applied messages");
}

/*
 * After a run of handler calls, as the owner: did a handler change the
 * message it was given (dlq_discard, dlq_resolve, dlq_edit, dlq_move on it
 * by a caller who may)?  Then the first such message fails its run, which
 * undoes what its handler did; the resolution of this replay must not
 * overwrite what the handler did nor be overwritten by it.  A row changed
 * by its own transaction has a new version with a new ctid (the old one
 * cannot be pruned while the transaction runs).
 */
static void
replay_check_untouched(ReplayRun *run, int from, int to, const bool *failed,
					   volatile int *current)
{
	Datum	   *tids = palloc(sizeof(Datum) * (to - from));
	int		   *index = palloc(sizeof(int) * (to - from));
	int			n = 0;
	Datum		value;
	Datum		first;
	bool		isnull;
	ReplayItem *item;

	for (int i = from; i < to; i++)
	{
		if (failed[i])
			continue;
		index[n] = i;
		tids[n++] = PointerGetDatum(&run->items[i].tid);
	}
	value = PointerGetDatum(construct_array(tids, n, TIDOID, sizeof(ItemPointerData),
											false, TYPALIGN_SHORT));
	/* not read-only: a new snapshot that sees what the handlers did */
	dlq_execute_kept(untouched_plan, &value, NULL, false, 1, SPI_OK_SELECT);
	first = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_freetuptable(SPI_tuptable);
	if (isnull)
		return;
	*current = index[DatumGetInt64(first) - 1];
	item = &run->items[*current];
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("replay handler %s changed message " INT64_FORMAT " while replaying it",
					item->rq->handler->name, item->id),
			 errdetail("A replay handler may not discard, resolve, edit or move the message it is given; what it did was undone.")));
}

/*
 * Run messages from..to-1 of a batch that have not failed, as the caller:
 * re-apply each row to its table, or call each message's handler (a
 * DlqIsolateRunFn).
 */
static void
replay_run(void *arg, int from, int to, const bool *failed, volatile int *current,
		   int64 *executions)
{
	ReplayRun  *run = (ReplayRun *) arg;
	DlqCallerScope caller;

	dlq_as_caller_begin(run->st->owner, &caller);
	for (int i = from; i < to; i++)
	{
		ReplayItem *item = &run->items[i];

		if (failed[i])
			continue;
		CHECK_FOR_INTERRUPTS();
		*current = i;
		(*executions)++;
		if (run->handlers)
		{
			memset(&item->result, 0, sizeof(DlqReapplyResult));
			dlq_handler_call(item->rq->handler, item->arg);
			item->result.ok = true;
		}
		else
			dlq_reapply_row(item->rq->target, DatumGetJsonbP(item->arg), item->operation,
							&item->result);
	}
	*current = -1;

	/*
	 * Back to the owner, dropping any setting the caller's code changed
	 * (dlq_as_caller_end would keep a plain SET): a search_path a handler
	 * chose must not reach dlq's own statements.
	 */
	AtEOXact_GUC(false, caller.guc_nest_level);
	SetUserIdAndSecContext(caller.userid, caller.sec_context);
	if (run->handlers)
		replay_check_untouched(run, from, to, failed, current);
}

/*
 * A message's error in a run (a DlqIsolateFailFn): its failure, but for
 * a table replay a missing privilege, which is not the row's fault (as in
 * capture's isolate mode) and fails the call.
 */
static bool
replay_fail(void *arg, int index, ErrorData *edata)
{
	ReplayRun  *run = (ReplayRun *) arg;
	ReplayItem *item = &run->items[index];

	if (!run->handlers && edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
		return false;
	memset(&item->result, 0, sizeof(DlqReapplyResult));
	strlcpy(item->result.sqlstate, unpack_sql_state(edata->sqlerrcode),
			sizeof(item->result.sqlstate));
	item->result.error = edata->message ? edata->message : "replay failed";
	item->result.error_detail = run->handlers ?
		dlq_handler_error_detail(item->rq->handler, edata) :
		dlq_reapply_error_detail(edata);
	return true;
}

/*
 * Run a batch's items with each failure caught (handler.h), then resolve
 * the successes in one statement and record each failure, as the owner.
 */
static void
replay_items(ReplayState *st, ReplayItem *items, int n, bool handlers)
{
	ReplayRun	run = {st, items, handlers};
	int64	   *ok_ids = palloc(sizeof(int64) * Max(n, 1));
	int			nok = 0;

	dlq_isolate_run(&st->iso, n, replay_run, replay_fail, &run);
	for (int i = 0; i < n; i++)
	{
		ReplayItem *item = &items[i];

		if (item->result.ok)
		{
			ok_ids[nok++] = item->id;
			dlq_tally_add(&item->rq->reapplied, item->id);
		}
		else
			replay_record_failure(st, item->rq, item->id, item->was_review, false,
								  &item->result);
	}
	if (nok > 0)
		replay_resolve_reapplied(st, ok_ids, nok);
}

/*
 * Re-apply the locked rows of the last SPI result (message_id, queue,
 * was_review, payload, operation, source_relation) to their queue's replay
 * target on behalf of the caller.  A row not captured from the target is
 * refused without running anything.
 */
static void
replay_reapply_rows(ReplayState *st)
{
	uint64		n = SPI_processed;
	SPITupleTable *tt = SPI_tuptable;
	ReplayItem *items = palloc0(sizeof(ReplayItem) * Max(n, 1));
	int			nitems = 0;

	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	row = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		ReplayItem *item = &items[nitems];
		Datum		op;
		Datum		src;

		item->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		item->rq = replay_queue(st, TextDatumGetCString(SPI_getbinval(row, desc, 2, &isnull)));
		item->was_review = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
		item->arg = SPI_getbinval(row, desc, 4, &isnull);
		op = SPI_getbinval(row, desc, 5, &isnull);
		item->operation = isnull ? NULL : TextDatumGetCString(op);
		src = SPI_getbinval(row, desc, 6, &isnull);
		if (item->was_review)
			dlq_tally_add(&item->rq->redriven, item->id);
		if (isnull || DatumGetObjectId(src) != item->rq->target)
		{
			replay_refuse_foreign(item->rq->target, &item->result);
			replay_record_failure(st, item->rq, item->id, item->was_review, true,
								  &item->result);
			continue;
		}
		nitems++;
	}
	replay_items(st, items, nitems, false);
	SPI_freetuptable(tt);
}

/*
 * Hand the locked messages of handler queues in the last SPI result
 * (lock_handler_plan's columns) to their handlers on behalf of the caller.
 */
static void
replay_handle_rows(ReplayState *st)
{
	uint64		n = SPI_processed;
	SPITupleTable *tt = SPI_tuptable;
	ReplayItem *items = palloc0(sizeof(ReplayItem) * Max(n, 1));

	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	row = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		ReplayItem *item = &items[i];

		item->id = DatumGetInt64(SPI_getbinval(row, desc, 1, &isnull));
		item->rq = replay_queue(st, TextDatumGetCString(SPI_getbinval(row, desc, 2, &isnull)));
		item->was_review = DatumGetBool(SPI_getbinval(row, desc, 3, &isnull));
		/* pending meanwhile in a queue the batch's check did not see eligible */
		if (item->rq->handler == NULL)
			replay_check_queue(st, item->rq, true, false);
		/* checked as another kind of queue earlier in this call, bound since */
		if (item->rq->handler == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("replay settings of queue \"%s\" changed during the replay",
							item->rq->queue),
					 errdetail("Its replay handler was set after this call had read the queue's settings. Nothing was replayed."),
					 errhint("Replay again.")));
		item->tid = *((ItemPointer) DatumGetPointer(SPI_getbinval(row, desc, 5, &isnull)));
		item->arg = SPI_getbinval(row, desc, item->rq->handler->whole_message ? 6 : 4, &isnull);
		if (item->was_review)
			dlq_tally_add(&item->rq->redriven, item->id);
	}
	replay_items(st, items, (int) n, true);
	SPI_freetuptable(tt);
}

/*
 * Count what exists of a batch, per queue, and check the queues of the
 * eligible messages (replay_check_queue).  Says whether any eligible
 * message is in a queue that hands its messages to consumers
 * (*any_handed), re-applies them to a table (*any_target) or calls a
 * handler (*any_handler).
 */
static void
replay_check_batch(ReplayState *st, Datum *values, bool *any_handed, bool *any_target,
				   bool *any_handler)
{
	SPITupleTable *tt;
	uint64		nrows;

	/* replay_check_queue runs queries: the rows are read from tt, nrows */
	dlq_execute_kept(info_plan, values, NULL, false, 0, SPI_OK_SELECT);
	tt = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;
		char	   *queue = TextDatumGetCString(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
		int64		found = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
		int64		eligible = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));
		bool		has_update = DatumGetBool(SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull));
		ReplayQueue *rq;

		st->found += found;
		if (eligible == 0)
			continue;
		rq = replay_queue(st, queue);
		replay_check_queue(st, rq, true, has_update);
		if (OidIsValid(rq->handler_fn))
			*any_handler = true;
		else if (OidIsValid(rq->target))
			*any_target = true;
		else
			*any_handed = true;
	}
	SPI_freetuptable(tt);
}

/* Queues without a target: pending (review with force) to replaying. */
static void
replay_hand(ReplayState *st, Datum *values)
{
	ReplayQueue *rq = NULL;
	SPITupleTable *tt;
	uint64		nrows;

	dlq_execute_kept_moved(hand_plan, values, NULL, 0, SPI_OK_UPDATE_RETURNING);
	tt = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	row = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		char	   *queue = TextDatumGetCString(SPI_getbinval(row, desc, 1, &isnull));
		int64		id = DatumGetInt64(SPI_getbinval(row, desc, 2, &isnull));

		if (rq == NULL || strcmp(rq->queue, queue) != 0)
			rq = replay_queue(st, queue);
		dlq_tally_add(&rq->handed, id);
		if (DatumGetBool(SPI_getbinval(row, desc, 3, &isnull)))
			dlq_tally_add(&rq->redriven, id);
	}
	SPI_freetuptable(tt);
}

/*
 * A dry run of a batch: tally what replay_hand and replay_reapply_rows
 * would do, from the rows of dry_plan (message_id, queue, was_review,
 * captured from the target), without trying any re-apply.
 */
static void
replay_dry(ReplayState *st, Datum *values)
{
	SPITupleTable *tt;
	uint64		nrows;

	dlq_execute_kept(dry_plan, values, NULL, true, 0, SPI_OK_SELECT);
	tt = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	row = tt->vals[i];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(row, tt->tupdesc, 1, &isnull));
		char	   *queue = TextDatumGetCString(SPI_getbinval(row, tt->tupdesc, 2, &isnull));
		bool		was_review = DatumGetBool(SPI_getbinval(row, tt->tupdesc, 3, &isnull));
		bool		captured = DatumGetBool(SPI_getbinval(row, tt->tupdesc, 4, &isnull));
		ReplayQueue *rq = replay_queue(st, queue);

		if (was_review)
			dlq_tally_add(&rq->redriven, id);
		if (OidIsValid(rq->handler_fn))
			dlq_tally_add(&rq->reapplied, id);	/* nothing called */
		else if (!OidIsValid(rq->target))
			dlq_tally_add(&rq->handed, id);
		else if (captured)
			dlq_tally_add(&rq->reapplied, id);
		else
		{
			DlqReapplyResult result = {0};

			replay_refuse_foreign(rq->target, &result);
			dlq_tally_add(&rq->refused, id);
			replay_add_failure(st, id, result.sqlstate, result.error);
		}
	}
	SPI_freetuptable(tt);
}

/*
 * Replay one batch of at most DLQ_BATCH_IDS distinct ids, sorted.
 */
static void
replay_batch(ReplayState *st, const int64 *ids, int n)
{
	Datum		values[3];
	bool		any_handed = false;
	bool		any_target = false;
	bool		any_handler = false;
	MemoryContext old = MemoryContextSwitchTo(st->batch_cxt);

	replay_prepare();
	values[0] = dlq_id_array_datum(ids, n);
	values[1] = BoolGetDatum(st->force);
	values[2] = st->request_id;

	replay_check_batch(st, values, &any_handed, &any_target, &any_handler);
	if (st->dry_run)
	{
		if (any_handed || any_target || any_handler)
			replay_dry(st, values);
		any_handed = any_target = any_handler = false;
	}
	if (any_handed)
		replay_hand(st, values);

	/* Queues with a target: lock, then re-apply row by row. */
	if (any_target)
	{
		dlq_execute_kept_moved(lock_target_plan, values, NULL, 0, SPI_OK_SELECT);
		replay_reapply_rows(st);
	}

	/* Queues with a handler: lock, then call it message by message. */
	if (any_handler)
	{
		replay_prepare_handlers();
		dlq_execute_kept_moved(lock_handler_plan, values, NULL, 0, SPI_OK_SELECT);
		replay_handle_rows(st);
	}

	MemoryContextSwitchTo(old);
	MemoryContextReset(st->batch_cxt);
}

static void
replay_init(ReplayState *st, DlqOwnerContext *owner, bool force)
{
	memset(st, 0, sizeof(*st));
	st->owner = owner;
	st->force = force;
	st->request_id = dlq_new_request_id();
	st->request_id_str = DatumGetCString(DirectFunctionCall1(uuid_out, st->request_id));
	initStringInfo(&st->failures);
	dlq_isolate_init(&st->iso);
}

static int
replay_queue_cmp(const ListCell *a, const ListCell *b)
{
	return strcmp(((ReplayQueue *) lfirst(a))->queue, ((ReplayQueue *) lfirst(b))->queue);
}

/*
 * Notify, audit and stamp every queue the call touched, in name order so
 * that concurrent calls lock queue rows in the same order.  Returns the
 * summary, allocated in result_cxt.
 */
static Jsonb *
replay_finish(ReplayState *st, MemoryContext result_cxt)
{
	ListCell   *lc;
	int64		handed = 0;
	int64		reapplied = 0;
	int64		failed = 0;
	int64		notifications = 0;
	StringInfoData buf;
	MemoryContext old;
	Jsonb	   *summary;

	list_sort(st->queues, replay_queue_cmp);
	foreach(lc, st->queues)
	{
		ReplayQueue *rq = (ReplayQueue *) lfirst(lc);
		int64		touched = rq->handed.count + rq->reapplied.count + rq->failed.count +
			rq->refused.count;

		handed += rq->handed.count;
		reapplied += rq->reapplied.count;
		failed += rq->failed.count + rq->refused.count;
		if (rq->handed.count > 0)
			notifications++;
		/* A dry run notifies, audits and stamps nothing. */
		if (st->dry_run)
			continue;
		if (rq->handed.count > 0)
		{
			char	   *payload = psprintf("{\"queue\": %s, \"request_id\": \"%s\", \"count\": " INT64_FORMAT "}",
										   dlq_json_quote(rq->queue), st->request_id_str,
										   rq->handed.count);

			Async_Notify(rq->channel, payload);
		}
		dlq_tally_audit(&rq->handed, "replay_requested", st->actor, rq->queue,
						st->request_id, st->detail);
		dlq_tally_audit(&rq->redriven, "redriven", st->actor, rq->queue,
						st->request_id, st->detail);
		dlq_tally_audit(&rq->reapplied, "replayed", st->actor, rq->queue,
						st->request_id, NULL);
		/* What is left of the failed attempts (history.c). */
		if (rq->failed_log != NULL)
			dlq_attempt_log_flush(rq->failed_log);
		if (rq->refused_log != NULL)
			dlq_attempt_log_flush(rq->refused_log);
		if (touched > 0)
		{
			Datum		value = CStringGetTextDatum(rq->queue);

			if (last_replay_plan == NULL)
			{
				Oid			types[1] = {TEXTOID};

				last_replay_plan = dlq_prepare_kept(
													"UPDATE dlq.queues SET last_replay_at = now() WHERE queue = $1",
													1, types);
			}
			dlq_execute_kept(last_replay_plan, &value, NULL, false, 0, SPI_OK_UPDATE);
		}
	}

	if (st->iso.subxacts > 0)
		elog(DEBUG1, "dlq replay: " INT64_FORMAT " subtransactions, " INT64_FORMAT
			 " rolled back, " INT64_FORMAT " messages run",
			 st->iso.subxacts, st->iso.rollbacks, st->iso.executions);

	initStringInfo(&buf);
	appendStringInfo(&buf,
					 "{\"request_id\": \"%s\", \"requested\": " INT64_FORMAT
					 ", \"replayed\": " INT64_FORMAT ", \"notified\": " INT64_FORMAT
					 ", \"notifications\": " INT64_FORMAT ", \"failed\": " INT64_FORMAT
					 ", \"skipped\": " INT64_FORMAT ", \"not_found\": " INT64_FORMAT
					 ", \"failures\": [%s]%s}",
					 st->request_id_str, st->requested, handed + reapplied, handed,
					 notifications, failed,
					 st->found - handed - reapplied - failed,
					 st->requested - st->found, st->failures.data,
					 st->dry_run ? ", \"dry_run\": true" : "");
	old = MemoryContextSwitchTo(result_cxt);
	summary = dlq_jsonb(buf.data);
	MemoryContextSwitchTo(old);
	return summary;
}

static void
replay_begin(ReplayState *st, DlqOwnerContext *owner, bool force)
{
	/* A handler or a target's trigger would replay its own message again. */
	if (dlq_isolate_active())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot replay messages from inside a replay"),
				 errdetail("A replay handler, or a trigger of a replay target, may not call dlq_reprocess or dlq_reprocess_all.")));
	dlq_become_owner(owner);
	SPI_connect();
	replay_init(st, owner, force);
	st->actor = GetUserNameFromId(owner->caller, false);
	st->batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "dlq replay batch",
										  ALLOCSET_DEFAULT_SIZES);
}

PG_FUNCTION_INFO_V1(dlq_reprocess);

/*
 * dlq_reprocess(message_ids bigint[], force boolean, reason text,
 *				 ticket text) returns jsonb
 *
 * A 1.0 schema calls it with the first two arguments only.
 */
Datum
dlq_reprocess(PG_FUNCTION_ARGS)
{
	int			nids;
	int64	   *ids;
	bool		force;
	Jsonb	   *detail;
	DlqOwnerContext owner;
	ReplayState st;
	MemoryContext caller_cxt = CurrentMemoryContext;
	Jsonb	   *summary;

	ids = dlq_check_id_array(PG_ARGISNULL(0) ? NULL : PG_GETARG_ARRAYTYPE_P(0), &nids);
	dlq_check_not_null(fcinfo, 1, "force");
	force = PG_GETARG_BOOL(1);
	detail = dlq_reason_detail(dlq_arg_reason(fcinfo, 2), dlq_arg_ticket(fcinfo, 3), NULL);

	replay_begin(&st, &owner, force);
	st.detail = detail;
	st.requested = nids;
	for (int off = 0; off < nids; off += DLQ_BATCH_IDS)
		replay_batch(&st, ids + off, Min(DLQ_BATCH_IDS, nids - off));
	summary = replay_finish(&st, caller_cxt);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(summary);
}

/*
 * The candidates of dlq_reprocess_all with a filter: $1 queue, $2 status,
 * $3 cursor, $4 limit, $5 this call's request id, $6.. the filter.
 */
static SPIPlanPtr
replay_candidates_plan(const DlqFilter *filter)
{
	int			flags = dlq_filter_flags(filter);

	if (candidates_plans[flags] == NULL)
	{
		Oid			types[5 + DLQ_FILTER_NARGS] = {TEXTOID, TEXTOID, INT8OID, INT4OID, UUIDOID};
		StringInfoData sql;

		dlq_filter_types(types + 5);
		initStringInfo(&sql);
		appendStringInfoString(&sql,
							   "SELECT m.message_id FROM dlq.messages m"
							   " WHERE [[m.slot = 0 AND ]]m.queue = $1 AND m.status = $2::dlq.status"
							   " AND m.message_id > $3"
							   " AND m.replay_request_id IS DISTINCT FROM $5");
		dlq_filter_sql(&sql, flags, "m", 6);
		appendStringInfoString(&sql, " ORDER BY m.message_id LIMIT $4");
		candidates_plans[flags] = dlq_prepare_kept(dlq_schema_sql(sql.data),
												   5 + DLQ_FILTER_NARGS, types);
	}
	return candidates_plans[flags];
}

/*
 * One pass of dlq_reprocess_all: replay the queue's messages in one status
 * that pass the filter in keyset batches, oldest first, until max_messages
 * were requested in the whole call.  A message this call already replayed
 * (now back in review) is not taken again, nor one stored since the call
 * began.
 */
static void
replay_all_pass(ReplayState *st, const char *queue, const DlqFilter *filter,
				const char *status, int64 max_messages)
{
	int64	   *ids = palloc(sizeof(int64) * DLQ_BATCH_IDS);
	int64		cursor = 0;
	SPIPlanPtr	plan = replay_candidates_plan(filter);

	while (st->requested < max_messages)
	{
		Datum		values[5 + DLQ_FILTER_NARGS];
		char		nulls[5 + DLQ_FILTER_NARGS] = {' ', ' ', ' ', ' ', ' '};
		int			limit = (int) Min((int64) DLQ_BATCH_IDS, max_messages - st->requested);
		int			n;

		values[0] = CStringGetTextDatum(queue);
		values[1] = CStringGetTextDatum(status);
		values[2] = Int64GetDatum(cursor);
		values[3] = Int32GetDatum(limit);
		values[4] = st->request_id;
		dlq_filter_values(filter, values + 5, nulls + 5);
		/*
		 * Read-only: with the snapshot the call started with, so that the
		 * messages its own handlers or triggers store (into this queue, say)
		 * are left for the next call instead of making this one endless.
		 */
		dlq_execute_kept(plan, values, nulls, true, 0, SPI_OK_SELECT);
		n = dlq_spi_ids(ids);
		if (n == 0)
			break;
		cursor = ids[n - 1];
		st->requested += n;
		replay_batch(st, ids, n);
		if (n < limit)
			break;
	}
}

PG_FUNCTION_INFO_V1(dlq_reprocess_all);

/*
 * dlq_reprocess_all(queue, component, max_messages, force, sqlstate,
 *					 error_class, since, until, dry_run, reason, ticket)
 *					 returns jsonb
 *
 * Every pending message of the queue (then, with force, every review one)
 * that passes the filters, at most max_messages of them, oldest first.  A
 * 1.0 schema calls it with the first four arguments only.
 */
Datum
dlq_reprocess_all(PG_FUNCTION_ARGS)
{
	static const DlqFilterArgs filter_args = {1, 4, 5, 6, 7};
	char	   *queue;
	DlqFilter	filter;
	int64		max_messages;
	bool		force;
	bool		dry_run;
	Jsonb	   *detail;
	DlqOwnerContext owner;
	ReplayState st;
	MemoryContext caller_cxt = CurrentMemoryContext;
	Jsonb	   *summary;
	ReplayQueue *rq;

	queue = dlq_check_name("queue name", PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	dlq_filter_parse(fcinfo, &filter_args, &filter);
	max_messages = dlq_arg_max_messages(fcinfo, 2, "Pass NULL to replay every message.");
	dlq_check_not_null(fcinfo, 3, "force");
	force = PG_GETARG_BOOL(3);
	dry_run = dlq_arg_dry_run(fcinfo, 8);
	detail = dlq_reason_detail(dlq_arg_reason(fcinfo, 9), dlq_arg_ticket(fcinfo, 10), NULL);

	replay_begin(&st, &owner, force);
	st.dry_run = dry_run;
	st.detail = detail;

	/* The queue must exist and not be paused even when it is empty. */
	dlq_check_queue_exists(queue);
	rq = replay_queue(&st, queue);
	replay_check_queue(&st, rq, false, false);

	for (int pass = 0; pass < (force ? 2 : 1); pass++)
		replay_all_pass(&st, queue, &filter, pass == 0 ? "pending" : "review",
						max_messages);

	summary = replay_finish(&st, caller_cxt);
	SPI_finish();
	dlq_restore_caller(&owner);

	PG_RETURN_JSONB_P(summary);
}
