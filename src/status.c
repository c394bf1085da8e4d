/*-------------------------------------------------------------------------
 *
 * status.c
 *	  etl_status and etl_status_json: the health of every queue and
 *	  registered stage at a glance; etl_register_stage and etl_watermark;
 *	  and the statement trigger that keeps dlq.counts.
 *
 *	  Health, worst first (README.md "Pipeline health"):
 *		error	lag > dlq.status_threshold and the worker is not running
 *		stale	lag > dlq.status_threshold, or the oldest pending message is
 *				older than dlq.stale_after, with no replay activity within
 *				dlq.syncing_window
 *		syncing lag > 0 with replay activity within dlq.syncing_window
 *		live	otherwise
 *	  A queue's lag is pending + replaying, its replay activity the latest of
 *	  dlq.queues.last_replay_at and its newest replay event in dlq.events.  A
 *	  stage's lag is source max - watermark, its activity the last time its
 *	  watermark advanced.
 *
 *	  Counts come from dlq.counts, never from counting messages: the trigger
 *	  below adds each statement's changes to one row per (queue, state,
 *	  shard), the shard being the writer's backend id modulo 64, so that
 *	  concurrent writers do not queue up behind one hot row (backend ids are
 *	  handed out lowest first, so up to 64 concurrent writers never share
 *	  one).  etl_status then reads one small row per state and writing
 *	  backend of each queue and a few index probes, and writes nothing, so it
 *	  also runs on a hot standby.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/backendid.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "dlq.h"
#include "shmem.h"

#define COUNT_SHARDS 64

typedef enum DlqHealth
{
	HEALTH_LIVE,
	HEALTH_SYNCING,
	HEALTH_STALE,
	HEALTH_ERROR
} DlqHealth;

static const char *const health_names[] = {"live", "syncing", "stale", "error"};

/* Worker state as etl_status reports it. */
typedef struct WorkerState
{
	const char *state;			/* running, stopped, not_preloaded, standby */
	bool		down;			/* counts as "not running" for the rules */
	bool		has_heartbeat;
	TimestampTz heartbeat;
	int			pid;
} WorkerState;

/* One row of etl_status. */
typedef struct StatusRow
{
	bool		is_stage;
	char	   *name;
	DlqHealth	health;
	char	   *reason;
	bool		has_lag;
	int64		lag;
	int64		counts[5];		/* pending, replaying, review, resolved, expired */
	bool		has_oldest;
	TimestampTz oldest;
	bool		has_last_failure;
	TimestampTz last_failure;
	bool		has_activity;
	TimestampTz activity;		/* last replay activity / watermark advance */
	int64		in_flight;
	bool		paused;
	bool		has_watermark;
	int64		watermark;
	bool		has_source_max;
	int64		source_max;
} StatusRow;

static const char *const count_names[] = {"pending", "replaying", "review", "resolved", "expired"};

static SPIPlanPtr queues_plan = NULL;
static SPIPlanPtr stages_plan = NULL;
static SPIPlanPtr count_plan = NULL;
static SPIPlanPtr count_insert_plan = NULL;
static Oid	count_plan_status_type = InvalidOid;
static SPIPlanPtr truncate_plan = NULL;
static SPIPlanPtr register_plan = NULL;
static SPIPlanPtr watermark_plan = NULL;

