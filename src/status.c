/*-------------------------------------------------------------------------
 *
 * status.c
 *	  etl_status and etl_status_json: the health of every queue and
 *	  registered stage at a glance; dlq.etl_worker_state, the worker state
 *	  they report (also read by the dlq.metrics view).
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
 *	  stage's lag is source max - watermark (stages.c), its activity the last
 *	  time its watermark advanced.
 *
 *	  Counts come from dlq.counts (counts.c), never from counting messages:
 *	  etl_status reads one small row per state and writing backend of each
 *	  queue and a few index probes, and writes nothing, so it also runs on a
 *	  hot standby.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "dlq.h"
#include "shmem.h"
#include "version.h"

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
	bool		has_totals;		/* 1.1: the cumulative totals below */
	int64		totals[6];		/* stored, replayed, replay_failed, resolved, discarded, expired */
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
static const char *const total_names[] = {"stored", "replayed", "replay_failed", "resolved",
"discarded", "expired"};

static SPIPlanPtr queues_plan = NULL;
static SPIPlanPtr processing_plan = NULL; /* 1.1: redrive tasks, stopped retries */
static SPIPlanPtr stages_plan = NULL;
static bool queues_plan_current = false;	/* prepared for the 1.1 schema */

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
status_worker_state(WorkerState *w)
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
status_interval_text(TimestampTz from, TimestampTz to)
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
status_apply_rules(StatusRow *row, const WorkerState *w, TimestampTz now)
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
								   status_interval_text(row->oldest, now), activity);
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
status_prepare_plans(void)
{
	Oid			types[1] = {TEXTOID};
	bool		current = dlq_schema_current();

	/* The totals are read once the schema has them (1.1). */
	if (queues_plan != NULL && queues_plan_current == current)
		return;
	if (queues_plan != NULL)
	{
		SPI_freeplan(queues_plan);
		SPI_freeplan(stages_plan);
		queues_plan = stages_plan = NULL;
	}
	queues_plan_current = current;

	queues_plan = status_prepare_generic(dlq_schema_sql(
								 "SELECT q.queue, q.paused,"
								 "  coalesce(c.pending, 0), coalesce(c.replaying, 0), coalesce(c.review, 0),"
								 "  coalesce(c.resolved, 0), coalesce(c.expired, 0), c.last_failed_at,"
								 "  o.stored_at, GREATEST(q.last_replay_at, e.at), f.n"
								 "[[, coalesce(c.stored_total, 0), coalesce(c.replayed_total, 0),"
								 "  coalesce(c.replay_failed_total, 0), coalesce(c.resolved_total, 0),"
								 "  coalesce(c.discarded_total, 0), coalesce(c.expired_total, 0)]]"
								 " FROM dlq.queues q"
								 " LEFT JOIN LATERAL ("
								 "  SELECT sum(c.n) FILTER (WHERE c.status = 'pending')::int8 AS pending,"
								 "   sum(c.n) FILTER (WHERE c.status = 'replaying')::int8 AS replaying,"
								 "   sum(c.n) FILTER (WHERE c.status = 'review')::int8 AS review,"
								 "   sum(c.n) FILTER (WHERE c.status = 'resolved')::int8 AS resolved,"
								 "   sum(c.n) FILTER (WHERE c.status = 'expired')::int8 AS expired,"
								 "   max(c.last_failed_at) AS last_failed_at"
								 "[[, sum(c.stored_total)::int8 AS stored_total,"
								 "   sum(c.replayed_total)::int8 AS replayed_total,"
								 "   sum(c.replay_failed_total)::int8 AS replay_failed_total,"
								 "   sum(c.resolved_total)::int8 AS resolved_total,"
								 "   sum(c.discarded_total)::int8 AS discarded_total,"
								 "   sum(c.expired_total)::int8 AS expired_total]]"
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
								 " ORDER BY q.queue"),
								 1, types);
	stages_plan = dlq_prepare_kept(
								 "SELECT s.stage, s.source::oid, s.key_column::text, s.watermark, s.watermark_at"
								 " FROM dlq.stages s WHERE $1 IS NULL OR s.stage = $1"
								 " ORDER BY s.stage",
								 1, types);
}

static bool
status_get_col(HeapTuple tup, TupleDesc desc, int col, Datum *value)
{
	bool		isnull;

	*value = SPI_getbinval(tup, desc, col, &isnull);
	return !isnull;
}