static SPIPlanPtr
status_prepare_generic(const char *sql, int nargs, Oid *types)
{
	SPIPlanPtr	plan = SPI_prepare_cursor(sql, nargs, types, CURSOR_OPT_GENERIC_PLAN);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/* ------------------------------------------------------------------------
 * dlq.counts
 *
 * The statement trigger only adds each statement's net change per (queue,
 * state) to a list in backend memory, tagged with the subtransaction
 * nesting level; a subtransaction's entries are dropped when it aborts and
 * handed to its parent when it commits.  Just before the transaction
 * commits (or is prepared) the list is written to dlq.counts, one row per
 * (queue, state) for this backend's shard.  So a transaction that stores
 * 20,000 messages updates each counts row once, not 20,000 times (which,
 * within one transaction, would grow a HOT chain that every later update
 * walks), and holds the row's lock only while it commits.
 * ------------------------------------------------------------------------
 */

typedef struct CountDelta
{
	char		queue[DLQ_MAX_NAME_BYTES + 1];
	Oid			status;			/* enum label OID */
	int			level;			/* subtransaction nesting level */
	int64		n;
	bool		has_new_last;
	TimestampTz new_last;
	bool		has_old_last;
	TimestampTz old_last;
} CountDelta;

/* This transaction's changes not yet written to dlq.counts (TopMemoryContext). */
static CountDelta *pending_counts = NULL;
static int	npending_counts = 0;
static int	maxpending_counts = 0;
static Oid	pending_status_type = InvalidOid;

/*
 * Set once this transaction's counts were written at pre-commit: changes
 * made later by other pre-commit callbacks (dlq_capture writes its buffered
 * rows there) are written at once.
 */
static bool counts_flushed_at_commit = false;

static int
count_shard(void)
{
#if PG_VERSION_NUM >= 170000
	return MyProcNumber % COUNT_SHARDS;
#else
	return MyBackendId % COUNT_SHARDS;
#endif
}

/* The entry for (queue, status, level), created if absent. */
static CountDelta *
count_entry(const char *queue, int queuelen, Oid status, int level)
{
	CountDelta *d;

	for (int i = 0; i < npending_counts; i++)
	{
		d = &pending_counts[i];
		if (d->status == status && d->level == level &&
			strncmp(d->queue, queue, queuelen) == 0 && d->queue[queuelen] == '\0')
			return d;
	}
	if (npending_counts == maxpending_counts)
	{
		maxpending_counts = Max(16, maxpending_counts * 2);
		if (pending_counts == NULL)
			pending_counts = MemoryContextAlloc(TopMemoryContext,
												sizeof(CountDelta) * maxpending_counts);
		else
			pending_counts = repalloc(pending_counts, sizeof(CountDelta) * maxpending_counts);
	}
	d = &pending_counts[npending_counts++];
	memset(d, 0, sizeof(CountDelta));
	memcpy(d->queue, queue, Min(queuelen, DLQ_MAX_NAME_BYTES));
	d->status = status;
	d->level = level;
	return d;
}

static void
count_merge(CountDelta *into, const CountDelta *from)
{
	into->n += from->n;
	if (from->has_new_last && (!into->has_new_last || from->new_last > into->new_last))
	{
		into->has_new_last = true;
		into->new_last = from->new_last;
	}
	if (from->has_old_last && (!into->has_old_last || from->old_last > into->old_last))
	{
		into->has_old_last = true;
		into->old_last = from->old_last;
	}
}

/*
 * Add the rows of one transition table to this transaction's counts: sign
 * +1 for new rows, -1 for old ones.
 */
static void
count_rows(Tuplestorestate *rows, TupleDesc desc, int sign, int level)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	int			queue_att = SPI_fnumber(desc, "queue");
	int			status_att = SPI_fnumber(desc, "status");
	int			failed_att = SPI_fnumber(desc, "last_failed_at");
	int			last = -1;

	if (queue_att <= 0 || status_att <= 0 || failed_att <= 0)
		elog(ERROR, "dlq.messages lacks queue, status or last_failed_at");

	tuplestore_rescan(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		bool		isnull;
		text	   *queue = DatumGetTextPP(slot_getattr(slot, queue_att, &isnull));
		Oid			status = DatumGetObjectId(slot_getattr(slot, status_att, &isnull));
		Datum		failed = slot_getattr(slot, failed_att, &isnull);
		TimestampTz ts = isnull ? DT_NOBEGIN : DatumGetTimestampTz(failed);
		int			len = VARSIZE_ANY_EXHDR(queue);
		CountDelta *d;

		/* Bulk statements mostly touch one queue and state: try the last. */
		d = last >= 0 ? &pending_counts[last] : NULL;
		if (d == NULL || d->status != status ||
			strncmp(d->queue, VARDATA_ANY(queue), len) != 0 || d->queue[len] != '\0')
		{
			d = count_entry(VARDATA_ANY(queue), len, status, level);
			last = d - pending_counts;
		}
		d->n += sign;
		if (sign > 0 && (!d->has_new_last || ts > d->new_last))
		{
			d->has_new_last = true;
			d->new_last = ts;
		}
		if (sign < 0 && (!d->has_old_last || ts > d->old_last))
		{
			d->has_old_last = true;
			d->old_last = ts;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
}

/* Write this transaction's counts to dlq.counts, as the extension owner. */
static void
counts_flush(void)
{
	int			n = 0;
	Oid			nsp = get_namespace_oid("dlq", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("counts", nsp) : InvalidOid;
	HeapTuple	tup;
	Oid			owner;
	Oid			caller;
	int			caller_sec_context;

	/* The extension was dropped in this transaction: nothing to count. */
	if (!OidIsValid(relid) ||
		!HeapTupleIsValid(tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid))))
	{
		npending_counts = 0;
		return;
	}
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	/* Fold the levels: every subtransaction has committed by now. */
	for (int i = 0; i < npending_counts; i++)
	{
		CountDelta *d = &pending_counts[i];
		int			j;

		for (j = 0; j < n; j++)
			if (pending_counts[j].status == d->status &&
				strcmp(pending_counts[j].queue, d->queue) == 0)
				break;
		if (j < n)
			count_merge(&pending_counts[j], d);
		else if (j != i)
			pending_counts[n++] = *d;
		else
			n++;
	}
	npending_counts = n;

	/*
	 * As the owner of dlq.counts.  Every name and operator below is
	 * schema-qualified, so the search_path need not be pinned (which would
	 * cost more than the update itself).
	 */
	PushActiveSnapshot(GetTransactionSnapshot());
	GetUserIdAndSecContext(&caller, &caller_sec_context);
	SetUserIdAndSecContext(owner, caller_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	SPI_connect();
	if (count_plan == NULL || count_plan_status_type != pending_status_type)
	{
		Oid			types[5] = {TEXTOID, pending_status_type, INT2OID, INT8OID, TIMESTAMPTZOID};

		if (count_plan != NULL)
		{
			SPI_freeplan(count_plan);
			SPI_freeplan(count_insert_plan);
		}
		count_plan = count_insert_plan = NULL;
		/* The shard's row exists but for a writer's first change: update it. */
		count_plan = dlq_prepare_kept(
									"UPDATE dlq.counts c SET n = c.n OPERATOR(pg_catalog.+) $4,"
									"  last_failed_at = GREATEST(c.last_failed_at, $5)"
									" WHERE c.queue OPERATOR(pg_catalog.=) $1"
									" AND c.status OPERATOR(pg_catalog.=) $2"
									" AND c.shard OPERATOR(pg_catalog.=) $3",
									5, types);
		count_insert_plan = dlq_prepare_kept(
										   "INSERT INTO dlq.counts AS c (queue, status, shard, n, last_failed_at)"
										   " VALUES ($1, $2, $3, $4, $5)"
										   " ON CONFLICT (queue, status, shard) DO UPDATE"
										   " SET n = c.n OPERATOR(pg_catalog.+) excluded.n,"
										   "  last_failed_at = GREATEST(c.last_failed_at, excluded.last_failed_at)",
										   5, types);
		count_plan_status_type = pending_status_type;
	}

	for (int i = 0; i < npending_counts; i++)
	{
		CountDelta *d = &pending_counts[i];
		bool		newer = d->has_new_last &&
			(!d->has_old_last || d->new_last > d->old_last);
		Datum		values[5];
		char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

		if (d->n == 0 && !newer)
			continue;
		values[0] = CStringGetTextDatum(d->queue);
		values[1] = ObjectIdGetDatum(d->status);
		values[2] = Int16GetDatum((int16) count_shard());
		values[3] = Int64GetDatum(d->n);
		if (newer && d->new_last != DT_NOBEGIN)
			values[4] = TimestampTzGetDatum(d->new_last);
		else
			nulls[4] = 'n';
		if (SPI_execute_plan(count_plan, values, nulls, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not update dlq.counts");
		if (SPI_processed == 0 &&
			SPI_execute_plan(count_insert_plan, values, nulls, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not update dlq.counts");
	}
	npending_counts = 0;
	SPI_finish();
	SetUserIdAndSecContext(caller, caller_sec_context);
	PopActiveSnapshot();
}

static void
counts_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			if (npending_counts > 0)
				counts_flush();
			counts_flushed_at_commit = true;
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			npending_counts = 0;
			counts_flushed_at_commit = false;
			break;
		default:
			break;
	}
}

static void
counts_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	int			n = 0;

	if (npending_counts == 0)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		/* Forget what the aborted subtransaction (and its children) did. */
		for (int i = 0; i < npending_counts; i++)
			if (pending_counts[i].level < level)
				pending_counts[n++] = pending_counts[i];
		npending_counts = n;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		/* Hand it to the parent. */
		for (int i = 0; i < npending_counts; i++)
		{
			CountDelta *d = &pending_counts[i];

			if (d->level >= level)
			{
				CountDelta	moved = *d;
				CountDelta *into;

				/* count_entry may grow the array: take the entry out first. */
				pending_counts[i] = pending_counts[--npending_counts];
				i--;
				into = count_entry(moved.queue, strlen(moved.queue), moved.status, level - 1);
				count_merge(into, &moved);
			}
		}
	}
}

/*
 * Register the callbacks that write this transaction's counts, once per
 * process, when the library is loaded.
 *
 * Not at the first change to dlq.messages: that change can itself be made
 * by another pre-commit callback (dlq_capture stores the rows a hand-made
 * trigger diverted there), and a callback registered while the pre-commit
 * callbacks are being called is not called in that round, so the counts of
 * a backend's first such commit were dropped at commit (issue 11, finding
 * 8).  Registered up front, the counts callback runs at every pre-commit:
 * before or after dlq_capture's, either way every change is written
 * (see counts_flushed_at_commit).  It costs nothing in a transaction that
 * changed no message.
 */
void
dlq_counts_init(void)
{
	static bool registered = false;

	if (registered)
		return;
	RegisterXactCallback(counts_xact_callback, NULL);
	RegisterSubXactCallback(counts_subxact_callback, NULL);
	registered = true;
}

PG_FUNCTION_INFO_V1(dlq_count_messages);

/*
 * Statement trigger on dlq.messages (AFTER INSERT, UPDATE, DELETE with
 * transition tables, and TRUNCATE): adds the net change per (queue, state)
 * and the newest last_failed_at seen to this transaction's counts, written
 * to dlq.counts at commit.  An update that changes neither state nor
 * last_failed_at (a claim, a configure) writes nothing.
 */
Datum
dlq_count_messages(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	int			level = GetCurrentTransactionNestLevel();

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		elog(ERROR, "dlq.count_messages() must be an AFTER ... FOR EACH STATEMENT trigger");

	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		/* Everything counted so far is gone, in this transaction too. */
		npending_counts = 0;
		SPI_connect();
		if (truncate_plan == NULL)
			truncate_plan = dlq_prepare_kept("DELETE FROM dlq.counts", 0, NULL);
		if (SPI_execute_plan(truncate_plan, NULL, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not reset dlq.counts");
		SPI_finish();
		return PointerGetDatum(NULL);
	}

	desc = RelationGetDescr(trigdata->tg_relation);
	pending_status_type = TupleDescAttr(desc, SPI_fnumber(desc, "status") - 1)->atttypid;
	if (trigdata->tg_oldtable)
		count_rows(trigdata->tg_oldtable, desc, -1, level);
	if (trigdata->tg_newtable)
		count_rows(trigdata->tg_newtable, desc, 1, level);
	if (counts_flushed_at_commit && npending_counts > 0)
		counts_flush();
	return PointerGetDatum(NULL);
}

/* ------------------------------------------------------------------------
 * Inputs of the rules: now, the worker, the thresholds
 * ------------------------------------------------------------------------
 */

/* "Now" for the rules: dlq.status_now when set (tests), else the clock. */
static TimestampTz
status_now(void)
{
	if (dlq_status_now != NULL && dlq_status_now[0] != '\0')
		return DatumGetTimestampTz(DirectFunctionCall3(timestamptz_in,
													   CStringGetDatum(dlq_status_now),
													   ObjectIdGetDatum(InvalidOid),
													   Int32GetDatum(-1)));
	return GetCurrentTimestamp();
}

static void
worker_state(WorkerState *w)
{
	DlqWorkerSlot slot;
	bool		preloaded = (dlq_shared != NULL);
	bool		has_slot = preloaded && dlq_worker_slot_copy(MyDatabaseId, &slot);

	memset(w, 0, sizeof(WorkerState));
	if (has_slot)
	{
		w->pid = slot.pid;
		w->has_heartbeat = (slot.last_heartbeat != 0);
		w->heartbeat = slot.last_heartbeat;
	}

	switch (dlq_status_worker)
	{
		case DLQ_STATUS_WORKER_RUNNING:
			w->state = "running";
			break;
		case DLQ_STATUS_WORKER_STOPPED:
			w->state = "stopped";
			break;
		case DLQ_STATUS_WORKER_NOT_PRELOADED:
			w->state = "not_preloaded";
			break;
		case DLQ_STATUS_WORKER_STANDBY:
			w->state = "standby";
			break;
		default:
			if (!preloaded)
				w->state = "not_preloaded";
			else if (has_slot && slot.pid != 0)
				w->state = "running";
			else if (RecoveryInProgress())
				w->state = "standby";
			else
				w->state = "stopped";
			break;
	}
	/* On a standby the primary's worker is out of sight: not counted down. */
	w->down = (strcmp(w->state, "stopped") == 0 ||
			   strcmp(w->state, "not_preloaded") == 0);
}

static char *
interval_text(TimestampTz from, TimestampTz to)
{
	Interval   *iv = DatumGetIntervalP(DirectFunctionCall2(timestamp_mi,
														   TimestampTzGetDatum(to),
														   TimestampTzGetDatum(from)));

	return DatumGetCString(DirectFunctionCall1(interval_out, IntervalPGetDatum(iv)));
}

/*
 * Apply the rules to one queue or stage and say why.  Total: every
 * combination of inputs yields exactly one health.
 */
static void
apply_rules(StatusRow *row, const WorkerState *w, TimestampTz now)
{
	int64		lag = row->has_lag ? row->lag : 0;
	bool		over = lag > dlq_status_threshold;
	bool		active = row->has_activity &&
		now - row->activity <= (int64) dlq_syncing_window * 1000;
	bool		old = row->has_oldest &&
		now - row->oldest > (int64) dlq_stale_after * USECS_PER_SEC;
	const char *activity = row->is_stage ? "watermark advance" : "replay activity";

	if (over && w->down)
	{
		row->health = HEALTH_ERROR;
		row->reason = psprintf("lag " INT64_FORMAT " exceeds dlq.status_threshold (%d) and the worker is %s",
							   lag, dlq_status_threshold,
							   strcmp(w->state, "stopped") == 0 ? "not running" : "not preloaded");
	}
	else if ((over || old) && !active)
	{
		row->health = HEALTH_STALE;
		if (over)
			row->reason = psprintf("lag " INT64_FORMAT " exceeds dlq.status_threshold (%d) with no %s within dlq.syncing_window",
								   lag, dlq_status_threshold, activity);
		else
			row->reason = psprintf("oldest pending message is %s old, more than dlq.stale_after, with no %s within dlq.syncing_window",
								   interval_text(row->oldest, now), activity);
	}
	else if (lag > 0 && active)
	{
		row->health = HEALTH_SYNCING;
		row->reason = psprintf("lag " INT64_FORMAT " with %s within dlq.syncing_window",
							   lag, activity);
	}
	else
	{
		row->health = HEALTH_LIVE;
		if (row->is_stage && !row->has_source_max)
			row->reason = pstrdup("source is empty");
		else if (lag == 0)
			row->reason = pstrdup("no lag");
		else
			row->reason = psprintf("lag " INT64_FORMAT " within dlq.status_threshold (%d)",
								   lag, dlq_status_threshold);
	}
}

/* ------------------------------------------------------------------------
 * Collecting the rows
 * ------------------------------------------------------------------------
 */

/*
 * The oldest pending message is the first entry of messages_queue_status_id
 * for (queue, 'pending').  It is asked for as "status <= 'pending' ORDER BY
 * status, message_id" ('pending' is the first label of dlq.status) because
 * with "status = 'pending' ORDER BY message_id" the planner may walk
 * messages_pkey instead, and skip every message of every other queue: seconds
 * for a small queue behind a million older messages.  The plan is generic
 * from the first call: planning it per call would cost more than running it.
 */
static void
prepare_status_plans(void)
{
	Oid			types[1] = {TEXTOID};

	if (queues_plan != NULL)
		return;

	queues_plan = status_prepare_generic(
								 "SELECT q.queue, q.paused,"
								 "  coalesce(c.pending, 0), coalesce(c.replaying, 0), coalesce(c.review, 0),"
								 "  coalesce(c.resolved, 0), coalesce(c.expired, 0), c.last_failed_at,"
								 "  o.stored_at, GREATEST(q.last_replay_at, e.at), f.n"
								 " FROM dlq.queues q"
								 " LEFT JOIN LATERAL ("
								 "  SELECT sum(c.n) FILTER (WHERE c.status = 'pending')::int8 AS pending,"
								 "   sum(c.n) FILTER (WHERE c.status = 'replaying')::int8 AS replaying,"
								 "   sum(c.n) FILTER (WHERE c.status = 'review')::int8 AS review,"
								 "   sum(c.n) FILTER (WHERE c.status = 'resolved')::int8 AS resolved,"
								 "   sum(c.n) FILTER (WHERE c.status = 'expired')::int8 AS expired,"
								 "   max(c.last_failed_at) AS last_failed_at"
								 "  FROM dlq.counts c WHERE c.queue = q.queue) c ON true"
								 " LEFT JOIN LATERAL ("
								 "  SELECT m.stored_at FROM dlq.messages m"
								 "  WHERE m.queue = q.queue AND m.status <= 'pending'"
								 "  ORDER BY m.status, m.message_id LIMIT 1) o ON true"
								 " LEFT JOIN LATERAL ("
								 "  SELECT ev.at FROM dlq.events ev WHERE ev.queue = q.queue"
								 "  AND ev.kind IN ('replay_requested', 'replayed', 'replay_failed', 'acked',"
								 "                  'nacked', 'redriven', 'retried')"
								 "  ORDER BY ev.at DESC LIMIT 1) e ON true"
								 " LEFT JOIN LATERAL ("
								 "  WITH RECURSIVE r(id) AS ("
								 "   (SELECT m.replay_request_id FROM dlq.messages m"
								 "    WHERE m.queue = q.queue AND m.status = 'replaying'"
								 "    AND m.replay_request_id IS NOT NULL"
								 "    ORDER BY m.replay_request_id LIMIT 1)"
								 "   UNION ALL"
								 "   SELECT (SELECT m.replay_request_id FROM dlq.messages m"
								 "    WHERE m.queue = q.queue AND m.status = 'replaying'"
								 "    AND m.replay_request_id > r.id"
								 "    ORDER BY m.replay_request_id LIMIT 1)"
								 "   FROM r WHERE r.id IS NOT NULL)"
								 "  SELECT count(r.id) AS n FROM r) f ON true"
								 " WHERE $1 IS NULL OR q.queue = $1"
								 " ORDER BY q.queue",
								 1, types);
	stages_plan = dlq_prepare_kept(
								 "SELECT s.stage, s.source::oid, s.key_column::text, s.watermark, s.watermark_at"
								 " FROM dlq.stages s WHERE $1 IS NULL OR s.stage = $1"
								 " ORDER BY s.stage",
								 1, types);
}

/* May the current user read this column (table or column privilege)? */
static bool
can_select_column(Oid relid, AttrNumber attnum)
{
	return pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck(relid, attnum, GetUserId(), ACL_SELECT) == ACLCHECK_OK;
}

static bool
get_col(HeapTuple tup, TupleDesc desc, int col, Datum *value)
{
	bool		isnull;

	*value = SPI_getbinval(tup, desc, col, &isnull);
	return !isnull;
}

/*
 * The source's max (and min, when the watermark is unset) key, read with the
 * caller's privileges.  Returns false, with a reason, when the source or its
 * key column is gone.
 */
static bool
stage_source_range(Oid relid, const char *column, bool want_min,
				   bool *has_min, int64 *min, bool *has_max, int64 *max,
				   char **problem)
{
	char	   *relname = get_rel_name(relid);
	AttrNumber	attnum;
	char	   *sql;
	Datum		value;

	if (relname == NULL)
	{
		*problem = psprintf("source relation %u no longer exists", relid);
		return false;
	}
	attnum = get_attnum(relid, column);
	if (attnum == InvalidAttrNumber)
	{
		*problem = psprintf("key column \"%s\" of %s no longer exists", column, relname);
		return false;
	}
	if (!can_select_column(relid, attnum))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read the key column \"%s\" of %s", column, relname),
				 errhint("etl_status reads the max key of each registered stage's source with the caller's privileges; grant SELECT on it.")));

	sql = psprintf("SELECT %s pg_catalog.max(%s)::pg_catalog.int8 FROM %s",
				   want_min ? psprintf("pg_catalog.min(%s)::pg_catalog.int8,", quote_identifier(column)) : "",
				   quote_identifier(column),
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), relname));
	if (SPI_execute(sql, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the max key of %s", relname);
	*has_min = false;
	if (want_min)
	{
		*has_min = get_col(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &value);
		if (*has_min)
			*min = DatumGetInt64(value);
	}
	*has_max = get_col(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, want_min ? 2 : 1, &value);
	if (*has_max)
		*max = DatumGetInt64(value);
	return true;
}

/* Every row of etl_status for filter (NULL: all), in name order, queues first. */
static StatusRow *
collect_status(const char *filter, int *nrows, WorkerState *w, TimestampTz *now)
{
	DlqOwnerContext owner;
	Datum		arg[1];
	char		nulls[1] = {' '};
	StatusRow  *rows;
	int			nqueues;
	int			nstages;
	Oid		   *stage_source;
	char	  **stage_column;
	MemoryContext outer = CurrentMemoryContext;
	MemoryContext spi_context;

	worker_state(w);
	*now = status_now();

	if (filter)
		arg[0] = CStringGetTextDatum(filter);
	else
		nulls[0] = 'n';

	dlq_become_owner(&owner);
	SPI_connect();
	spi_context = CurrentMemoryContext;
	prepare_status_plans();

	if (SPI_execute_plan(queues_plan, arg, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read queue status");
	nqueues = SPI_processed;
	MemoryContextSwitchTo(outer);
	rows = palloc0(sizeof(StatusRow) * (nqueues + 1));
	for (int i = 0; i < nqueues; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StatusRow  *r = &rows[i];
		Datum		v;

		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &(bool){0}));
		r->paused = get_col(tup, desc, 2, &v) && DatumGetBool(v);
		for (int s = 0; s < 5; s++)
		{
			get_col(tup, desc, 3 + s, &v);
			r->counts[s] = DatumGetInt64(v);
		}
		if ((r->has_last_failure = get_col(tup, desc, 8, &v)))
			r->last_failure = DatumGetTimestampTz(v);
		if ((r->has_oldest = get_col(tup, desc, 9, &v)))
			r->oldest = DatumGetTimestampTz(v);
		if ((r->has_activity = get_col(tup, desc, 10, &v)))
			r->activity = DatumGetTimestampTz(v);
		if (get_col(tup, desc, 11, &v))
			r->in_flight = DatumGetInt64(v);
		r->has_lag = true;
		r->lag = r->counts[0] + r->counts[1];
		apply_rules(r, w, *now);
	}
	MemoryContextSwitchTo(spi_context);

	if (SPI_execute_plan(stages_plan, arg, nulls, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read stages");
	nstages = SPI_processed;
	MemoryContextSwitchTo(outer);
	rows = repalloc(rows, sizeof(StatusRow) * (nqueues + nstages + 1));
	stage_source = palloc(sizeof(Oid) * (nstages + 1));
	stage_column = palloc(sizeof(char *) * (nstages + 1));
	for (int i = 0; i < nstages; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StatusRow  *r = &rows[nqueues + i];
		Datum		v;

		memset(r, 0, sizeof(StatusRow));
		r->is_stage = true;
		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &(bool){0}));
		get_col(tup, desc, 2, &v);
		stage_source[i] = DatumGetObjectId(v);
		get_col(tup, desc, 3, &v);
		stage_column[i] = TextDatumGetCString(v);
		if ((r->has_watermark = get_col(tup, desc, 4, &v)))
			r->watermark = DatumGetInt64(v);
		if ((r->has_activity = get_col(tup, desc, 5, &v)))
			r->activity = DatumGetTimestampTz(v);
	}
	MemoryContextSwitchTo(spi_context);
	SPI_finish();
	dlq_restore_caller(&owner);

	/* The sources are user tables: read as the caller. */
	if (nstages > 0)
	{
		SPI_connect();
		spi_context = CurrentMemoryContext;
		for (int i = 0; i < nstages; i++)
		{
			StatusRow  *r = &rows[nqueues + i];
			bool		has_min;
			int64		min = 0;
			char	   *problem = NULL;
			bool		ok;

			ok = stage_source_range(stage_source[i], stage_column[i], !r->has_watermark,
									&has_min, &min, &r->has_source_max, &r->source_max,
									&problem);
			MemoryContextSwitchTo(outer);
			if (!ok)
			{
				/* A broken stage cannot catch up: report it as an error. */
				r->health = HEALTH_ERROR;
				r->reason = pstrdup(problem);
			}
			else
			{
				/* An empty source has no lag; an unset watermark is before min. */
				r->has_lag = true;
				if (r->has_source_max)
				{
					int64		from = r->has_watermark ? r->watermark : min - 1;

					r->lag = r->source_max > from ? r->source_max - from : 0;
				}
				apply_rules(r, w, *now);
			}
			MemoryContextSwitchTo(spi_context);
		}
		SPI_finish();
	}

	*nrows = nqueues + nstages;
	if (filter && *nrows == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("queue or stage \"%s\" does not exist", filter)));
	return rows;
}

/* ------------------------------------------------------------------------
 * etl_status, etl_status_json
 * ------------------------------------------------------------------------
 */


PG_FUNCTION_INFO_V1(etl_status);

/* etl_status(queue text DEFAULT NULL) returns table (...) */
Datum
etl_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *filter = NULL;
	WorkerState w;
	TimestampTz now;
	StatusRow  *rows;
	int			nrows;

	if (!PG_ARGISNULL(0))
		filter = dlq_check_name("queue or stage name", PG_GETARG_TEXT_PP(0), false);

	InitMaterializedSRF(fcinfo, 0);
	rows = collect_status(filter, &nrows, &w, &now);

	for (int i = 0; i < nrows; i++)
	{
		StatusRow  *r = &rows[i];
		Datum		values[21];
		bool		nulls[21];
		int			c = 0;

		memset(nulls, 0, sizeof(nulls));
#define PUT(isnull_, datum_) \
		do { if (isnull_) nulls[c] = true; else values[c] = (datum_); c++; } while (0)
		PUT(false, CStringGetTextDatum(r->is_stage ? "stage" : "queue"));
		PUT(false, CStringGetTextDatum(r->name));
		PUT(false, CStringGetTextDatum(health_names[r->health]));
		PUT(false, CStringGetTextDatum(r->reason));
		PUT(!r->has_lag, Int64GetDatum(r->lag));
		for (int s = 0; s < 5; s++)
			PUT(r->is_stage, Int64GetDatum(r->counts[s]));
		PUT(!r->has_oldest, TimestampTzGetDatum(r->oldest));
		PUT(!r->has_oldest,
			DirectFunctionCall2(timestamp_mi, TimestampTzGetDatum(now),
								TimestampTzGetDatum(r->oldest)));
		PUT(!r->has_last_failure, TimestampTzGetDatum(r->last_failure));
		PUT(r->is_stage || !r->has_activity, TimestampTzGetDatum(r->activity));
		PUT(r->is_stage, Int64GetDatum(r->in_flight));
		PUT(r->is_stage, BoolGetDatum(r->paused));
		PUT(!r->has_watermark, Int64GetDatum(r->watermark));
		PUT(!r->has_source_max, Int64GetDatum(r->source_max));
		PUT(!r->is_stage || !r->has_activity, TimestampTzGetDatum(r->activity));
		PUT(false, CStringGetTextDatum(w.state));
		PUT(!w.has_heartbeat, TimestampTzGetDatum(w.heartbeat));
#undef PUT
		Assert(c == 21);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

static void
json_key(StringInfo buf, const char *key)
{
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
json_ts(StringInfo buf, const char *key, bool has, TimestampTz ts)
{
	json_key(buf, key);
	if (has)
	{
		char		iso[MAXDATELEN + 1];

		appendStringInfoChar(buf, '"');
		appendStringInfoString(buf, JsonEncodeDateTime(iso, TimestampTzGetDatum(ts),
													   TIMESTAMPTZOID, NULL));
		appendStringInfoChar(buf, '"');
	}
	else
		appendStringInfoString(buf, "null");
	appendStringInfoChar(buf, ',');
}

static void
json_int(StringInfo buf, const char *key, bool has, int64 v)
{
	json_key(buf, key);
	if (has)
		appendStringInfo(buf, INT64_FORMAT, v);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoChar(buf, ',');
}

static void
json_str(StringInfo buf, const char *key, const char *v)
{
	json_key(buf, key);
	escape_json(buf, v);
}

PG_FUNCTION_INFO_V1(etl_status_json);

/*
 * etl_status_json() returns jsonb
 *
 * {"health": worst, "now": ..., "worker": {...}, "queues": [...],
 *	"stages": [...]}
 */
Datum
etl_status_json(PG_FUNCTION_ARGS)
{
	WorkerState w;
	TimestampTz now;
	StatusRow  *rows;
	int			nrows;
	DlqHealth	worst = HEALTH_LIVE;
	StringInfoData buf;

	rows = collect_status(NULL, &nrows, &w, &now);
	for (int i = 0; i < nrows; i++)
		if (rows[i].health > worst)
			worst = rows[i].health;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	json_str(&buf, "health", health_names[worst]);
	appendStringInfoChar(&buf, ',');
	json_ts(&buf, "now", true, now);
	json_key(&buf, "worker");
	appendStringInfoChar(&buf, '{');
	json_int(&buf, "pid", w.pid != 0, w.pid);
	json_ts(&buf, "last_heartbeat", w.has_heartbeat, w.heartbeat);
	json_str(&buf, "state", w.state);
	appendStringInfoString(&buf, "},");

	for (int pass = 0; pass < 2; pass++)
	{
		bool		first = true;

		json_key(&buf, pass == 0 ? "queues" : "stages");
		appendStringInfoChar(&buf, '[');
		for (int i = 0; i < nrows; i++)
		{
			StatusRow  *r = &rows[i];

			if (r->is_stage != (pass == 1))
				continue;
			if (!first)
				appendStringInfoChar(&buf, ',');
			first = false;
			appendStringInfoChar(&buf, '{');
			json_str(&buf, "name", r->name);
			appendStringInfoChar(&buf, ',');
			json_str(&buf, "health", health_names[r->health]);
			appendStringInfoChar(&buf, ',');
			json_str(&buf, "reason", r->reason);
			appendStringInfoChar(&buf, ',');
			if (!r->is_stage)
			{
				json_key(&buf, "counts");
				appendStringInfoChar(&buf, '{');
				for (int s = 0; s < 5; s++)
					appendStringInfo(&buf, "%s\"%s\":" INT64_FORMAT,
									 s ? "," : "", count_names[s], r->counts[s]);
				appendStringInfoString(&buf, "},");
				json_ts(&buf, "oldest_pending_at", r->has_oldest, r->oldest);
				json_int(&buf, "oldest_pending_age_seconds", r->has_oldest,
						 (now - r->oldest) / USECS_PER_SEC);
				json_ts(&buf, "last_failure_at", r->has_last_failure, r->last_failure);
				json_ts(&buf, "last_replay_at", r->has_activity, r->activity);
				json_int(&buf, "replay_requests_in_flight", true, r->in_flight);
				appendStringInfo(&buf, "\"paused\":%s,", r->paused ? "true" : "false");
			}
			else
			{
				json_int(&buf, "watermark", r->has_watermark, r->watermark);
				json_int(&buf, "source_max", r->has_source_max, r->source_max);
				json_ts(&buf, "watermark_at", r->has_activity, r->activity);
			}
			json_key(&buf, "lag");
			if (r->has_lag)
				appendStringInfo(&buf, INT64_FORMAT, r->lag);
			else
				appendStringInfoString(&buf, "null");
			appendStringInfoChar(&buf, '}');
		}
		appendStringInfoString(&buf, pass == 0 ? "]," : "]");
	}
	appendStringInfoChar(&buf, '}');

	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

/* ------------------------------------------------------------------------
 * Stages
 * ------------------------------------------------------------------------
 */

static Oid
index_relam(Oid indexoid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(indexoid));
	Oid			relam;

	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	relam = ((Form_pg_class) GETSTRUCT(tup))->relam;
	ReleaseSysCache(tup);
	return relam;
}

/*
 * Does relation rel have a valid, non-partial btree index whose leading
 * column is attnum with the type's default operator family, so that
 * max(column) is one index descent?
 */
static bool
has_leading_btree_index(Relation rel, AttrNumber attnum, Oid atttype)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			opclass = GetDefaultOpClass(atttype, BTREE_AM_OID);
	Oid			opfamily = OidIsValid(opclass) ? get_opclass_family(opclass) : InvalidOid;
	bool		found = false;

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index index;
		bool		isnull;
		Datum		classes;
		oidvector  *indclass;

		if (!HeapTupleIsValid(tup))
			continue;
		index = (Form_pg_index) GETSTRUCT(tup);
		classes = SysCacheGetAttr(INDEXRELID, tup, Anum_pg_index_indclass, &isnull);
		indclass = (oidvector *) DatumGetPointer(classes);
		if (index->indisvalid && index->indnkeyatts > 0 &&
			index->indkey.values[0] == attnum &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL) &&
			index_relam(indexoid) == BTREE_AM_OID &&
			get_opclass_family(indclass->values[0]) == opfamily)
			found = true;
		ReleaseSysCache(tup);
		if (found)
			break;
	}
	list_free(indexes);
	return found;
}