/*
 * The queue rows of etl_status from queues_plan, allocated in cxt, rules
 * applied.
 */
static StatusRow *
status_read_queues(Datum *arg, const char *nulls, int *nqueues,
				   const WorkerState *w, TimestampTz now, MemoryContext cxt)
{
	MemoryContext old;
	StatusRow  *rows;

	dlq_execute_kept(queues_plan, arg, nulls, true, 0, SPI_OK_SELECT);
	*nqueues = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	rows = palloc0(sizeof(StatusRow) * (*nqueues + 1));
	for (int i = 0; i < *nqueues; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StatusRow  *r = &rows[i];
		Datum		v;

		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &(bool){0}));
		r->paused = status_get_col(tup, desc, 2, &v) && DatumGetBool(v);
		for (int s = 0; s < 5; s++)
		{
			status_get_col(tup, desc, 3 + s, &v);
			r->counts[s] = DatumGetInt64(v);
		}
		if ((r->has_last_failure = status_get_col(tup, desc, 8, &v)))
			r->last_failure = DatumGetTimestampTz(v);
		if ((r->has_oldest = status_get_col(tup, desc, 9, &v)))
			r->oldest = DatumGetTimestampTz(v);
		if ((r->has_activity = status_get_col(tup, desc, 10, &v)))
			r->activity = DatumGetTimestampTz(v);
		if (status_get_col(tup, desc, 11, &v))
			r->in_flight = DatumGetInt64(v);
		r->has_totals = desc->natts >= 17;
		for (int t = 0; r->has_totals && t < 6; t++)
		{
			status_get_col(tup, desc, 12 + t, &v);
			r->totals[t] = DatumGetInt64(v);
		}
		r->has_lag = true;
		r->lag = r->counts[0] + r->counts[1];
		status_apply_rules(r, w, now);
	}
	MemoryContextSwitchTo(old);
	return rows;
}

/*
 * The stage rows of etl_status from stages_plan, appended to *rows after
 * nqueues queue rows, in cxt; each stage's source and key column in
 * *source and *column.  Their lag is not known yet.
 */
static int
status_read_stages(Datum *arg, const char *nulls, StatusRow **rows, int nqueues,
				   Oid **source, char ***column, MemoryContext cxt)
{
	MemoryContext old;
	int			nstages;

	dlq_execute_kept(stages_plan, arg, nulls, true, 0, SPI_OK_SELECT);
	nstages = SPI_processed;
	old = MemoryContextSwitchTo(cxt);
	*rows = repalloc(*rows, sizeof(StatusRow) * (nqueues + nstages + 1));
	*source = palloc(sizeof(Oid) * (nstages + 1));
	*column = palloc(sizeof(char *) * (nstages + 1));
	for (int i = 0; i < nstages; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		StatusRow  *r = &(*rows)[nqueues + i];
		Datum		v;

		memset(r, 0, sizeof(StatusRow));
		r->is_stage = true;
		r->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &(bool){0}));
		status_get_col(tup, desc, 2, &v);
		(*source)[i] = DatumGetObjectId(v);
		status_get_col(tup, desc, 3, &v);
		(*column)[i] = TextDatumGetCString(v);
		if ((r->has_watermark = status_get_col(tup, desc, 4, &v)))
			r->watermark = DatumGetInt64(v);
		if ((r->has_activity = status_get_col(tup, desc, 5, &v)))
			r->activity = DatumGetTimestampTz(v);
	}
	MemoryContextSwitchTo(old);
	return nstages;
}

/*
 * A stage's lag and health from its source's key range, read as the
 * caller (inside SPI); allocations in cxt.
 */
static void
status_stage_lag(StatusRow *r, Oid source, const char *column,
				 const WorkerState *w, TimestampTz now, MemoryContext cxt)
{
	bool		has_min;
	int64		min = 0;
	char	   *problem = NULL;
	bool		ok;
	MemoryContext old;

	ok = dlq_stage_source_range(source, column, !r->has_watermark,
								&has_min, &min, &r->has_source_max, &r->source_max,
								&problem);
	old = MemoryContextSwitchTo(cxt);
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
		status_apply_rules(r, w, now);
	}
	MemoryContextSwitchTo(old);
}