PG_FUNCTION_INFO_V1(etl_register_stage);

/*
 * etl_register_stage(stage text, source regclass, key_column name)
 *
 * The source is checked with the caller's privileges: it must be a table,
 * partitioned table or materialized view whose integer key column the
 * caller may read and that has a usable btree index.  Registering an
 * existing stage again replaces its source and resets its watermark.
 */
Datum
etl_register_stage(PG_FUNCTION_ARGS)
{
	char	   *stage = dlq_check_name("stage name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	Oid			relid;
	char	   *column;
	Relation	rel;
	AttrNumber	attnum;
	Oid			atttype;
	char		relkind;
	DlqOwnerContext owner;
	Datum		values[3];
	StringInfoData detail;

	dlq_check_not_null(fcinfo, 1, "source");
	dlq_check_not_null(fcinfo, 2, "key_column");
	relid = PG_GETARG_OID(1);
	column = NameStr(*PG_GETARG_NAME(2));

	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	relkind = rel->rd_rel->relkind;
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE &&
		relkind != RELKIND_MATVIEW)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or materialized view",
						RelationGetRelationName(rel))));
	attnum = get_attnum(relid, column);
	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						column, RelationGetRelationName(rel))));
	atttype = get_atttype(relid, attnum);
	if (atttype != INT2OID && atttype != INT4OID && atttype != INT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("key column \"%s\" must be of type smallint, integer or bigint",
						column),
				 errdetail("It is of type %s.", format_type_be(atttype))));
	if (!can_select_column(relid, attnum))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for column \"%s\" of relation \"%s\"",
						column, RelationGetRelationName(rel))));
	if (!has_leading_btree_index(rel, attnum, atttype))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("key column \"%s\" of relation \"%s\" has no usable btree index",
						column, RelationGetRelationName(rel)),
				 errdetail("etl_status reads the source's max key from a valid, non-partial btree index that leads with the key column."),
				 errhint("CREATE INDEX ON %s (%s);",
						 quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													RelationGetRelationName(rel)),
						 quote_identifier(column))));
	/* Keep the lock: the source cannot be dropped before we commit. */
	relation_close(rel, NoLock);

	dlq_become_owner(&owner);
	SPI_connect();
	if (register_plan == NULL)
	{
		Oid			types[3] = {TEXTOID, OIDOID, TEXTOID};

		register_plan = dlq_prepare_kept(
									   "INSERT INTO dlq.stages (stage, source, key_column) VALUES ($1, $2::regclass, $3::name)"
									   " ON CONFLICT (stage) DO UPDATE SET source = excluded.source,"
									   "  key_column = excluded.key_column, watermark = NULL, watermark_at = NULL,"
									   "  registered_at = now()",
									   3, types);
	}
	values[0] = CStringGetTextDatum(stage);
	values[1] = ObjectIdGetDatum(relid);
	values[2] = CStringGetTextDatum(column);
	if (SPI_execute_plan(register_plan, values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not register stage \"%s\"", stage);

	initStringInfo(&detail);
	appendStringInfoString(&detail, "{\"stage\":");
	escape_json(&detail, stage);
	appendStringInfoString(&detail, ",\"source\":");
	escape_json(&detail, quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
													get_rel_name(relid)));
	appendStringInfoString(&detail, ",\"key_column\":");
	escape_json(&detail, column);
	appendStringInfoChar(&detail, '}');
	dlq_audit("configured", GetUserNameFromId(owner.caller, false), NULL, (Datum) 0, false,
			  0, NULL, 0,
			  DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(detail.data))));
	SPI_finish();
	dlq_restore_caller(&owner);
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(etl_watermark);

/*
 * etl_watermark(stage text, position bigint) returns bigint
 *
 * Advances the watermark to position and returns the watermark in force.
 * It never moves backwards: a lower position (a late or duplicate report
 * from a concurrent stage worker) leaves it as it is.  To start over,
 * register the stage again.
 */
Datum
etl_watermark(PG_FUNCTION_ARGS)
{
	char	   *stage = dlq_check_name("stage name",
									   PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0), false);
	DlqOwnerContext owner;
	Datum		values[2];
	int64		result;
	bool		isnull;

	dlq_check_not_null(fcinfo, 1, "position");

	dlq_become_owner(&owner);
	SPI_connect();
	if (watermark_plan == NULL)
	{
		Oid			types[2] = {TEXTOID, INT8OID};

		watermark_plan = dlq_prepare_kept(
										"UPDATE dlq.stages s SET"
										" watermark = GREATEST(s.watermark, $2),"
										" watermark_at = CASE WHEN s.watermark IS NULL OR $2 > s.watermark"
										"  THEN clock_timestamp() ELSE s.watermark_at END"
										" WHERE s.stage = $1 RETURNING s.watermark",
										2, types);
	}
	values[0] = CStringGetTextDatum(stage);
	values[1] = PG_GETARG_DATUM(1);
	if (SPI_execute_plan(watermark_plan, values, NULL, false, 0) != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "could not set the watermark of stage \"%s\"", stage);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stage \"%s\" does not exist", stage),
				 errhint("Register it with etl_register_stage().")));
	result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	dlq_restore_caller(&owner);
	PG_RETURN_INT64(result);
}

PG_FUNCTION_INFO_V1(dlq_etl_worker_state);

/* dlq.etl_worker_state() returns (state text, pid int, last_heartbeat timestamptz) */
Datum
dlq_etl_worker_state(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	WorkerState w;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	worker_state(&w);
	values[0] = CStringGetTextDatum(w.state);
	values[1] = Int32GetDatum(w.pid);
	nulls[1] = (w.pid == 0);
	values[2] = TimestampTzGetDatum(w.heartbeat);
	nulls[2] = !w.has_heartbeat;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