/* Every row of etl_status for filter (NULL: all), in name order, queues first. */
static StatusRow *
status_collect(const char *filter, int *nrows, WorkerState *w, TimestampTz *now)
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

	status_worker_state(w);
	*now = status_now();

	if (filter)
		arg[0] = CStringGetTextDatum(filter);
	else
		nulls[0] = 'n';

	dlq_become_owner(&owner);
	SPI_connect();
	status_prepare_plans();
	rows = status_read_queues(arg, nulls, &nqueues, w, *now, outer);
	nstages = status_read_stages(arg, nulls, &rows, nqueues, &stage_source, &stage_column,
								 outer);
	SPI_finish();
	dlq_restore_caller(&owner);

	/* The sources are user tables: read as the caller. */
	if (nstages > 0)
	{
		SPI_connect();
		for (int i = 0; i < nstages; i++)
			status_stage_lag(&rows[nqueues + i], stage_source[i], stage_column[i],
							 w, *now, outer);
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


PG_FUNCTION_INFO_V1(dlq_etl_status);

/* etl_status(queue text DEFAULT NULL) returns table (...) */
Datum
dlq_etl_status(PG_FUNCTION_ARGS)
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
	rows = status_collect(filter, &nrows, &w, &now);

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
status_json_key(StringInfo buf, const char *key)
{
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

static void
status_json_ts(StringInfo buf, const char *key, bool has, TimestampTz ts)
{
	status_json_key(buf, key);
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
status_json_int(StringInfo buf, const char *key, bool has, int64 v)
{
	status_json_key(buf, key);
	if (has)
		appendStringInfo(buf, INT64_FORMAT, v);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoChar(buf, ',');
}

static void
status_json_str(StringInfo buf, const char *key, const char *v)
{
	status_json_key(buf, key);
	escape_json(buf, v);
}

/* One queue or stage of etl_status_json, as a JSON object. */
static void
status_json_row(StringInfo buf, const StatusRow *r, TimestampTz now)
{
	appendStringInfoChar(buf, '{');
	status_json_str(buf, "name", r->name);
	appendStringInfoChar(buf, ',');
	status_json_str(buf, "health", health_names[r->health]);
	appendStringInfoChar(buf, ',');
	status_json_str(buf, "reason", r->reason);
	appendStringInfoChar(buf, ',');
	if (!r->is_stage)
	{
		status_json_key(buf, "counts");
		appendStringInfoChar(buf, '{');
		for (int s = 0; s < 5; s++)
			appendStringInfo(buf, "%s\"%s\":" INT64_FORMAT,
							 s ? "," : "", count_names[s], r->counts[s]);
		appendStringInfoString(buf, "},");
		status_json_ts(buf, "oldest_pending_at", r->has_oldest, r->oldest);
		status_json_int(buf, "oldest_pending_age_seconds", r->has_oldest,
						(now - r->oldest) / USECS_PER_SEC);
		status_json_ts(buf, "last_failure_at", r->has_last_failure, r->last_failure);
		status_json_ts(buf, "last_replay_at", r->has_activity, r->activity);
		status_json_int(buf, "replay_requests_in_flight", true, r->in_flight);
		appendStringInfo(buf, "\"paused\":%s,", r->paused ? "true" : "false");
		if (r->has_totals)
		{
			status_json_key(buf, "totals");
			appendStringInfoChar(buf, '{');
			for (int t = 0; t < 6; t++)
				appendStringInfo(buf, "%s\"%s\":" INT64_FORMAT,
								 t ? "," : "", total_names[t], r->totals[t]);
			appendStringInfoString(buf, "},");
		}
	}
	else
	{
		status_json_int(buf, "watermark", r->has_watermark, r->watermark);
		status_json_int(buf, "source_max", r->has_source_max, r->source_max);
		status_json_ts(buf, "watermark_at", r->has_activity, r->activity);
	}
	status_json_key(buf, "lag");
	if (r->has_lag)
		appendStringInfo(buf, INT64_FORMAT, r->lag);
	else
		appendStringInfoString(buf, "null");
	appendStringInfoChar(buf, '}');
}

/*
 * 1.1: the running and paused redrive tasks (redrive.c) and the queues
 * whose automatic retries stopped early, as ,"redrive_tasks":[...] and
 * ,"retries_stopped":[...]; nothing on an older schema.
 */
static void
status_json_processing(StringInfo buf)
{
	DlqOwnerContext owner;

	if (!dlq_schema_current())
		return;
	dlq_become_owner(&owner);
	SPI_connect();
	if (processing_plan == NULL)
		processing_plan = dlq_prepare_kept(
										   "SELECT coalesce((SELECT pg_catalog.jsonb_agg(dlq.redrive_task_json(t) ORDER BY t.task_id)"
										   "  FROM dlq.redrive_tasks t WHERE t.state IN ('running', 'paused')), '[]'),"
										   " coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object("
										   "  'queue', q.queue, 'stopped_at', q.retry_stopped_at,"
										   "  'resume_at', q.retry_resume_at, 'reason', q.retry_stop_reason)"
										   "  ORDER BY q.queue)"
										   "  FROM dlq.queues q WHERE q.retry_stopped_at IS NOT NULL), '[]')",
										   0, NULL);
	dlq_execute_kept(processing_plan, NULL, NULL, true, 1, SPI_OK_SELECT);
	appendStringInfo(buf, ",\"redrive_tasks\":%s,\"retries_stopped\":%s",
					 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
					 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2));
	SPI_finish();
	dlq_restore_caller(&owner);
}

PG_FUNCTION_INFO_V1(dlq_etl_status_json);

/*
 * etl_status_json() returns jsonb
 *
 * {"health": worst, "now": ..., "worker": {...}, "queues": [...],
 *	"stages": [...]}
 */
Datum
dlq_etl_status_json(PG_FUNCTION_ARGS)
{
	WorkerState w;
	TimestampTz now;
	StatusRow  *rows;
	int			nrows;
	DlqHealth	worst = HEALTH_LIVE;
	StringInfoData buf;

	rows = status_collect(NULL, &nrows, &w, &now);
	for (int i = 0; i < nrows; i++)
		if (rows[i].health > worst)
			worst = rows[i].health;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	status_json_str(&buf, "health", health_names[worst]);
	appendStringInfoChar(&buf, ',');
	status_json_ts(&buf, "now", true, now);
	status_json_key(&buf, "worker");
	appendStringInfoChar(&buf, '{');
	status_json_int(&buf, "pid", w.pid != 0, w.pid);
	status_json_ts(&buf, "last_heartbeat", w.has_heartbeat, w.heartbeat);
	status_json_str(&buf, "state", w.state);
	appendStringInfoString(&buf, "},");

	for (int pass = 0; pass < 2; pass++)
	{
		bool		first = true;

		status_json_key(&buf, pass == 0 ? "queues" : "stages");
		appendStringInfoChar(&buf, '[');
		for (int i = 0; i < nrows; i++)
		{
			StatusRow  *r = &rows[i];

			if (r->is_stage != (pass == 1))
				continue;
			if (!first)
				appendStringInfoChar(&buf, ',');
			first = false;
			status_json_row(&buf, r, now);
		}
		appendStringInfoString(&buf, pass == 0 ? "]," : "]");
	}
	status_json_processing(&buf);
	appendStringInfoChar(&buf, '}');

	PG_RETURN_JSONB_P(dlq_jsonb(buf.data));
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
	status_worker_state(&w);
	values[0] = CStringGetTextDatum(w.state);
	values[1] = Int32GetDatum(w.pid);
	nulls[1] = (w.pid == 0);
	values[2] = TimestampTzGetDatum(w.heartbeat);
	nulls[2] = !w.has_heartbeat;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/* ------------------------------------------------------------------------
 * Entry points under their 1.0 names
 * ------------------------------------------------------------------------
 */

/*
 * The 1.0 name of the entry point: a database not yet updated to 1.1 (ALTER
 * EXTENSION dlq UPDATE) still calls etl_status() by this symbol, and a new
 * library must serve it.
 */
PG_FUNCTION_INFO_V1(etl_status);

Datum
etl_status(PG_FUNCTION_ARGS)
{
	return dlq_etl_status(fcinfo);
}

/*
 * The 1.0 name of the entry point: a database not yet updated to 1.1 (ALTER
 * EXTENSION dlq UPDATE) still calls etl_status_json() by this symbol, and a new
 * library must serve it.
 */
PG_FUNCTION_INFO_V1(etl_status_json);

Datum
etl_status_json(PG_FUNCTION_ARGS)
{
	return dlq_etl_status_json(fcinfo);
}
